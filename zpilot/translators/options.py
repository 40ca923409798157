"""How a node's config is translated: the choices the model does not make (``zpilot serve``'s flags)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import contract
from .limits import DataPathLimits


@dataclass(frozen=True)
class TranslateOptions:
    trust_domain: str = contract.DEFAULT_TRUST_DOMAIN
    layout: str = contract.DEFAULT_LAYOUT
    #: Address the node-wide listeners bind to (0.0.0.0 in a cluster; tests may pick another).
    bind_address: str = "0.0.0.0"
    #: Circuit breakers and idle timeouts of every data-path cluster and proxy (limits.py).
    limits: DataPathLimits = DataPathLimits()
    #: The ztunnels' Envoy admin port (``zpilot bootstrap --admin-port``): no tunnel may lead to it.
    admin_port: int = contract.PORT_ADMIN

    @property
    def pod_secrets(self) -> bool:
        """Whether each local pod's certificate is an SDS secret of its own (``<id>~<pod>~<uid>``), as
        in the article's dump (``contract.ARTICLE_LAYOUT``), or each identity's one secret, named by its
        SPIFFE ID. The certificate is the same either way (one per identity: ``certs.IdentityCache``);
        named by identity, what names it (an identity's tunnel cluster) is alike on every node, so it
        is built and held once for the cluster, not once per node hosting the identity (at R: 200
        tunnel clusters, where round twelve held 20,000), and a node's pods of one identity share one secret."""
        return self.layout == contract.ARTICLE_LAYOUT

    def __post_init__(self) -> None:
        if isinstance(self.admin_port, bool) or not isinstance(self.admin_port, int) or not 1 <= self.admin_port <= 65535:
            raise ValueError(f"admin_port must be a port from 1 to 65535, not {self.admin_port!r}")

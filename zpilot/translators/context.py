"""One node's view of the mesh: what the translators of that node's config need to know.

Computed once per (index, node) so every translator sees the same local pods, identities and
secret names, in the same (sorted) order, which keeps output deterministic for golden tests
and content hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import contract
from ..model.index import Endpoint, MeshIndex, ServiceTarget
from ..model.objects import Workload
from . import names
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

    def __post_init__(self) -> None:
        if isinstance(self.admin_port, bool) or not isinstance(self.admin_port, int) or not 1 <= self.admin_port <= 65535:
            raise ValueError(f"admin_port must be a port from 1 to 65535, not {self.admin_port!r}")


@dataclass(frozen=True)
class LocalIdentity:
    """A service account with at least one meshed pod on this node."""

    spiffe_id: str
    pods: tuple[Workload, ...]

    @property
    def secret_name(self) -> str:
        """The secret its outbound TLS presents: named after the first of its pods, as the article's is."""
        return names.workload_secret(self.spiffe_id, self.pods[0])


@dataclass(frozen=True)
class ServedVip:
    """A service VIP:port this node's ztunnel captures, and where its new connections go."""

    vip: str
    target: ServiceTarget
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class NodeView:
    index: MeshIndex
    node: str
    options: TranslateOptions
    local_pods: tuple[Workload, ...] = field(default=())
    identities: tuple[LocalIdentity, ...] = field(default=())

    @classmethod
    def of(cls, index: MeshIndex, node: str, options: TranslateOptions) -> "NodeView":
        pods = tuple(w for w in index.meshed_workloads_on(node) if w.ip)
        by_identity: dict[str, list[Workload]] = {}
        for pod in pods:
            by_identity.setdefault(names.workload_identity(options.trust_domain, pod), []).append(pod)
        identities = tuple(
            LocalIdentity(sid, tuple(sorted(ws, key=lambda w: (w.name, w.uid)))) for sid, ws in sorted(by_identity.items())
        )
        return cls(index, node, options, pods, identities)

    @property
    def trust_domain(self) -> str:
        return self.options.trust_domain

    @property
    def cluster_domain(self) -> str:
        return self.index.cluster_domain

    def identity_of(self, workload: Workload) -> str:
        return names.workload_identity(self.trust_domain, workload)

    def is_local(self, workload: Workload) -> bool:
        return workload.node_name == self.node

    def served_vips(self) -> list[ServedVip]:
        """The VIP:ports to capture here: those with an endpoint for this node (in VIP order).

        A VIP:port without one gets no chain: it falls through to ``PassthroughFilterChain``, so
        kube-proxy answers it as it would without a mesh (REJECT: no endpoints; DROP: none on this
        node under ``internalTrafficPolicy: Local``), instead of a chain with nowhere to go.
        """
        served = []
        for vip, target in self.index.vips():
            endpoints = self.index.endpoints(target.service, target.port, self.node)
            if endpoints:
                served.append(ServedVip(vip, target, tuple(endpoints)))
        return served

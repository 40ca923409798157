"""The ServiceAccount ztunnels run as, whose tokens ``--xds-auth token`` accepts.

Apart from :mod:`zpilot.xds.token_review` (which imports the Kubernetes client): ``zpilot serve`` parses
``--ztunnel-service-account`` in every mode, and only token reviews need the client.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import contract


@dataclass(frozen=True)
class ServiceAccountRef:
    """The ServiceAccount the ztunnel pods run as."""

    namespace: str = contract.ZTUNNEL_NAMESPACE
    name: str = contract.ZTUNNEL_SERVICE_ACCOUNT

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> "ServiceAccountRef":
        """``namespace/name``; ValueError otherwise."""
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"{text!r} is not NAMESPACE/NAME")
        return cls(namespace, name)

"""What the translators hand on: one node's Envoy resources, by xDS type.

This is the seam between translation (pure, here) and distribution (``zpilot.xds``): the
snapshot cache stores these, the ADS server serves them, ``render`` prints them. Secrets are
named here but not made here: key material is the CA's business (``zpilot.certs``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from google.protobuf.message import Message

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

#: The order a push (and a reconnect) must follow: make before break (xds-protocol-notes.md).
PUSH_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE, LISTENER_TYPE)


def content_version(resource: Message) -> str:
    """A resource's version: a hash of its deterministic serialization, so an unchanged resource
    keeps its version across rebuilds and restarts (and delta xDS need not resend it)."""
    return hashlib.sha256(resource.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass(frozen=True)
class SecretRef:
    """A secret some resource references by name, and whose identity it must carry."""

    name: str
    spiffe_id: str | None  # None for the trust bundle (contract.ROOT_CA_SECRET)


@dataclass
class NodeResources:
    """Everything one node's ztunnel is sent, keyed by resource name within each type."""

    node: str
    listeners: dict[str, Listener] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    endpoints: dict[str, ClusterLoadAssignment] = field(default_factory=dict)
    secrets: dict[str, SecretRef] = field(default_factory=dict)

    def add_secret(self, name: str, spiffe_id: str | None) -> None:
        self.secrets[name] = SecretRef(name, spiffe_id)

    def by_type(self) -> dict[str, dict]:
        """Listener, cluster and endpoint resources by type URL (secrets come from the CA)."""
        return {LISTENER_TYPE: self.listeners, CLUSTER_TYPE: self.clusters, ENDPOINT_TYPE: self.endpoints}

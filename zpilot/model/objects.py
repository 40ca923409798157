"""The mesh model: the few facts of Kubernetes objects that ztunnel config depends on.

Plain, immutable dataclasses with no protobuf and no Kubernetes client types in them, so that
every source (a manifest directory, the API watch, a test) produces the same thing and the
translators stay pure functions of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

#: Label on a Namespace that enrolls its pods in the ambient mesh.
DATAPLANE_MODE_LABEL = "istio.io/dataplane-mode"
DATAPLANE_MODE_AMBIENT = "ambient"
DATAPLANE_MODE_NONE = "none"
#: The article-era (2022) pod label; ``none`` opts a pod out, like ``istio.io/dataplane-mode=none``.
LEGACY_AMBIENT_TYPE_LABEL = "ambient-type"
#: Node labels Kubernetes sets from the cloud's topology; they become endpoint localities.
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
#: The label tying an EndpointSlice to its Service (same namespace), as kube-proxy reads it.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})


def frozen_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    """A read-only copy, so a model object can never be changed behind the index's back."""
    return MappingProxyType(dict(labels)) if labels else EMPTY_LABELS


@dataclass(frozen=True)
class ObjectRef:
    """Names one Kubernetes object in messages: ``Pod default/sleep-1``."""

    kind: str
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


@dataclass(frozen=True, order=True)
class Locality:
    """Where a node is (its topology labels); Envoy groups endpoints by it. Empty when unknown."""

    region: str = ""
    zone: str = ""


NO_LOCALITY = Locality()


@dataclass(frozen=True)
class Node:
    name: str
    #: Every InternalIP the node reports, in its order: a dual-stack node has one per family.
    internal_ips: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()
    locality: Locality = NO_LOCALITY

    def __post_init__(self) -> None:
        if not isinstance(self.internal_ips, tuple):  # Node("n", "10.0.0.1") would be a tuple of characters
            raise TypeError(f"Node.internal_ips must be a tuple of addresses, not {type(self.internal_ips).__name__}")

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Node", self.name)

    @property
    def internal_ip(self) -> str | None:
        """The node's address: its first InternalIP (in the index's view, its first IPv4 one)."""
        return self.internal_ips[0] if self.internal_ips else None


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Namespace", self.name)

    @property
    def enrolled(self) -> bool:
        return self.labels.get(DATAPLANE_MODE_LABEL) == DATAPLANE_MODE_AMBIENT


@dataclass(frozen=True)
class ServiceAccount:
    name: str
    namespace: str

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("ServiceAccount", self.name, self.namespace)


@dataclass(frozen=True)
class ContainerPort:
    port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class Workload:
    """A Pod, reduced to what the data plane needs."""

    name: str
    namespace: str
    uid: str
    ips: tuple[str, ...]
    node_name: str | None
    service_account: str
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS, hash=False)
    ports: tuple[ContainerPort, ...] = ()
    host_network: bool = False
    phase: str = "Running"
    ready: bool = True
    terminating: bool = False
    created: str = ""  # RFC 3339 creationTimestamp; sorts in time order as a string

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Pod", self.name, self.namespace)

    @property
    def ip(self) -> str | None:
        """The primary IP: the one the 2022 ztunnel design keys everything on."""
        return self.ips[0] if self.ips else None

    @property
    def opted_out(self) -> bool:
        return (
            self.labels.get(DATAPLANE_MODE_LABEL) == DATAPLANE_MODE_NONE
            or self.labels.get(LEGACY_AMBIENT_TYPE_LABEL) == DATAPLANE_MODE_NONE
        )

    def named_port(self, name: str, protocol: str = "TCP") -> int | None:
        for port in self.ports:
            if port.name == name and port.protocol == protocol:
                return port.port
        return None


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    name: str = ""
    protocol: str = "TCP"

    @property
    def label(self) -> str:
        """The port's name in generated resource names; an unnamed port is named by its number."""
        return self.name or str(self.port)


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    cluster_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] | None = field(default=None, hash=False)
    headless: bool = False
    #: ``publishNotReadyAddresses``: every selected pod is a ready endpoint, whatever its readiness.
    publish_not_ready: bool = False
    #: ``internalTrafficPolicy: Local``: each node reaches only the endpoints on that node.
    node_local: bool = False

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Service", self.name, self.namespace)

    def hostname(self, cluster_domain: str = "cluster.local") -> str:
        return f"{self.name}.{self.namespace}.svc.{cluster_domain}"

    def selects(self, workload: Workload) -> bool:
        """A Service with no selector selects no pod: its endpoints come from EndpointSlices."""
        if not self.selector or workload.namespace != self.namespace:
            return False
        return all(workload.labels.get(k) == v for k, v in self.selector.items())


@dataclass(frozen=True)
class SlicePort:
    """A port of an EndpointSlice; it serves the Service port of the same name and protocol."""

    port: int | None  # the API allows none ("not restricted"), which no proxy can dial
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice, with its conditions as the API defines their defaults."""

    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str = ""

    @property
    def address(self) -> str:
        """The address proxies use: the API makes the others fungible, kube-proxy takes the first."""
        return self.addresses[0]


@dataclass(frozen=True)
class EndpointSlice:
    """``discovery.k8s.io/v1`` EndpointSlice: the endpoints of a Service without a selector (the
    ``kubernetes`` Service's API server, hand-made slices of an external database...)."""

    name: str
    namespace: str
    service_name: str  # the kubernetes.io/service-name label; "" when absent
    address_type: str  # IPv4, IPv6 or FQDN
    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[SlicePort, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("EndpointSlice", self.name, self.namespace)


@dataclass(frozen=True)
class Cluster:
    """Every object zpilot knows about, as one immutable value; sources replace it whole."""

    nodes: tuple[Node, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    service_accounts: tuple[ServiceAccount, ...] = ()
    workloads: tuple[Workload, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    # zpilot.model.policy's types (named, not imported: that module builds on this one)
    authorization_policies: tuple["AuthorizationPolicy", ...] = ()  # noqa: F821
    peer_authentications: tuple["PeerAuthentication", ...] = ()  # noqa: F821

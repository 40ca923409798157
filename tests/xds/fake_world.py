"""Hand-made NodeResources for protocol tests: exact control over what each node is served."""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from zpilot.model.index import MeshIndex
from zpilot.model.objects import Cluster as ModelCluster
from zpilot.model.objects import Node
from zpilot.translators.resources import NodeResources


def eds_cluster(name: str, connect_timeout: int = 1) -> Cluster:
    c = Cluster(name=name, type=Cluster.EDS)
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.connect_timeout.seconds = connect_timeout
    return c


def assignment(name: str, *ips: str) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    loc = cla.endpoints.add()
    for ip in ips:
        ep = loc.lb_endpoints.add()
        ep.endpoint.address.socket_address.address = ip
        ep.endpoint.address.socket_address.port_value = 80
    return cla


def listener(name: str, port: int) -> Listener:
    lis = Listener(name=name)
    lis.address.socket_address.address = "127.0.0.1"
    lis.address.socket_address.port_value = port
    return lis


@dataclass
class NodeSpec:
    clusters: dict[str, list[str]] = field(default_factory=dict)  # cluster -> endpoint IPs
    listeners: dict[str, int] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    #: A cluster's connect timeout in seconds (1 unless named): a change of the cluster, not of its endpoints.
    timeouts: dict[str, int] = field(default_factory=dict)


class FakeWorld:
    """Nodes and what each gets; tests edit ``nodes`` and call ``plane.update()``."""

    def __init__(self, **nodes: NodeSpec) -> None:
        self.nodes: dict[str, NodeSpec] = dict(nodes)
        self.translations: list[str] = []

    def index(self) -> MeshIndex:
        """A model holding the specs (in a field translation reads nowhere else), so that, as with the
        real translators, what a node is served is a function of the model."""
        return MeshIndex.build(
            ModelCluster(nodes=tuple(Node(n, (), (repr(self.nodes[n]),)) for n in sorted(self.nodes)))
        )

    def translate(self, index: MeshIndex, node: str) -> NodeResources:
        self.translations.append(node)
        spec = self.nodes[node]
        out = NodeResources(node=node)
        for name, ips in spec.clusters.items():
            out.clusters[name] = eds_cluster(name, spec.timeouts.get(name, 1))
            out.endpoints[name] = assignment(name, *ips)
        for name, port in spec.listeners.items():
            out.listeners[name] = listener(name, port)
        for name in spec.secrets:
            out.add_secret(name, None)
        return out

    @staticmethod
    def secrets(resources: NodeResources) -> dict[str, Secret]:
        out = {}
        for name in resources.secrets:
            secret = Secret(name=name)
            secret.validation_context.trusted_ca.inline_string = f"not a real CA for {name}"
            out[name] = secret
        return out

"""Structural invariants of translated config, for clusters of many shapes: every name one
resource uses to reach another (matcher action -> chain, chain -> cluster, EDS cluster -> load
assignment, endpoint -> internal listener, TLS context -> secret) resolves, and a node's config
holds only its own pods as sources, inbound chains and identities."""

from __future__ import annotations

from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from xds.core.v3 import extension_pb2

from zpilot.kube.convert import CONVERTERS
from zpilot.kube.store import ObjectStore
from zpilot.model import MeshIndex, Problems
from zpilot.synthetic import Shape, node_name, synthetic_manifests
from zpilot.translators import translate_node
from zpilot.translators.static import rewrite

shapes = st.builds(
    Shape,
    nodes=st.integers(1, 4),
    pods=st.integers(0, 40),
    services=st.integers(0, 8),
    namespaces=st.integers(1, 3),
    ports_per_service=st.integers(1, 3),
    service_accounts_per_namespace=st.integers(1, 3),
)


def _index(shape: Shape) -> MeshIndex:
    store = ObjectStore()
    for doc in synthetic_manifests(shape):
        store.put(CONVERTERS[doc["kind"]](doc))
    return MeshIndex.build(store.snapshot(), Problems())


def _collect(message: Message, kind: type) -> list:
    found: list = []
    rewrite(message, lambda m: found.append(m) if isinstance(m, kind) else None)
    return found


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, which=st.integers(0, 3))
def test_every_reference_resolves(shape: Shape, which: int) -> None:
    index = _index(shape)
    node = node_name(which % shape.nodes)
    res = translate_node(index, node)

    outbound = res.listeners["ztunnel_outbound"]
    chain_names = [c.name for c in outbound.filter_chains]
    assert len(chain_names) == len(set(chain_names))
    for action in _collect(outbound.filter_chain_matcher, extension_pb2.TypedExtensionConfig):
        if action.typed_config.type_url.endswith("StringValue"):
            assert action.name in chain_names, action.name

    internal = {name for name, lis in res.listeners.items() if lis.HasField("internal_listener")}
    for listener in res.listeners.values():
        for proxy in _collect(listener, tcp_proxy_pb2.TcpProxy):
            assert proxy.cluster in res.clusters, proxy.cluster
        for sds in _collect(listener, secret_pb2.SdsSecretConfig):
            assert sds.name in res.secrets, sds.name
    for cluster in res.clusters.values():
        for sds in _collect(cluster, secret_pb2.SdsSecretConfig):
            assert sds.name in res.secrets, sds.name
        if cluster.type == cluster_pb2.Cluster.EDS:
            assert res.endpoints[cluster.name].cluster_name == cluster.name
    for cla in res.endpoints.values():
        for address in _collect(cla, address_pb2.EnvoyInternalAddress):
            assert address.server_listener_name in internal

    local = {w.ip for w in index.meshed_workloads_on(node)}
    inbound = res.listeners["ztunnel_inbound"]
    assert {c.filter_chain_match.prefix_ranges[0].address_prefix for c in inbound.filter_chains} == local
    if local:
        sources = outbound.filter_chain_matcher.on_no_match.matcher.matcher_tree.exact_match_map.map
        assert set(sources) == local
    local_identities = {f"spiffe://cluster.local/ns/{w.namespace}/sa/{w.service_account}" for w in index.meshed_workloads_on(node)}
    assert {r.spiffe_id for r in res.secrets.values() if r.spiffe_id} == local_identities
    assert internal == {f"outbound_tunnel_lis_{sid}" for sid in local_identities}

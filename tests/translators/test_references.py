"""Structural invariants of translated config, for clusters of many shapes: every name one
resource uses to reach another (matcher action -> chain, chain -> cluster, EDS cluster -> load
assignment, endpoint -> internal listener, TLS context -> secret) resolves, and a node's config
holds only its own pods as sources, inbound chains and identities, in both outbound layouts.
The linear layout's service clusters and endpoints are the same bytes on every node."""

from __future__ import annotations

import ipaddress

from google.protobuf.message import Message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from xds.core.v3 import extension_pb2

from zpilot import contract
from zpilot.model import MeshIndex
from zpilot.synthetic import Shape, node_name
from xds.type.matcher.v3 import ip_pb2

from zpilot.explain.envoy_config import Connection, select_chain
from zpilot.translators import TranslateOptions, names, pod_select, translate_node
from zpilot.translators.static import rewrite

from .render_util import synthetic_index

shapes = st.builds(
    Shape,
    nodes=st.integers(1, 4),
    pods=st.integers(0, 40),
    services=st.integers(0, 8),
    namespaces=st.integers(1, 3),
    ports_per_service=st.integers(1, 3),
    service_accounts_per_namespace=st.integers(1, 3),
)


def _collect(message: Message, kind: type) -> list:
    found: list = []
    rewrite(message, lambda m: found.append(m) if isinstance(m, kind) else None)
    return found


@pytest.mark.parametrize("layout", ["article", "linear"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, which=st.integers(0, 3))
def test_every_reference_resolves(layout: str, shape: Shape, which: int) -> None:
    index = synthetic_index(shape)
    node = node_name(which % shape.nodes)
    res = translate_node(index, node, TranslateOptions(layout=layout))

    outbound = res.listeners["ztunnel_outbound"]
    chain_names = [c.name for c in outbound.filter_chains]
    assert len(chain_names) == len(set(chain_names))
    for action in _collect(outbound.filter_chain_matcher, extension_pb2.TypedExtensionConfig):
        if action.typed_config.type_url.endswith("StringValue"):
            assert action.name in chain_names, action.name

    internal = {name for name, lis in res.listeners.items() if lis.HasField("internal_listener")}
    for listener in res.listeners.values():
        listener_chains = {c.name for c in listener.filter_chains}
        for action in _collect(listener.filter_chain_matcher, extension_pb2.TypedExtensionConfig):
            if action.typed_config.type_url.endswith("StringValue"):
                assert action.name in listener_chains, (listener.name, action.name)
        for proxy in _collect(listener, tcp_proxy_pb2.TcpProxy):
            assert proxy.cluster in res.clusters, proxy.cluster
            for tlv in proxy.proxy_protocol_tlvs:  # the cluster the pod-select listener goes to
                if tlv.type == pod_select.TLV_CLUSTER:
                    assert tlv.format_string.text_format_source.inline_string in res.clusters, tlv
        for sds in _collect(listener, secret_pb2.SdsSecretConfig):
            assert sds.name in res.secrets, sds.name
    for cluster in res.clusters.values():
        for sds in _collect(cluster, secret_pb2.SdsSecretConfig):
            assert sds.name in res.secrets, sds.name
        if cluster.type == cluster_pb2.Cluster.EDS:
            assert res.endpoints[cluster.name].cluster_name == cluster.name
    for message in (*res.endpoints.values(), *res.clusters.values()):
        for address in _collect(message, address_pb2.EnvoyInternalAddress):
            assert address.server_listener_name in internal, address

    local = local_pods(index, node)
    inbound = res.listeners["ztunnel_inbound"]
    assert {c.filter_chain_match.prefix_ranges[0].address_prefix for c in inbound.filter_chains} == local
    local_identities = {f"spiffe://cluster.local/ns/{w.namespace}/sa/{w.service_account}" for w in index.meshed_workloads_on(node)}
    assert {r.spiffe_id for r in res.secrets.values() if r.spiffe_id} == local_identities
    after_port = outbound.filter_chain_matcher.on_no_match
    if layout == "article":
        if local:
            assert set(after_port.matcher.matcher_tree.exact_match_map.map) == local
        assert internal == {f"outbound_tunnel_lis_{sid}" for sid in local_identities}
        return
    # linear: the source gate holds the local pods (when there is anywhere to go), the internal
    # listener picks each local pod's identity, on both sides (other node, this node)
    destinations = index.meshed_workloads() or list(index.vips())
    if local and destinations:
        assert _range_ips(after_port.matcher) == local
        _assert_pod_ips_select_their_identity(outbound, index, sorted(local)[0])
    else:
        assert after_port.action.name == names.PASSTHROUGH_CHAIN
    pod_select_listeners = {names.POD_SELECT_LISTENER, names.MESH_PASSTHROUGH_LISTENER} if any(n.pod_cidrs for n in index.nodes.values()) else set()
    assert internal == ({contract.LINEAR_TUNNEL_LISTENER} | pod_select_listeners if local_identities else set())
    if local_identities:
        tunnel = res.listeners[contract.LINEAR_TUNNEL_LISTENER].filter_chain_matcher
        assert _range_ips(tunnel) == local
        for side in (tunnel.matcher_tree.custom_match, tunnel.on_no_match):
            sources = _collect(side, type(tunnel.matcher_tree))
            assert {ip for tree in sources for ip in tree.exact_match_map.map} == local


def local_pods(index: MeshIndex, node: str) -> set[str]:
    return {w.ip for w in index.meshed_workloads_on(node)}


def _range_ips(matcher) -> set[str]:
    """The addresses of a matcher's own IP range matcher (not of those nested in its outcomes)."""
    ranges = ip_pb2.IPMatcher.FromString(matcher.matcher_tree.custom_match.typed_config.value)
    return {r.address_prefix for m in ranges.range_matchers for r in m.ranges}


def _assert_pod_ips_select_their_identity(outbound, index: MeshIndex, source: str) -> None:
    """From a local pod, each meshed pod IP inside its node's pod CIDR leads to that node's chain
    (which picks the pod, and so the identity to pin, from the node's endpoints); any other meshed
    pod IP to the chain pinning its pod's identity (the strays' IPs are grouped by identity in the
    destination map); an address of no pod passes through."""
    vips = {vip for vip, *_ in index.vips()}
    for pod in index.meshed_workloads():
        if pod.ip in vips:
            continue
        node = index.nodes.get(pod.node_name)
        in_cidr = node is not None and any(
            ipaddress.ip_address(pod.ip) in ipaddress.ip_network(c, strict=False) for c in node.pod_cidrs
        )
        expected = names.pods_on_node(pod.node_name) if in_cidr else names.pod_direct_chain(
            contract.spiffe_id("cluster.local", pod.namespace, pod.service_account)
        )
        chain, _steps = select_chain(outbound, Connection(source, pod.ip, 8080))
        assert chain is not None and chain.name == expected, (pod.ip, chain and chain.name)
    chain, _steps = select_chain(outbound, Connection(source, "192.0.2.1", 8080))
    assert chain is not None and chain.name == names.PASSTHROUGH_CHAIN


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes)
def test_linear_service_resources_are_the_same_bytes_on_every_node(shape: Shape) -> None:
    """What makes sharing across nodes possible: a service port's cluster and load assignment name
    no node and no identity, so every node gets the same serialization."""
    index = synthetic_index(shape)
    seen: dict[str, bytes] = {}
    for n in range(shape.nodes):
        res = translate_node(index, node_name(n), TranslateOptions(layout="linear"))
        service_ports = [name for name, c in res.clusters.items() if c.type == cluster_pb2.Cluster.EDS]
        assert sorted(service_ports) == sorted(res.endpoints)
        for name in service_ports:
            for key, message in ((f"cluster {name}", res.clusters[name]), (f"endpoints {name}", res.endpoints[name])):
                data = message.SerializeToString(deterministic=True)
                assert seen.setdefault(key, data) == data, f"{key} differs on {node_name(n)}"

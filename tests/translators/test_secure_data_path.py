"""Issue 10's data-path points at the translator level: what the inbound guard lets through (its
RBAC rules and the plaintext matcher, evaluated here for every port), and that every tunnel of
every rendered node pins the identity the model gives its destination."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2

from zpilot import contract
from zpilot.commands import data_path_flags
from zpilot.explain import envoy_config as ec
from zpilot.synthetic import Shape, node_name, synthetic_manifests
from zpilot.translators import TranslateOptions, inbound_guard, names, pod_select
from zpilot.translators.identity_pinning import SET_FILTER_STATE, pin

from .render_util import ARTICLE, NODE_A, NODE_B, index_of, render

EDGE_CASES = Path(__file__).parent / "testdata" / "in" / "edge-cases"
PORTS = range(0, 70_000)  # past 65535 on purpose


@pytest.mark.parametrize("low,high", [(0, 9), (1, 65535), (15000, 15090), (1, 14999), (15091, 65535), (19000, 19000),
                                      (7, 123), (99, 1000), (100, 199), (150, 2150), (9, 10)])
def test_number_regex_matches_exactly_the_range(low: int, high: int) -> None:
    pattern = re.compile(inbound_guard.number_regex(low, high))
    wrong = [n for n in PORTS if (pattern.fullmatch(str(n)) is not None) != (low <= n <= high)]
    assert wrong == [], (inbound_guard.number_regex(low, high), wrong[:5])
    assert pattern.fullmatch("0080") is None  # no leading zeros: Envoy would read 80


# -- the CONNECT guard, evaluated as Envoy's RBAC would --------------------------------------------


def _allows(permission: rbac_config.Permission, headers: dict[str, str]) -> bool:
    kind = permission.WhichOneof("rule")
    if kind == "any":
        return permission.any
    if kind == "and_rules":
        return all(_allows(p, headers) for p in permission.and_rules.rules)
    if kind == "or_rules":
        return any(_allows(p, headers) for p in permission.or_rules.rules)
    if kind == "not_rule":
        return not _allows(permission.not_rule, headers)
    if kind == "header":  # a header regex must match the whole value (RE2::FullMatch)
        value = headers.get(permission.header.name)
        return value is not None and re.fullmatch(permission.header.string_match.safe_regex.regex, value) is not None
    raise AssertionError(f"the guard uses a rule this evaluator does not know: {kind}")


def guard_allows(guard: hcm.HttpFilter, authority: str, original_dst: str | None = None) -> bool:
    config = rbac_http.RBAC()
    guard.typed_config.Unpack(config)
    assert config.rules.action == rbac_config.RBAC.ALLOW
    headers = {":authority": authority, inbound_guard.ORIGINAL_DST_HEADER: original_dst or authority}
    return any(
        any(_allows(p, headers) for p in policy.permissions) and any(q.any for q in policy.principals)
        for policy in config.rules.policies.values()
    )


@pytest.mark.parametrize("admin_port", [contract.PORT_ADMIN, 19000])
def test_the_connect_guard_allows_the_pod_on_its_ports_and_nothing_else(admin_port: int) -> None:
    guard = inbound_guard.connect_guard("10.4.3.20", admin_port)
    allowed = [p for p in PORTS if guard_allows(guard, f"10.4.3.20:{p}")]
    expected = [p for p in range(1, 65536) if p not in contract.ZTUNNEL_PORT_RANGE and p != admin_port]
    assert allowed == expected
    for target in ("127.0.0.1:15000", "127.0.0.1:9080", "10.4.3.2:9080", "10.4.3.200:9080", "10.4.3.20",
                   "10.4.3.20:", "10.4.3.20:9080,127.0.0.1:15000", "x10.4.3.20:9080", "10.4.3.20:9080 ", "10.4.3.20:+80"):
        assert not guard_allows(guard, target), target
    # both headers must name the pod: what is dialed, and what the request says it is for
    assert not guard_allows(guard, "10.4.3.20:9080", "127.0.0.1:15000")
    assert not guard_allows(guard, "127.0.0.1:15000", "10.4.3.20:9080")
    assert guard_allows(guard, "10.4.3.20:9080", "10.4.3.20:8080")


def test_every_inbound_chain_guards_its_own_pod_first() -> None:
    resources, _, _ = render(ARTICLE, NODE_A, TranslateOptions(admin_port=19000))
    chains = resources.listeners[contract.INBOUND_LISTENER].filter_chains
    assert len(chains) == 3  # sleep, details and reviews-v1
    for chain in chains:
        ip = chain.name.removeprefix("inbound_")
        [manager] = [f for f in chain.filters if f.typed_config.type_url.endswith("HttpConnectionManager")]
        config = hcm.HttpConnectionManager()
        manager.typed_config.Unpack(config)
        guard, *_, router = config.http_filters
        assert guard.name == inbound_guard.CONNECT_GUARD_FILTER and router.name == "envoy.filters.http.router"
        assert guard_allows(guard, f"{ip}:9080") and not guard_allows(guard, f"{ip}:19000")
        others = [c.name.removeprefix("inbound_") for c in chains if c is not chain]
        assert not any(guard_allows(guard, f"{other}:9080") for other in others), "a chain lets a CONNECT to another pod"


# -- the plaintext listener, through explain's reading of its matcher ------------------------------


@pytest.mark.parametrize("admin_port", [contract.PORT_ADMIN, 19000])
def test_the_plaintext_listener_refuses_the_ztunnels_ports(admin_port: int) -> None:
    resources, _, _ = render(ARTICLE, NODE_B, TranslateOptions(admin_port=admin_port))
    listener = resources.listeners[contract.INBOUND_PLAINTEXT_LISTENER]
    refused = set(contract.ZTUNNEL_PORT_RANGE) | {admin_port}
    for port in range(1, 65536):
        chain, _ = ec.select_chain(listener, ec.Connection("10.4.3.19", "10.4.3.20", port))
        expected = inbound_guard.REFUSED_PLAINTEXT_CHAIN if port in refused else "inbound_10.4.3.20"
        assert chain is not None and chain.name == expected, port
    chain, _ = ec.select_chain(listener, ec.Connection("10.4.3.19", "10.4.3.19", 80))  # httpbin: not meshed
    assert chain.name == "blackhole ztunnel_inbound_plaintext"
    [refusing] = [c for c in listener.filter_chains if c.name == inbound_guard.REFUSED_PLAINTEXT_CHAIN]
    assert ec.tcp_proxy(refusing).cluster == names.BLACKHOLE_CLUSTER and not resources.endpoints.get(names.BLACKHOLE_CLUSTER)


def test_admin_port_option_and_flag() -> None:
    for bad in (0, 65536, True, "15000"):
        with pytest.raises(ValueError, match="admin_port"):
            TranslateOptions(admin_port=bad)
    parser = argparse.ArgumentParser()
    data_path_flags.add_guard_arguments(parser)
    assert f"(default {TranslateOptions().admin_port})" in " ".join(parser.format_help().split())
    assert data_path_flags.guard_options(parser.parse_args([])) == {}
    assert data_path_flags.guard_options(parser.parse_args(["--ztunnel-admin-port", "19000"])) == {"admin_port": 19000}
    with pytest.raises(SystemExit):
        parser.parse_args(["--ztunnel-admin-port", "70000"])


# -- every tunnel pins the identity the model gives its destination --------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("generated")
    (directory / "cluster.yaml").write_text(yaml.safe_dump_all(synthetic_manifests(Shape(nodes=3, pods=30, services=15))))
    return directory


def _passes_identity(cluster) -> bool:
    """Whether the cluster's internal_upstream socket hands the endpoint's ``tunnel`` metadata on."""
    sockets = [cluster.transport_socket, *(m.transport_socket for m in cluster.transport_socket_matches)]
    for socket in sockets:
        if socket.typed_config.type_url.endswith(internal_upstream_pb2.InternalUpstreamTransport.DESCRIPTOR.full_name):
            transport = internal_upstream_pb2.InternalUpstreamTransport()
            socket.typed_config.Unpack(transport)
            return contract.TUNNEL_METADATA in {m.name for m in transport.passthrough_metadata}
    return False


def _tunnels_pinned(manifests: Path, node: str, layout: str) -> int:
    """Checks one node; returns how many tunnel-opening chains it has."""
    index, _ = index_of(manifests)
    resources, _, _ = render(manifests, node, TranslateOptions(layout=layout))
    identity_at = {w.ip: names.workload_identity("cluster.local", w) for w in index.meshed_workloads() if w.ip}
    tunnels = 0
    for listener in resources.listeners.values():
        for chain in listener.filter_chains:
            proxy = ec.tcp_proxy(chain)
            if proxy is None or not proxy.tunneling_config.hostname:
                continue
            tunnels += 1
            pinned = ec.pinned_identity(chain)
            assert pinned is not None, f"{listener.name} {chain.name} opens a tunnel without pinning its peer"
            first = chain.filters[0]
            assert first.name == SET_FILTER_STATE and chain.filters[-1].typed_config.type_url.endswith(
                tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name), chain.name
            if listener.HasField("internal_listener"):
                assert pinned == contract.TUNNEL_IDENTITY_FORMAT, pinned
    # every way into an internal listener that opens tunnels names the identity its tunnel is to
    # pin, and passes it on (the linear layout's pod-select and passthrough listeners open none)
    tunnelling = {name for name, listener in resources.listeners.items()
                  if any((p := ec.tcp_proxy(c)) is not None and p.tunneling_config.hostname for c in listener.filter_chains)}
    for cluster_name, cluster in resources.clusters.items():
        for ep in ec.endpoints(resources, cluster_name):
            if not ep.internal_listener:
                continue
            if ep.internal_listener not in tunnelling:
                assert ep.internal_listener in (names.POD_SELECT_LISTENER, names.MESH_PASSTHROUGH_LISTENER), ep
                continue
            assert _passes_identity(cluster), f"{cluster_name} does not pass the identity to {ep.internal_listener}"
            named = ep.metadata.get(contract.TUNNEL_METADATA, {}).get(contract.TUNNEL_IDENTITY)
            assert named, f"{cluster_name}: endpoint {ep.address} names no identity"
            if cluster_name in resources.endpoints:  # a service endpoint, or a node's pod: its own pod's
                endpoint_id = ep.address.rpartition("/")[2]
                ip = endpoint_id.rpartition(":")[0] if ":" in endpoint_id else endpoint_id
                assert named == identity_at[ip], (cluster_name, ep)
    # pod-IP destinations: the way each pod IP takes pins that pod's identity
    outbound = resources.listeners.get(contract.OUTBOUND_LISTENER)
    for source in index.meshed_workloads_on(node):
        for ip, identity in identity_at.items():
            chain, _ = ec.select_chain(outbound, ec.Connection(source.ip, ip, 9080))
            proxy = ec.tcp_proxy(chain)
            if proxy.tunneling_config.hostname:  # the article's: the chain tunnels itself
                assert ec.pinned_identity(chain) == identity, (source.name, ip, chain.name)
            elif proxy.cluster == names.POD_SELECT_CLUSTER:  # the linear layout's, by the node's pod CIDR:
                # the pod-select listener picks the pod's endpoint, which names it, from the node's cluster
                tlvs = {t.type: t.format_string.text_format_source.inline_string for t in proxy.proxy_protocol_tlvs}
                wanted = f"envoy://{contract.LINEAR_TUNNEL_LISTENER}/{ip}"
                [ep] = [e for e in ec.endpoints(resources, tlvs[pod_select.TLV_CLUSTER]) if e.address == wanted]
                assert ep.metadata[contract.TUNNEL_METADATA][contract.TUNNEL_IDENTITY] == identity, (ip, chain.name)
            else:  # the linear layout's strays: through the internal listener, by an endpoint naming it
                [ep] = ec.endpoints(resources, proxy.cluster)
                assert ep.metadata[contract.TUNNEL_METADATA][contract.TUNNEL_IDENTITY] == identity, (ip, proxy.cluster)
    return tunnels


LAYOUTS = ["article", "linear"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("node", [NODE_A, NODE_B])
def test_article_tunnels_pin_their_peers(node: str, layout: str) -> None:
    assert _tunnels_pinned(ARTICLE, node, layout) > 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("node", ["node-1", "node-2"])
def test_edge_case_tunnels_pin_their_peers(node: str, layout: str) -> None:
    _tunnels_pinned(EDGE_CASES, node, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_generated_cluster_tunnels_pin_their_peers(generated: Path, layout: str) -> None:
    assert all(_tunnels_pinned(generated, node_name(n), layout) > 0 for n in range(3))


def test_an_identity_that_cannot_be_pinned_is_refused() -> None:
    for bad in ("", "spiffe://cluster.local/ns/a/sa/b,spiffe://cluster.local/ns/a/sa/c"):
        with pytest.raises(ValueError, match="cannot pin"):
            pin(bad)

"""The node's redirection and the ztunnel's listeners, generated apart, must meet.

The CNI plan (``zpilot.cni``) and the Envoy config (``zpilot.translators``) are built for the
article's node A from the same model, and compared by what each actually holds: the ports and
marks in the plan's rule text and routing, the ports and socket marks on the listeners. A value
changed on one side only (or copied, and then changed) fails here, not in a live cluster.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from zpilot import contract
from zpilot.cni.desired import NetnsPlan, NodePlan, TunnelKind
from zpilot.cni.plan import NodeFacts, build_plan
from zpilot.explain.envoy_config import upstream_address
from zpilot.explain.netfilter import route
from zpilot.kube.manifests import load_manifests
from zpilot.model.index import MeshIndex
from zpilot.translators import NodeResources, TranslateOptions, names, translate_node
from zpilot.translators.envoy_common import SO_MARK, SOL_SOCKET

from ..layouts import LAYOUTS

ARTICLE = Path(__file__).resolve().parents[2] / "examples" / "article"
NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"
SLEEP_IP = "10.4.4.19"  # a meshed pod of node A
PRODUCTPAGE_IP = "10.4.3.20"  # a meshed pod of node B


@pytest.fixture(scope="module", params=LAYOUTS)
def node_a(request) -> tuple[NodePlan, NodeResources]:
    """Node A's plan, and its config in each outbound layout."""
    index = MeshIndex.build(load_manifests(ARTICLE).cluster)
    facts = NodeFacts(ztunnel_veth="veth300a1d80", host_ip="10.4.4.1", tunnel_kind=TunnelKind.VXLAN)
    return build_plan(index, NODE_A, facts), translate_node(index, NODE_A, TranslateOptions(layout=request.param))


def _option(words: list[str], flag: str) -> str | None:
    return words[words.index(flag) + 1] if flag in words else None


def _rules(side: NetnsPlan, table: str, target: str) -> list[list[str]]:
    return [shlex.split(rule) for chain in side.chains if chain.table == table for rule in chain.rules
            if f"-j {target}" in rule]


def _listeners_by_port(resources: NodeResources) -> dict[int, object]:
    return {l.address.socket_address.port_value: l for l in resources.listeners.values()
            if l.address.HasField("socket_address")}


def _socket_mark(listener) -> int:
    (mark,) = [o.int_value for o in listener.socket_options if (o.level, o.name) == (SOL_SOCKET, SO_MARK)]
    return mark


def _tcp_proxy_cluster(chain) -> str:
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    [proxy] = [f for f in chain.filters if f.typed_config.type_url.endswith(tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name)]
    config = tcp_proxy_pb2.TcpProxy()
    proxy.typed_config.Unpack(config)
    return config.cluster


def _original_src_mark(listener) -> int | None:
    from envoy.extensions.filters.listener.original_src.v3 import original_src_pb2

    for f in listener.listener_filters:
        if f.typed_config.type_url.endswith(original_src_pb2.OriginalSrc.DESCRIPTOR.full_name):
            config = original_src_pb2.OriginalSrc()
            f.typed_config.Unpack(config)
            return config.mark
    return None


def test_every_tproxy_port_is_a_transparent_listener_and_every_listener_port_is_tproxied(node_a):
    plan, resources = node_a
    tproxy = _rules(plan.ztunnel_side, "mangle", "TPROXY")
    ports = {int(_option(words, "--on-port")) for words in tproxy}
    listeners = _listeners_by_port(resources)
    assert ports == set(listeners), "the TPROXY rules and the node-wide listeners name different ports"
    for port in ports:
        assert listeners[port].transparent.value and listeners[port].use_original_dst.value, listeners[port].name


def test_the_tproxy_mark_delivers_locally_to_the_listeners(node_a):
    plan, _ = node_a
    for words in _rules(plan.ztunnel_side, "mangle", "TPROXY"):
        value, mask = (int(part, 16) for part in _option(words, "--tproxy-mark").split("/"))
        decision = route(plan.ztunnel_side, PRODUCTPAGE_IP, value & mask)
        assert decision.route is not None and decision.route.local, f"TPROXY mark {value:#x}: {decision.describe()}"


def test_each_listener_s_socket_mark_sends_replies_back_through_the_tunnel_it_was_reached_by(node_a):
    """Outbound connections come in on the outbound tunnel, inbound ones on the inbound tunnel: the
    listener's SO_MARK must route its replies (to the pod, or to the peer ztunnel) back the same way."""
    plan, resources = node_a
    listeners = _listeners_by_port(resources)
    for words in _rules(plan.ztunnel_side, "mangle", "TPROXY"):
        listener = listeners[int(_option(words, "--on-port"))]
        arrived_on = _option(words, "-i")
        # outbound: the reply goes to the local pod; inbound: to whoever opened the connection
        peer = SLEEP_IP if arrived_on == contract.ZTUNNEL_OUTBOUND_TUNNEL else PRODUCTPAGE_IP
        decision = route(plan.ztunnel_side, peer, _socket_mark(listener))
        assert decision.route is not None and decision.route.dev == arrived_on, (
            f"{listener.name} (SO_MARK {_socket_mark(listener):#x}) reached via {arrived_on}: replies {decision.describe()}")


def test_the_tunnels_the_rules_name_are_the_plan_s(node_a):
    plan, _ = node_a
    devices = {_option(words, "-i") for words in _rules(plan.ztunnel_side, "mangle", "TPROXY")}
    assert devices == {t.name for t in plan.ztunnel_side.tunnels}


def test_spoofed_connections_take_the_main_table(node_a):
    """original_src marks the connections whose source it spoofs; no ztunnel rule may catch them
    (they leave by the pod network like the pod's own would)."""
    plan, resources = node_a
    marks = {_original_src_mark(l) for l in _listeners_by_port(resources).values()} - {None}
    assert marks, "no listener spoofs sources: the contract test has nothing to check"
    for mark in marks:
        assert route(plan.ztunnel_side, PRODUCTPAGE_IP, mark).table == "main"


def test_same_node_tunnels_hairpin_into_the_hbone_listener(node_a):
    """Tunnels to a pod of this node go to the hairpin port (the article's endpoint metadata and
    pod-local cluster's port override; the address the linear layout's local tunnel chains give
    their identity's one cluster); the ztunnel's nat rule must turn that port into the HBONE listener's."""
    plan, resources = node_a
    (redirect,) = _rules(plan.ztunnel_side, "nat", "REDIRECT")
    hairpin, to_port = int(_option(redirect, "--dport")), int(_option(redirect, "--to-ports"))
    assert resources.listeners[contract.INBOUND_LISTENER].address.socket_address.port_value == to_port
    overrides = {c.original_dst_lb_config.upstream_port_override.value for c in resources.clusters.values()
                 if c.original_dst_lb_config.HasField("upstream_port_override")}
    if contract.LINEAR_TUNNEL_LISTENER in resources.listeners:
        assert not overrides, overrides  # each chain says where: the destination's IP on a port
        chains = resources.listeners[contract.LINEAR_TUNNEL_LISTENER].filter_chains
        local = [c for c in chains if c.name.startswith(names.linear_local_tunnel_chain(""))]
        assert local, "no local tunnel chain in node A's internal listener"
        for chain in chains:
            port = hairpin if chain in local else to_port  # pod-local tunnels to the hairpin, the others to HBONE itself
            assert upstream_address(chain) == f"%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:{port}", chain.name
            cluster = resources.clusters[_tcp_proxy_cluster(chain)]
            assert cluster.type == cluster.ORIGINAL_DST, chain.name
    else:
        assert overrides == {hairpin, to_port}  # pod-local tunnels to the hairpin, the others to HBONE itself
        _article_endpoints_name_the_hairpin(resources, hairpin)


def _article_endpoints_name_the_hairpin(resources: NodeResources, hairpin: int) -> None:
    same_node = [lb.metadata.filter_metadata for cla in resources.endpoints.values() for group in cla.endpoints
                 for lb in group.lb_endpoints if lb.endpoint.address.envoy_internal_address.endpoint_id
                 .startswith(SLEEP_IP + ":")]
    assert same_node, "no endpoint of a local pod in node A's config"
    for metadata in same_node:
        tunnel = metadata[contract.TUNNEL_METADATA].fields[contract.TUNNEL_ADDRESS].string_value
        dial = metadata[contract.ORIGINAL_DST_FILTER].fields[contract.ORIGINAL_DST_LOCAL].string_value
        assert tunnel == dial == f"{SLEEP_IP}:{hairpin}"

"""IPv6 and dual-stack pods (issue 11, point 3): the mesh is IPv4-only, and IPv6 never reaches Envoy.

Before the fix every IPv6 pod got an inbound chain matching ``<ipv6>/32``: two of them overlapped, and
Envoy rejected ``ztunnel_inbound`` (so a restarted ztunnel came up without it).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from google.protobuf import json_format

from zpilot.contract import INBOUND_LISTENER, INBOUND_PLAINTEXT_LISTENER, LINEAR_TUNNEL_LISTENER
from zpilot.explain.envoy_config import upstream_address
from zpilot.envoy_binary import validate
from zpilot.translators import TranslateOptions, inbound
from zpilot.translators.inbound_guard import REFUSED_PLAINTEXT_CHAIN
from zpilot.translators.static import static_bootstrap

from ..ipv6_cluster import DUAL_STACK_V4, IPV6_ADDRESSES, NODE_A, article_with_ipv6
from .render_util import render

ARTICLE_NODE_A_PODS = {"10.4.4.7", "10.4.4.11", "10.4.4.19"}
#: The outbound layouts: the pods' and services' addresses reach the outbound side of either.
LAYOUTS = ["article", "linear"]


@pytest.fixture(scope="module")
def dual_stack(tmp_path_factory) -> Path:
    return article_with_ipv6(tmp_path_factory.mktemp("dual-stack") / "cluster")


def test_inbound_chains_are_ipv4_and_unique(dual_stack: Path) -> None:
    resources, _, _ = render(dual_stack, NODE_A)
    pod_ips = ARTICLE_NODE_A_PODS | set(DUAL_STACK_V4.values())
    for name in (INBOUND_LISTENER, INBOUND_PLAINTEXT_LISTENER):
        chains = resources.listeners[name].filter_chains
        names = [fc.name for fc in chains if fc.name != REFUSED_PLAINTEXT_CHAIN]
        assert len(names) == len(set(names)), names
        assert set(names) == {f"inbound_{ip}" for ip in pod_ips}
    # 15008 picks a chain by prefix (/32 each), 15006 by its matcher's map of destination IPs
    ranges = [r for fc in resources.listeners[INBOUND_LISTENER].filter_chains for r in fc.filter_chain_match.prefix_ranges]
    assert {(r.address_prefix, r.prefix_len.value) for r in ranges} == {(ip, 32) for ip in pod_ips}
    by_ip = resources.listeners[INBOUND_PLAINTEXT_LISTENER].filter_chain_matcher.on_no_match.matcher.matcher_tree
    assert set(by_ip.exact_match_map.map) == pod_ips


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_ipv6_address_reaches_the_config_and_each_drop_is_reported(dual_stack: Path, layout: str) -> None:
    resources, secrets, problems = render(dual_stack, NODE_A, TranslateOptions(layout=layout))
    text = str(json_format.MessageToDict(static_bootstrap(resources, secrets)))
    assert [ip for ip in IPV6_ADDRESSES if ip in text] == []
    assert "10.8.9.30" in text  # the dual-stack service keeps its IPv4 VIP
    messages = [str(p) for p in problems]
    for expected in (
        "warning: Pod default/dual-v4-first: IPv6 address fd00:10:4:4::30 dropped",
        "warning: Pod default/dual-v6-first: IPv6 address fd00:10:4:4::31 dropped",
        "warning: Pod default/v6-only-a: IPv6-only (fd00:10:4:4::20)",
        "warning: Service default/dual: IPv6 clusterIP fd00:10:8::30 dropped",
        "warning: Service default/v6-only: IPv6-only (fd00:10:8::31)",
    ):
        assert any(m.startswith(expected) for m in messages), (expected, messages)


def _matched_values(message: dict) -> list[str]:
    """Every key of an exact map and every prefix of a range list in a matcher (as JSON), anywhere in it."""
    out: list[str] = []
    for key, value in message.items():
        if key == "exactMatchMap":
            out += list(value["map"])
        if key == "addressPrefix":
            out.append(value)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                out += _matched_values(item)
    return out


def test_a_tunnel_chain_is_reached_from_an_ipv4_pod_only(dual_stack: Path) -> None:
    """The linear tunnel chains give their cluster ``<destination IP>:<port>`` unbracketed, which Envoy parses
    for IPv4 only (an IPv6 address would need ``[ip]:port``): safe because the internal listener picks a chain
    by the client pod's address (and, to this node, the destination's), all IPv4 in a dual-stack cluster too;
    a connection's two addresses share a family."""
    resources, _, _ = render(dual_stack, NODE_A, TranslateOptions(layout="linear"))
    listener = resources.listeners[LINEAR_TUNNEL_LISTENER]
    matched = _matched_values(json_format.MessageToDict(listener.filter_chain_matcher))
    assert set(matched) >= ARTICLE_NODE_A_PODS | set(DUAL_STACK_V4.values()), matched
    assert all(ipaddress.ip_network(value, strict=False).version == 4 for value in matched), matched
    for chain in listener.filter_chains:
        assert upstream_address(chain) in ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:15008",
                                           "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:15088"), chain.name


@pytest.mark.envoy
@pytest.mark.parametrize("layout", LAYOUTS)
def test_envoy_accepts_the_node_config(dual_stack: Path, layout: str) -> None:
    resources, secrets, _ = render(dual_stack, NODE_A, TranslateOptions(layout=layout))
    config = json_format.MessageToDict(static_bootstrap(resources, secrets, admin_port=0), preserving_proto_field_name=True)
    result = validate(config)
    assert result.ok, result.output[-3000:]


@pytest.mark.parametrize(("ip", "length"), [("10.4.4.7", 32), ("fd00:10:4:4::20", 128), ("::ffff:10.0.0.1", 128)])
def test_pod_match_uses_the_address_family_s_host_length(ip: str, length: int) -> None:
    """Even an address that slipped past the model could never be matched as a /32 of IPv6 space."""
    [prefix] = inbound._pod_match(ip).prefix_ranges
    assert (prefix.address_prefix, prefix.prefix_len.value) == (ip, length)

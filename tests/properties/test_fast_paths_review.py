"""Round eleven's fast paths held to what they replaced, on the inputs they were not written for.

Each fast path (h11-fanout, h11-cold) is a cheaper way to the very same answer: an IPv4 prefix
length told without ``ipaddress``, an RE2 escape by ``str.translate``, a map entry written as
bytes, the generation histogram observed once per change, a node's endpoint names checked
without a set made, a set's names carried through ``TypeResources.replaced``, a sum of hashes
moved position by position. Here each meets its old way on odd inputs: leading zeros, spaces,
prefixes, IPv4-mapped IPv6, non-ASCII digits; every code point; empty and long (multi-byte
varint) names; NaN and infinities; names in two sets; names added by a replacement; a position
named twice."""

from __future__ import annotations

import ipaddress
import math
from types import MappingProxyType

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from zpilot import protowire
from zpilot.model import addresses
from zpilot.translators import incremental, inputs, matcher, rbac
from zpilot.xds import metrics
from zpilot.xds.resource_store import ResourceStore
from zpilot.xds.snapshot import CachedResource, TypeResources

_ADDRESSY = st.text(alphabet=st.sampled_from("0123456789.:/% abfx\u0663\uff11\x00\n"), max_size=20)


def _ipaddress_prefix_len(ip: object) -> int | str:
    try:
        return ipaddress.ip_address(ip).max_prefixlen  # type: ignore[arg-type]
    except ValueError:
        return "refused"


def _fast_prefix_len(ip: object) -> int | str:
    try:
        return addresses.host_prefix_len.__wrapped__(ip)  # type: ignore[attr-defined]
    except ValueError:
        return "refused"


@settings(max_examples=500, deadline=None)
@given(st.one_of(_ADDRESSY, st.ip_addresses().map(str), st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}")))
@example("01.2.3.4")
@example("1.2.3.04")
@example(" 1.2.3.4")
@example("1.2.3.4 ")
@example("1.2.3.4/32")
@example("1.2.3.4%eth0")
@example("1.2.3.4\x00")
@example("\u0661.2.3.4")
@example("1.2.3")
@example("0.0.0.0")
@example("255.255.255.255")
@example("256.1.1.1")
@example("::ffff:1.2.3.4")
@example("fe80::1%eth0")
def test_host_prefix_len_is_ipaddress_s_on_any_text(ip: str) -> None:
    assert _fast_prefix_len(ip) == _ipaddress_prefix_len(ip)


@pytest.mark.parametrize("ip", [b"\x01\x02\x03\x04", 16909060, ipaddress.IPv4Address("1.2.3.4")])
def test_host_prefix_len_is_ipaddress_s_on_what_is_not_text(ip: object) -> None:
    assert _fast_prefix_len(ip) == _ipaddress_prefix_len(ip) == 32


def _old_escape(text: str) -> str:
    return "".join("\\" + ch if ch in rbac._SPECIAL else ch for ch in text)


def test_escape_is_the_old_escape_on_every_code_point() -> None:
    for start in range(0, 0x110000, 0x10000):
        text = "".join(map(chr, range(start, start + 0x10000)))
        assert rbac.escape(text) == _old_escape(text)


@given(st.text())
def test_escape_is_the_old_escape_on_any_text(text: str) -> None:
    assert rbac.escape(text) == _old_escape(text)


def _old_exact_entry(key: str, chain_name: str) -> bytes:
    """``matcher._exact_entry`` as it was before it wrote the bytes itself."""
    entry = protowire.field_str(1, key) + protowire.field_bytes(2, matcher.serialized(matcher.chain(chain_name)))
    return protowire.field_bytes(matcher._MAP_FIELD, entry)


_LONG = st.sampled_from([0, 1, 60, 127, 128, 129, 200, 16383, 16384, 16400])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), _LONG, _LONG, st.sampled_from("a\u00e9\u4e2d\U0001f600"))
def test_a_map_entry_is_the_old_entry_on_edge_values(key: str, name: str, key_pad: int, name_pad: int, ch: str) -> None:
    """Empty keys and names, names whose lengths need two- and three-byte varints (at every
    nesting level: the name is in the entry three times over), characters of 1-4 UTF-8 bytes."""
    key, name = key + ch * (key_pad // 4), name + ch * (name_pad // 4)
    assert matcher._exact_entry.__wrapped__(key, name) == _old_exact_entry(key, name)


@pytest.mark.parametrize("key,name", [("", ""), ("", "x"), ("10.0.0.1", ""), ("a" * 200, "b" * 20000)])
def test_a_map_entry_is_the_old_entry_at_the_ends(key: str, name: str) -> None:
    assert matcher._exact_entry.__wrapped__(key, name) == _old_exact_entry(key, name)


@pytest.mark.parametrize("key,name", [("\ud800", "x"), ("1", "\udfff")])
def test_a_map_entry_of_a_lone_surrogate_is_refused_as_before(key: str, name: str) -> None:
    with pytest.raises(UnicodeEncodeError):
        _old_exact_entry(key, name)
    with pytest.raises(UnicodeEncodeError):
        matcher._exact_entry.__wrapped__(key, name)


_AMOUNTS = st.lists(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(metrics.LATENCY_BUCKETS),
        st.floats(min_value=0, max_value=40),
    ),
    max_size=50,
)


def _histogram() -> Histogram:
    return Histogram("h", "h", buckets=metrics.LATENCY_BUCKETS, registry=CollectorRegistry())


def _state(histogram: Histogram) -> tuple[list[float], float]:
    return [b.get() for b in histogram._buckets], histogram._sum.get()  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(_AMOUNTS)
def test_observe_all_is_observe_per_amount(amounts: list[float]) -> None:
    one, many = _histogram(), _histogram()
    for amount in amounts:
        one.observe(amount)
    metrics.observe_all(many, amounts)
    (buckets_one, sum_one), (buckets_many, sum_many) = _state(one), _state(many)
    assert buckets_one == buckets_many
    assert (math.isnan(sum_one) and math.isnan(sum_many)) or sum_one == pytest.approx(sum_many, nan_ok=True)


_NAMES = st.sets(st.sampled_from([f"n{i}" for i in range(12)]), max_size=8)


@given(_NAMES, st.lists(_NAMES, max_size=4))
def test_names_of_sets_is_their_union(names: set[str], sets: list[set[str]]) -> None:
    """A node's endpoints are its sets' names together: whatever the overlaps and sizes."""
    views = [dict.fromkeys(s).keys() for s in sets]
    assert incremental._names_of_sets(dict.fromkeys(names).keys(), views) == (names == set().union(*sets))


def _resource(name: str, version: str) -> CachedResource:
    return CachedResource(name, "t", version, (f"{name}={version}".encode(),), 0)


_VERSIONS = st.sampled_from(["0" * 16, "1" * 16, "2" * 16, "33"])


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from([f"n{i}" for i in range(8)]), _VERSIONS, min_size=1),
    st.lists(st.dictionaries(st.sampled_from([f"n{i}" for i in range(10)]), _VERSIONS, max_size=3), max_size=4),
    st.booleans(),
)
def test_a_replaced_set_s_names_are_its_items(first: dict, changes: list[dict], read_names: bool) -> None:
    """``TypeResources.replaced`` carries the last set's names (a change replaces members): they
    are its items' names whatever the change names, new names and other lengths of version included,
    and ``ResourceStore.names`` of sets composed is their items' names."""
    made = TypeResources.of_cached("t", {n: _resource(n, v) for n, v in sorted(first.items())}, keep_names_text=True)
    store = ResourceStore()
    history = [made]
    for change in changes:
        if read_names:
            assert made.names == frozenset(made.items)
        made = made.replaced({n: _resource(n, v) for n, v in change.items()})
        assert made.names == frozenset(made.items)
        history.append(made)
        composed = TypeResources.composed("t", history[-2:], {})
        assert store.names(composed) == frozenset(composed.items)


@given(st.lists(st.integers(), min_size=1, max_size=6), st.data())
def test_a_sum_moved_at_positions_is_the_sum(before: list[int], data: st.DataObject) -> None:
    """The mesh's and the served ports' hashes are sums moved at the positions that changed:
    whatever the positions (one named twice included), the sum of what is there."""
    at = data.draw(st.lists(st.integers(0, len(before) - 1), max_size=4))
    after = list(before)
    for i in at:
        after[i] = data.draw(st.integers())
    assert inputs._sum_at(sum(before), tuple(before), tuple(after), at) == sum(after)


def _old_internal_needs(subject: tuple[str, ...], assignment) -> list:
    needs: dict = {}
    for group in assignment.endpoints:
        for lb in group.lb_endpoints:
            address = lb.endpoint.address
            if address.HasField("envoy_internal_address"):
                needs[("internal listener", address.envoy_internal_address.server_listener_name, subject)] = None
    return list(needs)


_ENDPOINT_KINDS = st.sampled_from(["socket", "pipe", "none", "internal:", "internal:a", "internal:b", "internal:c"])


@given(st.lists(st.lists(_ENDPOINT_KINDS, max_size=5), max_size=4))
def test_internal_needs_are_the_old_walk_s(groups: list[list[str]]) -> None:
    """Groups of every mix of endpoint kinds, internal ones naming a listener or none: the same
    needs in the same order as the walk endpoint by endpoint."""
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    from zpilot.translators import consistency

    cla = ClusterLoadAssignment(cluster_name="c")
    for kinds in groups:
        group = cla.endpoints.add()
        for kind in kinds:
            endpoint = group.lb_endpoints.add().endpoint
            if kind == "socket":
                endpoint.address.socket_address.address = "10.0.0.1"
            elif kind == "pipe":
                endpoint.address.pipe.path = "/p"
            elif kind.startswith("internal:"):
                endpoint.address.envoy_internal_address.server_listener_name = kind[len("internal:"):]
                endpoint.address.envoy_internal_address.endpoint_id = "e"
            else:
                endpoint.health_check_config.port_value = 1
    subject = ("endpoints", "c")
    assert consistency._internal_needs(subject, cla) == _old_internal_needs(subject, cla)

"""A listener serialized from its parts is the listener a whole build gives.

The producer never serializes the linear layout's outbound listener whole: it joins the node's
own part's bytes with the shared pieces' (service chains, pod-IP chains, the destination map),
each serialized once for every node, rewriting the lengths of the fields around the destination
map (``resource_store.listener_pieces``, ``protowire.spliced``). These tests build the same
listener both ways and compare: byte for byte, and as messages after parsing.
"""

from __future__ import annotations

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf import any_pb2
from xds.type.matcher.v3 import ip_pb2

from zpilot import contract, protowire
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, extra_pod, node_name, synthetic_cluster, synthetic_manifests
from zpilot.translators import IncrementalTranslator, TranslateOptions, matcher, translate_node
from zpilot.translators.context import ListenerParts
from zpilot.translators.fragments import Fragment
from zpilot.xds import snapshot
from zpilot.xds.order import LISTENER_TYPE
from zpilot.xds.push import Producer
from zpilot.xds.resource_store import ResourceStore, listener_pieces
from zpilot.xds.snapshot_cache import SnapshotCache

SHAPE = Shape(nodes=4, pods=10, services=4, namespaces=2, ports_per_service=2, service_accounts_per_namespace=2)
LINEAR = TranslateOptions(layout="linear")
OUTBOUND = contract.OUTBOUND_LISTENER


def _docs(empty_node: bool = True) -> list[dict]:
    docs = synthetic_manifests(SHAPE)
    if empty_node:  # a node of the cluster with no pod on it: it still gets its listeners
        node = next(d for d in docs if d["kind"] == "Node")
        docs.append({**node, "metadata": {**node["metadata"], "name": "empty-node", "uid": "empty-node"}})
    return docs


def _index(docs) -> MeshIndex:
    return MeshIndex.build(synthetic_cluster(docs))


def _from_any(entry_any: bytes) -> Listener:
    return Listener.FromString(any_pb2.Any.FromString(entry_any).value)


@pytest.mark.parametrize("node", [node_name(0), "empty-node"])
def test_a_listener_joined_from_its_parts_is_the_whole_listener(node: str) -> None:
    index = _index(_docs())
    assert node in index.nodes
    whole = translate_node(index, node, LINEAR).listeners[OUTBOUND]
    translator = IncrementalTranslator(LINEAR)
    translated = translator.translate_parts(translator.inputs(index)[node])
    parts = translated.listener_parts.get(OUTBOUND)
    if node == "empty-node":  # no pod to gate: the listener is whole, with no shared piece
        assert parts is None and translated.resources.listeners[OUTBOUND] == whole
        assert not whole.filter_chain_matcher.matcher_tree.HasField("custom_match")
        return
    own = translated.resources.listeners[OUTBOUND]
    assert own is parts.own and len(own.filter_chains) < len(whole.filter_chains)  # the whole was not built
    joined = b"".join(piece for piece, _ in listener_pieces(OUTBOUND, parts))
    assert Listener.FromString(joined) == whole
    assert joined == whole.SerializeToString(deterministic=True)  # the very bytes, so the same version


@pytest.mark.parametrize("min_shared", [64, snapshot.MIN_SHARED_CHUNK])
async def test_every_node_is_served_the_listeners_translated_whole(monkeypatch, min_shared: int) -> None:
    """Through the producer, with the pieces kept apart (64) or, this cluster's being small, joined
    into the node's own bytes: each node's listeners decode to what translating it alone gives."""
    monkeypatch.setattr(snapshot, "MIN_SHARED_CHUNK", min_shared)
    docs = _docs()
    cache = SnapshotCache()
    producer = Producer(cache, translate=IncrementalTranslator(LINEAR))
    for step in (docs, docs + [extra_pod(SHAPE, 0, node=1)]):
        index = _index(step)
        await producer.update(index)
        for node in cache.nodes():
            served, _ = cache.get_snapshot(node).decode()
            assert served.listeners == translate_node(index, node, LINEAR).listeners, node
            cached = cache.get_snapshot(node).resources(LISTENER_TYPE).items[OUTBOUND]
            # own bytes around the pieces: the service chains, the node pod-CIDR chains, the stray chains
            # (none here) and the destination map
            assert len(cached.parts) == (1 if min_shared > 64 or node == "empty-node" else 8)


async def test_the_version_changes_exactly_when_the_bytes_do() -> None:
    docs = _docs(empty_node=False)
    versions = []
    for step in (docs, docs, docs + [extra_pod(SHAPE, 0, node=1)]):  # a second producer, then a pod added
        cache = SnapshotCache()
        await Producer(cache, translate=IncrementalTranslator(LINEAR)).update(_index(step))
        versions.append({n: cache.get_snapshot(n).resources(LISTENER_TYPE).items[OUTBOUND] for n in cache.nodes()})
    first, again, added = versions
    assert {n: r.version for n, r in first.items()} == {n: r.version for n, r in again.items()}
    for node, resource in added.items():  # the new pod is in node 1's gate; to the others it is a pod of
        # node 1's pod CIDR, which no listener lists (translators/pod_select.py)
        if node == node_name(1):
            assert resource.entry != first[node].entry and resource.version != first[node].version
        else:
            assert resource.entry == first[node].entry and resource.version == first[node].version
    assert len({r.version for r in first.values()}) == len(first)  # each node's own gate differs


def test_pieces_are_joined_where_the_fields_say() -> None:
    """By hand: chains after the listener's own, a matcher piece deep in its gate (lengths of
    one byte growing to two and three), the same message as built whole."""
    from google.protobuf import duration_pb2

    from zpilot.translators.tcp_proxy import proxy_chain

    idle = duration_pb2.Duration(seconds=1)
    chains = Fragment("chains", tuple(proxy_chain(f"c{i}", f"c{i}", idle_timeout=idle) for i in range(3)))
    target = matcher.nested(matcher.exact("ip", {f"10.0.{i // 250}.{i % 250}": matcher.chain("c1") for i in range(2000)}))
    serialized_target = matcher.serialized(target)
    own = Listener(name="l", filter_chains=[proxy_chain("own", "own", idle_timeout=idle)])
    own.filter_chain_matcher.CopyFrom(matcher.in_ranges("source-ip", ["10.1.0.1"], b"", matcher.chain("own")))
    whole = Listener()
    whole.CopyFrom(own)
    whole.filter_chains.extend(chains.value)
    whole.filter_chain_matcher.CopyFrom(matcher.in_ranges("source-ip", ["10.1.0.1"], target, matcher.chain("own")))
    path = (Listener.DESCRIPTOR.fields_by_name["filter_chain_matcher"].number, *matcher.IN_RANGES_ON_MATCH)
    parts = ListenerParts(own, (chains,), (Fragment("target", serialized_target),), (path,))
    pieces = listener_pieces("l", parts)
    assert any(piece is serialized_target for piece, _ in pieces)  # kept as that object
    assert b"".join(piece for piece, _ in pieces) == whole.SerializeToString(deterministic=True)
    resource = ResourceStore().resource(LISTENER_TYPE, "l", own, None, parts)
    assert _from_any(resource.any) == whole
    ranges = ip_pb2.IPMatcher.FromString(whole.filter_chain_matcher.matcher_tree.custom_match.typed_config.value)
    assert ranges.range_matchers[0].on_match == target

    with pytest.raises(ValueError, match="no field"):
        listener_pieces("l", ListenerParts(own, (chains,), parts.matches, ((32, 9),)))
    with pytest.raises(ValueError, match="places"):
        listener_pieces("l", ListenerParts(own, (chains,), parts.matches, ()))


def test_insertion_point_and_splice_on_the_wire_format() -> None:
    listener = Listener(name="l", filter_chains=[{"name": "a"}], stat_prefix="s")
    data = listener.SerializeToString(deterministic=True)
    at = protowire.insertion_point(data, 3)
    extra = protowire.field_bytes(3, Listener(filter_chains=[{"name": "b"}]).filter_chains[0].SerializeToString())
    assert Listener.FromString(data[:at] + extra + data[at:]) == Listener(
        name="l", filter_chains=[{"name": "a"}, {"name": "b"}], stat_prefix="s"
    )
    assert protowire.insertion_point(data, 99) == len(data)
    # the name (field 1) replaced by 300 bytes: its length becomes two bytes
    pieces = protowire.spliced(data, [(1,)], [300])
    joined = b"".join(b"x" * 300 if piece == 0 else piece for piece in pieces)
    assert Listener.FromString(joined).name == "x" * 300 and Listener.FromString(joined).stat_prefix == "s"


def test_field_records_are_each_field_whole_on_the_wire_format() -> None:
    chains = [{"name": "a"}, {"name": "b" * 200}, {"name": "c"}]  # a length of two bytes among them
    listener = Listener(name="l", filter_chains=chains, stat_prefix="s")
    records = protowire.field_records(listener.SerializeToString(deterministic=True), 3)
    each = [protowire.field_bytes(3, c.SerializeToString(deterministic=True)) for c in listener.filter_chains]
    assert records == each
    assert Listener.FromString(b"".join(records)) == Listener(filter_chains=chains)
    assert protowire.field_records(listener.SerializeToString(deterministic=True), 99) == []
    with pytest.raises(ValueError):
        protowire.field_records(listener.SerializeToString(deterministic=True)[:-1], 3)


def test_ranges_written_on_the_wire_format_are_the_generated_class_bytes() -> None:
    """``matcher.serialized_ranges`` writes the ranges by hand: byte for byte what the generated
    classes write, for host addresses of both families and written prefixes (a zero length too),
    and a length that is no uint32 is refused as the generated class refuses it."""
    ips = ("10.1.0.1", "10.200.3.4", "fd00::7", "10.0.0.0/8", "0.0.0.0/0", "fd00:1::/64", "::/0", "192.168.1.1")
    built = ip_pb2.IPMatcher.IPRangeMatcher(ranges=matcher._ranges(ips)).SerializeToString(deterministic=True)
    assert matcher.serialized_ranges(ips) == built
    assert matcher.serialized_ranges(()) == b""
    long_prefix = ("10.0.0.0/" + "1" * 12,)  # 2^32 and more: the generated class refuses it too
    with pytest.raises(ValueError):
        matcher._ranges(long_prefix)
    with pytest.raises(ValueError):
        matcher.serialized_ranges(long_prefix)


def test_the_tunnel_listener_joined_from_its_maps_is_the_whole_listener() -> None:
    """The internal listener's own part leads its gate to two empty places, where the node's maps
    of its pods' addresses (to its tunnels to this node, and to another) are joined as bytes: the
    very bytes of the listener a whole build gives, through a change of the node's pods too."""
    docs = _docs(empty_node=False)
    translator = IncrementalTranslator(LINEAR)
    for step in (docs, docs + [extra_pod(SHAPE, 0, node=1), extra_pod(SHAPE, 1, node=1)]):
        index = _index(step)
        for node, node_input in translator.inputs(index).items():
            whole = translate_node(index, node, LINEAR).listeners[contract.LINEAR_TUNNEL_LISTENER]
            parts = translator.translate_parts(node_input).listener_parts[contract.LINEAR_TUNNEL_LISTENER]
            assert len(parts.matches) == 2 and not parts.own.filter_chains  # the maps and chains are pieces
            joined = b"".join(piece for piece, _ in listener_pieces(contract.LINEAR_TUNNEL_LISTENER, parts))
            assert joined == whole.SerializeToString(deterministic=True), node

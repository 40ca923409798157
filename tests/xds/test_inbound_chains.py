"""A node's inbound listeners after a pod change: its pods' chains kept serialized, derived from
the ones it had, served byte for byte (and version for version: versioned by their chains'
hashes, ``snapshot.records_version``) as the whole listener.

A cold generation builds and serializes each node's inbound listeners whole; the node's first
pod change derives its chains from that listener (each kept chain's bytes and consistency
facts taken from it, the new pod's made), the next ones from the chains kept then
(translators/inbound.py). These tests follow one node through such changes and compare what
is served with the node translated whole, and check that the kept chains are not made again.
"""

from __future__ import annotations

import asyncio

from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf import any_pb2

from zpilot import contract, protowire
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, extra_pod, node_name, synthetic_cluster, synthetic_manifests
from zpilot.translators import IncrementalTranslator, TranslateOptions, consistency, matcher, translate_node
from zpilot.translators.context import SERIALIZED_BYTES, ListenerParts, SerializedChains, record_hash
from zpilot.translators.fragments import Fragment
from zpilot.xds.order import LISTENER_TYPE
from zpilot.xds.push import Producer
from zpilot.xds.resource_store import listener_records
from zpilot.xds.snapshot import CachedResource, records_version
from zpilot.xds.snapshot_cache import SnapshotCache

SHAPE = Shape(nodes=3, pods=24, services=4, namespaces=2, ports_per_service=2, service_accounts_per_namespace=2)
OPTIONS = TranslateOptions(layout="linear")
INBOUND = (contract.INBOUND_LISTENER, contract.INBOUND_PLAINTEXT_LISTENER)
NODE = node_name(1)


def _index(docs: list[dict], previous: MeshIndex | None = None) -> MeshIndex:
    return MeshIndex.build(synthetic_cluster(docs), previous=previous)


def _served(producer: Producer, node: str) -> dict[str, tuple[bytes, str]]:
    items = producer.cache.get_snapshot(node).resources(LISTENER_TYPE).items
    return {name: (any_pb2.Any.FromString(items[name].any).value, items[name].version) for name in INBOUND}


def _whole(index: MeshIndex, node: str) -> dict[str, tuple[bytes, str]]:
    listeners = translate_node(index, node, OPTIONS).listeners
    out = {}
    for name in INBOUND:
        data = listeners[name].SerializeToString(deterministic=True)
        out[name] = (data, records_version(data, 3))  # versioned by their chains, however made
    return out


def _kept(producer: Producer, node: str) -> list[SerializedChains]:
    return [f.value for f in producer._fragments[node] if isinstance(f.value, SerializedChains)]


def test_a_pod_change_serves_the_whole_listener_from_the_chains_the_node_kept() -> None:
    docs = synthetic_manifests(SHAPE)
    producer = Producer(SnapshotCache(), translate=IncrementalTranslator(OPTIONS))
    index = _index(docs)
    asyncio.run(producer.update(index))
    assert not _kept(producer, NODE)  # cold: whole listeners
    assert _served(producer, NODE) == _whole(index, NODE)
    # the served bytes of each whole listener are kept on it (a view): its first change cuts them, not serializing it again
    whole = [f for f in producer._fragments[NODE] if isinstance(f.value, Listener) and f.value.name in INBOUND]
    assert len(whole) == 2
    for fragment in whole:
        kept_bytes = fragment.derived[SERIALIZED_BYTES]
        assert isinstance(kept_bytes, memoryview) and kept_bytes.tobytes() == fragment.value.SerializeToString(deterministic=True)

    added = [extra_pod(SHAPE, 0, node=1), extra_pod(SHAPE, 1, node=1)]
    history = [docs + added[:1], docs + added, docs + added[1:], docs]
    runs = []
    for step in history:
        index = _index(step, index)
        report = asyncio.run(producer.update(index))
        assert not report.failed
        assert _served(producer, NODE) == _whole(index, NODE)
        kept = _kept(producer, NODE)
        assert len(kept) == 2  # the HBONE listener's chains and the plaintext listener's
        runs.append(kept)
    # a pod added, then another: every chain but the new pod's is the very bytes it was
    before, after = runs[0][0].records, runs[1][0].records
    assert len(after) == len(before) + 1
    assert sum(any(r is b for b in before) for r in after) == len(before)
    # every other node was not translated again for its inbound listeners: still whole
    assert not _kept(producer, node_name(0))


def test_chains_kept_serialized_are_judged_as_the_whole_listener() -> None:
    """A listener joined from its own part and chains kept serialized has the findings of the
    whole listener, for a listener Envoy would refuse too: two chains of one name matching the
    same connections (the model never gives two pods of a node one IP: made by hand)."""
    index = _index(synthetic_manifests(SHAPE))
    for name in INBOUND:
        whole = translate_node(index, NODE, OPTIONS).listeners[name]
        whole.filter_chains.append(whole.filter_chains[0])  # the first pod's chain twice
        own = Listener()
        own.CopyFrom(whole)
        del own.filter_chains[:]
        records = tuple(protowire.field_bytes(3, c.SerializeToString(deterministic=True)) for c in whole.filter_chains)
        chains = Fragment("chains", SerializedChains(
            records, consistency.chains_of(whole, len(whole.filter_chains), None), tuple(map(record_hash, records))
        ))
        joined = consistency.listener_facts_of_parts(name, ListenerParts(own, chains=(chains,)))
        walked = consistency.resource_facts(consistency.LISTENER, name, whole)
        assert joined.listeners[0].local == walked.listeners[0].local
        assert any("filter chains named" in f for f in walked.listeners[0].local)
        if name == contract.INBOUND_LISTENER:  # no chain matcher: the chains' matches are compared
            assert any("matching the same connections" in f for f in walked.listeners[0].local)
        assert joined.wanted_names() == walked.wanted_names()  # (a listener of pieces keeps theirs apart)
        assert sorted(joined.listeners[0].chains.needs) == sorted(walked.listeners[0].chains.needs)
        data = whole.SerializeToString(deterministic=True)
        prefix, kept, hashes, suffix = listener_records(name, ListenerParts(own, chains=(chains,)))
        assert b"".join((prefix, *kept, suffix)) == data and kept == records
        joined_resource = CachedResource.of_records(LISTENER_TYPE, name, prefix, kept, hashes, suffix)
        assert joined_resource.version == records_version(data, 3)  # its chains' kept hashes: what its bytes give
        assert joined_resource.entry == CachedResource.of(LISTENER_TYPE, name, whole).entry


def test_chain_facts_read_from_a_whole_listeners_facts_are_the_walked_ones() -> None:
    index = _index(synthetic_manifests(SHAPE))
    for name in INBOUND:
        listener = translate_node(index, NODE, OPTIONS).listeners[name]
        facts = consistency.resource_facts(consistency.LISTENER, name, listener)
        count = len(listener.filter_chains)
        walked = consistency.chains_of(listener, count, None)
        assert consistency.chains_of(listener, count, facts) == walked
        assert walked and all(f.needs for f in walked) or name == contract.INBOUND_PLAINTEXT_LISTENER


def test_a_pieced_map_selecting_a_missing_chain_is_found() -> None:
    """The plaintext listener's map of pods is a piece kept as its entries (``matcher.SerializedMap``):
    what it selects is read entry by entry, and a chain it selects that the listener lacks is a finding."""
    docs = synthetic_manifests(SHAPE)
    translator = IncrementalTranslator(OPTIONS)
    cold = translator.translate_parts(translator.inputs(_index(docs))[NODE])  # whole, held: what the change derives from
    changed = translator.translate_parts(translator.inputs(_index(docs + [extra_pod(SHAPE, 0, node=1)]))[NODE])
    assert contract.INBOUND_PLAINTEXT_LISTENER not in cold.listener_parts
    parts = changed.listener_parts[contract.INBOUND_PLAINTEXT_LISTENER]
    (by_pod,) = parts.matches
    assert isinstance(by_pod.value, matcher.SerializedMap)
    assert not consistency.listener_facts_of_parts(contract.INBOUND_PLAINTEXT_LISTENER, parts).listeners[0].local
    stray = Fragment("stray map", matcher.serialized_exact_map("ip", {"10.9.9.9": "inbound_10.9.9.9"}))
    wrong = ListenerParts(parts.own, chains=parts.chains, matches=(stray,), match_paths=parts.match_paths)
    (finding,) = consistency.listener_facts_of_parts(contract.INBOUND_PLAINTEXT_LISTENER, wrong).listeners[0].local
    assert "selects chain 'inbound_10.9.9.9', which does not exist" in finding


def test_a_whole_listener_keeps_a_view_of_the_bytes_served_not_a_second_copy() -> None:
    """A whole inbound listener whose bytes a snapshot already holds (interned: the store serves the
    held resource) keeps a view of those very bytes for its first change to cut, not of the copy
    just serialized and dropped: that view would keep a second copy of the listener alive."""
    from zpilot.xds.resource_store import ResourceStore

    listeners = translate_node(_index(synthetic_manifests(SHAPE)), NODE, OPTIONS).listeners
    for name in INBOUND:
        store = ResourceStore()
        held = store.resource(LISTENER_TYPE, name, listeners[name])  # what a snapshot holds
        rebuilt = Fragment("the same listener built whole again", listeners[name])
        served = store.resource(LISTENER_TYPE, name, listeners[name], rebuilt)
        assert served is held
        kept = rebuilt.derived[SERIALIZED_BYTES]
        assert kept.obj is held.parts[0] and kept.tobytes() == listeners[name].SerializeToString(deterministic=True)

"""A node's first change after a full build (the first model, a service added) costs what its
next one does: what it would have derived once is kept from the build that made the data, or
paid ahead in idle time, and is never made again then.

Each test takes away the way the first change used to recompute (the function is made to
raise) and checks the change is produced all the same, to exactly what a new producer serves
from the model alone: it fails if the first change falls back to recomputing.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest

from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, extra_policy, extra_pod, node_name, synthetic_cluster, synthetic_manifests
from zpilot import contract, protowire
from zpilot.translators import IncrementalTranslator, TranslateOptions, consistency, matcher, names, translate_node
from zpilot.translators.inputs import MeshInput
from zpilot.xds import push, snapshot
from zpilot.xds.order import ENDPOINT_TYPE, PUSH_ORDER
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache

SHAPE = Shape(nodes=3, pods=12, services=4, namespaces=1, ports_per_service=2, service_accounts_per_namespace=2)


def _index(docs) -> MeshIndex:
    return MeshIndex.build(synthetic_cluster(docs))


async def _produced(docs, **options) -> Producer:
    producer = Producer(SnapshotCache(), translate=IncrementalTranslator(TranslateOptions(layout="linear")), **options)
    await producer.update(_index(docs))
    return producer


def _served(producer: Producer) -> dict:
    cache = producer.cache
    return {
        node: {t: (r.version, {n: (c.version, c.entry) for n, c in r.items.items()}) for t, r in snap.types.items()}
        for node in cache.nodes()
        if (snap := cache.get_snapshot(node)) is not None
    }


def _refuse(*_args, **_kwargs):
    raise AssertionError("recomputed on a first change")


async def _first_change_matches_a_fresh_build(producer: Producer, docs, refusals=None) -> None:
    """``refusals``: what the change must not call, undone before the fresh build (a cold build
    walks each inbound listener's chains: it versions the listener by them, snapshot.records_version)."""
    docs = docs + [extra_pod(SHAPE, 0, node=0)]
    report = await producer.update(_index(docs))
    assert not report.failed and not producer.failures
    assert report.translated == [node_name(0)]
    if refusals is not None:
        refusals.undo()
    fresh = await _produced(docs)
    assert _served(producer) == _served(fresh)


async def test_a_nodes_inbound_chains_are_found_ahead_in_idle_time(monkeypatch) -> None:
    """After a full build, idle time finds where each node's inbound chains are and their facts
    (``IncrementalTranslator.prepare``); the node's first change then cuts its chains from its
    listener without walking them again."""
    monkeypatch.setattr(Producer, "PREPARE_AFTER_SECONDS", 0)
    monkeypatch.setattr(consistency, "_entry_targets", {})  # nothing known from other tests
    docs = synthetic_manifests(SHAPE)
    producer = await _produced(docs)
    assert producer._preparing is not None
    await producer._preparing  # started by the update itself, once idle
    assert producer.prepared == set(producer.cache.nodes())
    await producer.prepare_pending()  # nothing left: prepared once
    # what each node's plaintext map of its pods selects is known entry by entry (its first change parses only its new pod's)
    for node in producer.cache.nodes():
        listener = translate_node(_index(docs), node, TranslateOptions(layout="linear")).listeners[contract.INBOUND_PLAINTEXT_LISTENER]
        ips = list(listener.filter_chain_matcher.on_no_match.matcher.matcher_tree.exact_match_map.map)
        kept = matcher.serialized_exact_map("ip", {ip: names.inbound_chain(ip) for ip in ips})
        assert ips and all(entry in consistency._entry_targets for entry in kept.entries), node
    monkeypatch.setattr(consistency, "chains_of", _refuse)
    monkeypatch.setattr(protowire, "field_bounds", _refuse)
    await _first_change_matches_a_fresh_build(producer, docs, monkeypatch)


async def test_without_idle_time_the_first_change_cuts_the_chains_itself(monkeypatch) -> None:
    """The same change, nothing paid ahead: the change finds its chains itself (the fallback the
    test above refuses), and serves the same."""
    docs = synthetic_manifests(SHAPE)
    producer = await _produced(docs, prepare_ahead=False)
    assert producer._preparing is None
    calls = []
    chains_of = consistency.chains_of
    monkeypatch.setattr(consistency, "chains_of", lambda *a: calls.append(a) or chains_of(*a))
    await _first_change_matches_a_fresh_build(producer, docs)
    assert calls and not producer.prepared


async def test_a_change_waiting_is_produced_before_what_idle_time_pays_ahead(monkeypatch) -> None:
    """Paying ahead takes the producer's lock node by node: a change that comes meanwhile is
    produced as soon as the step under way ends, the rest of the nodes after it. The idle-time
    task the producer starts on its own (at once here: on a slow run, ``python -X dev``, its
    0.25 s passed during the first step) does not take a second step meanwhile: ``prepare_pending``
    is the one loop paying ahead."""
    monkeypatch.setattr(Producer, "PREPARE_AFTER_SECONDS", 0)
    docs = synthetic_manifests(SHAPE)
    producer = await _produced(docs, prepare_ahead=False)
    producer.prepare_ahead = True
    order: list[str] = []
    prepare = producer.translator.prepare
    change_came = threading.Event()

    def prepare_one(node_input):
        order.append(node_input.node)
        if len(order) == 1:  # the first step (in its worker thread) goes on once the change has come
            change_came.wait(10)
        return prepare(node_input)

    monkeypatch.setattr(producer.translator, "prepare", prepare_one)
    producer._prepare_later(sorted(producer.cache.nodes()))
    pending = asyncio.create_task(producer.prepare_pending())
    while not order:  # the first step is under way
        await asyncio.sleep(0.01)
    plan = producer._plan
    monkeypatch.setattr(producer, "_plan", lambda *a: order.append("change") or plan(*a))  # under the lock
    update = asyncio.create_task(producer.update(_index(docs + [extra_pod(SHAPE, 0, node=0)])))
    await asyncio.sleep(0)  # the update's first step: it waits for the producer's lock
    change_came.set()
    await asyncio.gather(pending, update)
    assert order.index("change") == 1, order  # one step, the change, then the others
    assert not producer.failures


async def test_a_full_builds_nodes_hold_one_endpoint_summary_per_distinct_endpoints(monkeypatch) -> None:
    """Nodes translated whole with the same shared endpoint sets hold the very same summary of
    what their check read of them: the next change compares it with its new one once for all of
    them, not once for each node's copy of the same names."""
    docs = synthetic_manifests(SHAPE)
    producer = await _produced(docs)
    endpoints = {id(producer.cache.get_snapshot(n).resources(ENDPOINT_TYPE)) for n in producer.cache.nodes()}
    summaries = {id(rest.endpoints_checked) for rest in producer._rest.values()}
    assert len(summaries) == len(endpoints) == 1
    compared = []
    same_summary = push._same_summary
    monkeypatch.setattr(push, "_same_summary", lambda s, checked, c: compared.append(id(checked)) or same_summary(s, checked, c))
    await _first_change_matches_a_fresh_build(producer, docs)
    assert len(compared) == len(producer.cache.nodes()) - 1 and len(set(compared)) == 1


async def test_shared_sets_keep_the_text_of_their_version_for_the_next_change(monkeypatch) -> None:
    """A group of resources serialized whole keeps the text its version hashes (the names and
    versions, sorted): the next change, which makes the group again with a member or two
    replaced, writes the new versions over it and never sorts the thousands of names again."""
    docs = synthetic_manifests(SHAPE)
    producer = await _produced(docs)
    sets = {id(part): part for n in producer.cache.nodes()
            for t in PUSH_ORDER for part in producer.cache.get_snapshot(n).resources(t).parts}
    assert sets and all("_names_text" in part.__dict__ for part in sets.values())
    for part in sets.values():
        assert snapshot.content_version(part.__dict__["_names_text"][0].encode()) == part.version
        assert part.version == snapshot.names_version(part.items.values())
    had_text = []
    replaced = snapshot.TypeResources.replaced

    def replacing(self, changed):
        had_text.append("_names_text" in self.__dict__)
        return replaced(self, changed)

    monkeypatch.setattr(snapshot.TypeResources, "replaced", replacing)
    await _first_change_matches_a_fresh_build(producer, docs)
    assert had_text and all(had_text)


def test_a_mesh_made_whole_holds_its_ports_positions() -> None:
    """The position of each service port, looked up by the next model's changed ports, is made
    with the ports (not on that change)."""
    mesh = MeshInput.of(_index(synthetic_manifests(SHAPE)))
    assert "_position" in mesh.__dict__
    assert mesh.__dict__["_position"] == {
        (p.service.namespace, p.service.name, p.port.port): i for i, p in enumerate(mesh.service_ports)
    }


@pytest.mark.parametrize("size", [0, 1, 5])
def test_names_text_says_where_each_version_is(size: int) -> None:
    resources = [snapshot.CachedResource(f"r{i * 7 % 11}-{i}", "t", f"{i:016x}", (b"",), 0) for i in range(size)]
    text, starts = snapshot._names_text(resources)
    assert snapshot.content_version(text.encode()) == snapshot.names_version(resources)
    assert {r.name: text[starts[r.name] : starts[r.name] + 16] for r in resources} == {r.name: r.version for r in resources}


def test_a_mesh_kept_through_a_change_that_left_it_equal_stands_for_the_latest_model() -> None:
    """A change that leaves the mesh as it was (a policy added) keeps the last mesh (node inputs
    compare by identity) and makes it the latest model's: the next change is looked at since that
    model, not since the one the mesh was first made from (the policy's nodes looked at again)."""
    docs = synthetic_manifests(SHAPE)
    translator = IncrementalTranslator(TranslateOptions(layout="linear"))
    first = MeshIndex.build(synthetic_cluster(docs))
    translator.inputs(first)
    mesh = translator._mesh
    cluster = synthetic_cluster(docs)
    policy = KIND_CONVERTERS["AuthorizationPolicy"](extra_policy(SHAPE, 0))
    second = MeshIndex.build(replace(cluster, authorization_policies=cluster.authorization_policies + (policy,)),
                             previous=first)
    translator.inputs(second)
    assert translator._mesh is mesh and mesh.index_generation == second.generation


async def test_a_node_gone_from_the_model_is_forgotten_by_idle_time(monkeypatch) -> None:
    """What the producer keeps of paying ahead (the nodes prepared, the nodes waiting) is of the
    model's nodes: a node gone (scaled in) leaves nothing behind, however many come and go."""
    monkeypatch.setattr(Producer, "PREPARE_AFTER_SECONDS", 0)
    docs = synthetic_manifests(SHAPE)
    producer = await _produced(docs)
    await producer._preparing
    gone = node_name(2)
    assert gone in producer.prepared
    kept = [d for d in docs if not (d["kind"] == "Node" and d["metadata"]["name"] == gone)
            and not (d["kind"] == "Pod" and d["spec"].get("nodeName") == gone)]
    report = await producer.update(_index(kept))
    assert gone in report.removed
    if producer._preparing is not None:
        await producer._preparing
    assert gone not in producer.prepared and gone not in producer._to_prepare


async def test_a_prepare_step_holds_the_lock_until_its_thread_is_done_even_when_cancelled() -> None:
    """Stopping (the producer closed, the task cancelled) while a node is being prepared in a
    worker thread does not let a change translate beside it: the lock is the thread's until
    the step ends; closing ends the idle work for good."""
    entered, release = threading.Event(), threading.Event()
    translator = IncrementalTranslator(TranslateOptions(layout="linear"))
    prepare = translator.prepare

    def slow_prepare(node_input):
        entered.set()
        release.wait(30)
        return prepare(node_input)

    translator.prepare = slow_prepare  # type: ignore[method-assign]
    producer = Producer(SnapshotCache(), translate=translator)
    producer.PREPARE_AFTER_SECONDS = 0
    await producer.update(_index(synthetic_manifests(SHAPE)))
    assert producer._preparing is not None
    assert await asyncio.to_thread(entered.wait, 30)
    closing = asyncio.create_task(producer.close())
    await asyncio.sleep(0.05)
    assert producer._lock.locked()  # the thread still prepares: no change may translate beside it
    release.set()
    await closing
    assert producer._preparing.done() and not producer._lock.locked()
    assert not producer._to_prepare
    producer._prepare_later(producer.cache.nodes())  # a closed producer pays nothing ahead
    assert producer._preparing.done()

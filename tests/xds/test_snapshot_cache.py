"""Snapshots version by content; the cache wakes a node's watchers only when its content changes."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER
from zpilot.xds.snapshot import Snapshot
from zpilot.xds.snapshot_cache import SnapshotCache


def snap(node: str, *clusters: str, timeout: int = 1) -> Snapshot:
    return Snapshot.build(node, {CLUSTER_TYPE: {n: Cluster(name=n, connect_timeout={"seconds": timeout})
                                                for n in clusters}})


def test_versions_follow_content_not_identity():
    a, b = snap("n", "x", "y"), snap("n", "y", "x")
    assert a.versions() == b.versions()
    assert a.resources(CLUSTER_TYPE).items["x"].version == b.resources(CLUSTER_TYPE).items["x"].version
    c = snap("n", "x", "y", timeout=2)
    assert c.version(CLUSTER_TYPE) != a.version(CLUSTER_TYPE)
    assert c.changed_types(a) == [CLUSTER_TYPE]
    assert a.changed_types(None) == list(PUSH_ORDER)
    assert a.version(LISTENER_TYPE) == snap("other").version(LISTENER_TYPE)  # empty types agree


def test_select_returns_existing_names_sorted():
    s = snap("n", "b", "a", "c")
    assert [r.name for r in s.resources(CLUSTER_TYPE).select(["c", "zz", "a"])] == ["a", "c"]
    assert [r.name for r in s.resources(CLUSTER_TYPE).select(None)] == ["a", "b", "c"]


def test_unserved_type_is_refused():
    with pytest.raises(ValueError, match="does not serve"):
        Snapshot.build("n", {"type.googleapis.com/envoy.config.route.v3.RouteConfiguration": {}})


async def test_watchers_wake_only_on_change_and_only_their_node():
    cache = SnapshotCache()
    wa, wb = cache.watch("a"), cache.watch("b")
    assert cache.set_snapshot(snap("a", "x")) == list(PUSH_ORDER)
    await asyncio.wait_for(wa.wait(), 1)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(wb.wait(), 0.05)
    first = cache.get_snapshot("a")
    assert cache.set_snapshot(snap("a", "x")) == []  # same content: no wake, old snapshot kept
    assert cache.get_snapshot("a") is first
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(wa.wait(), 0.05)
    assert cache.set_snapshot(snap("a", "x", "y")) == [CLUSTER_TYPE]
    assert cache.set_snapshot(snap("a", "x", "y", "z")) == [CLUSTER_TYPE]
    await asyncio.wait_for(wa.wait(), 1)  # two changes, one wake-up (coalesced)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(wa.wait(), 0.05)
    assert cache.clear_snapshot("a") and cache.get_snapshot("a") is None
    await asyncio.wait_for(wa.wait(), 1)
    wa.close()
    wb.close()
    assert cache.watcher_count() == 0


async def test_a_watch_calls_its_on_change_for_each_change_of_its_node_until_closed():
    """A stream is told of a change by a call (no task of its own waiting): once per stored change
    of its node, never for another node's, nothing once its watch is closed."""
    cache = SnapshotCache()
    calls: list[str] = []
    wa = cache.watch("a", lambda: calls.append("a"))
    wb = cache.watch("b", lambda: calls.append("b"))
    cache.set_snapshot(snap("a", "x"))
    assert calls == []  # told once the storing step is over (the producer stores a change at once)
    await asyncio.sleep(0)
    assert calls == ["a"]
    cache.set_snapshot(snap("a", "x"))  # same content: not a change
    await asyncio.sleep(0)
    assert calls == ["a"]
    cache.set_snapshot(snap("a", "x", "y"))
    cache.set_snapshot(snap("b", "x"))
    await asyncio.sleep(0)
    assert sorted(calls) == ["a", "a", "b"]
    wa.close()
    cache.set_snapshot(snap("a", "z"))
    assert cache.clear_snapshot("b")  # told at once
    await asyncio.sleep(0)
    assert sorted(calls) == ["a", "a", "b", "b"]
    wb.close()
    assert cache.watcher_count() == 0


async def test_a_watch_whose_on_change_fails_loses_no_other_watchers_wake_up(caplog):
    """The cache calls each watch's ``on_change`` in one loop over a change's nodes: one that raises
    is logged, and every other watcher, of its node and of the nodes after it, is still told."""
    cache = SnapshotCache()
    calls: list[str] = []

    def failing() -> None:
        raise RuntimeError("broken watcher")

    broken = cache.watch("a", failing)
    watches = [cache.watch("a", lambda: calls.append("a")), cache.watch("b", lambda: calls.append("b"))]
    cache.set_snapshot(snap("a", "x", "y"))  # most changed types: woken first
    cache.set_snapshot(snap("b", "x"))
    with caplog.at_level("ERROR", logger="zpilot.xds.snapshot_cache"):
        await asyncio.sleep(0)
    assert sorted(calls) == ["a", "b"]
    assert "broken watcher" in caplog.text
    assert broken._event.is_set()  # its own waiter is woken even so
    calls.clear()
    assert cache.clear_snapshot("a")  # told at once: the same
    assert calls == ["a"]
    for watch in (broken, *watches):
        watch.close()


async def test_a_change_wakes_the_nodes_with_most_changed_types_first():
    """Stored in one step (as the producer stores a change), the node whose clusters changed too is
    woken before the nodes whose endpoints alone changed, whatever the order they were set in: its
    responses are written one after the other, so it starts first."""
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    def with_endpoints(node: str, clusters: tuple[str, ...], port: int) -> Snapshot:
        return Snapshot.build(node, {
            CLUSTER_TYPE: {n: Cluster(name=n) for n in clusters},
            ENDPOINT_TYPE: {n: ClusterLoadAssignment(cluster_name=n, endpoints=[{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": port}}}}]}])
                for n in clusters},
        })

    cache = SnapshotCache()
    nodes = ["a", "b", "c"]
    for node in nodes:
        cache.set_snapshot(with_endpoints(node, ("x",), 80))
    await asyncio.sleep(0)  # their wake-up, with no watcher yet
    woken: list[str] = []

    async def wait(watch) -> None:
        await watch.wait()
        woken.append(watch.node)

    tasks = [asyncio.create_task(wait(cache.watch(node))) for node in nodes]
    await asyncio.sleep(0)
    assert cache.set_snapshot(with_endpoints("a", ("x",), 81)) == [ENDPOINT_TYPE]
    assert cache.set_snapshot(with_endpoints("b", ("x",), 81)) == [ENDPOINT_TYPE]
    assert cache.set_snapshot(with_endpoints("c", ("x", "y"), 81)) == [CLUSTER_TYPE, ENDPOINT_TYPE]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert woken == ["c", "a", "b"]


def test_empty_snapshot_is_unknown():
    s = Snapshot.empty("ghost")
    assert not s.known and all(not r.items for r in s.types.values())
    assert s.resources(ENDPOINT_TYPE).select(["x"]) == []


def test_decode_gives_back_what_was_cached():
    from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

    from zpilot.translators.resources import SecretRef
    from zpilot.xds.order import SECRET_TYPE

    secret = Secret(name="s")
    secret.tls_certificate.private_key.inline_bytes = b"key"
    clusters = {n: Cluster(name=n, connect_timeout={"seconds": 3}) for n in ("x", "y")}
    s = Snapshot.build("n", {CLUSTER_TYPE: clusters, SECRET_TYPE: {"s": secret}},
                       secret_refs={"s": SecretRef("s", "spiffe://td/ns/a/sa/b")})
    resources, secrets = s.decode()
    assert resources.node == "n" and resources.clusters == clusters and resources.listeners == {}
    assert secrets == {"s": secret}
    assert resources.secrets == {"s": SecretRef("s", "spiffe://td/ns/a/sa/b")}


def test_cached_entries_make_the_same_response_as_protobuf():
    from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse

    from zpilot.xds import wire

    s = snap("n", "b", "a", "c")
    resources = s.resources(CLUSTER_TYPE)
    data = wire.discovery_response_from_entries(version_info=resources.version, entries=resources.all_entries,
                                                type_url=CLUSTER_TYPE, nonce="7")
    expected = DiscoveryResponse(version_info=resources.version, type_url=CLUSTER_TYPE, nonce="7")
    for name in ("a", "b", "c"):
        expected.resources.add().Pack(Cluster(name=name, connect_timeout={"seconds": 1}))
    assert DiscoveryResponse.FromString(data) == expected
    some = b"".join(r.entry for r in resources.select(["c", "a"]))
    parsed = DiscoveryResponse.FromString(
        wire.discovery_response_from_entries(version_info="v", entries=some, type_url=CLUSTER_TYPE, nonce="8"))
    assert [r.value for r in parsed.resources] == [expected.resources[0].value, expected.resources[2].value]


def test_changes_since_names_the_changed_added_and_removed_resources_once_for_every_stream() -> None:
    """What a state-of-the-world EDS stream that had every assignment sends after a change
    (sotw.py): found once per pair of versions, whichever stream asks, never keeping the old one."""
    import gc
    import weakref

    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    from zpilot.xds.order import ENDPOINT_TYPE
    from zpilot.xds.snapshot import TypeResources

    def cla(name: str, port: int) -> ClusterLoadAssignment:
        out = ClusterLoadAssignment(cluster_name=name)
        out.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        return out

    before = TypeResources.of(ENDPOINT_TYPE, {"a": cla("a", 1), "b": cla("b", 2), "c": cla("c", 3)})
    after = TypeResources.of(ENDPOINT_TYPE, {"a": cla("a", 1), "b": cla("b", 22), "d": cla("d", 4)})
    changed, removed = after.changes_since(before)
    assert [r.name for r in changed] == ["b", "d"] and removed == ["c"]
    assert after.changes_since(before)[0] is changed  # kept: the next stream does not look again
    assert after.changes_since(after) == ([], [])
    gone = weakref.ref(before)
    del before
    gc.collect()
    assert gone() is None  # the answer kept does not keep the old resources alive


def test_a_set_with_some_resources_replaced_knows_its_changes_since_the_one_it_replaced() -> None:
    """``TypeResources.replaced`` tells ``changes_since`` what changed (the first stream to send a
    change does not look through thousands of assignments for it): exactly what looking finds,
    in the same order, whatever order the set's names are in."""
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    from zpilot.xds.snapshot import CachedResource, TypeResources

    def cla(name: str, port: int) -> CachedResource:
        out = ClusterLoadAssignment(cluster_name=name)
        out.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        return CachedResource.of(ENDPOINT_TYPE, name, out)

    for names in (["a", "b", "c", "d", "e"], ["svc-b", "svc-a", "svc-10", "z", "svc-1"]):
        whole = TypeResources.of_cached(ENDPOINT_TYPE, {n: cla(n, 1) for n in names})
        # two changed (given out of order), one the same content made again, one the very same object
        once = whole.replaced({names[3]: cla(names[3], 2), names[0]: cla(names[0], 3), names[1]: cla(names[1], 1),
                               names[2]: whole.items[names[2]]})
        twice = once.replaced({names[4]: cla(names[4], 9)})
        if names == sorted(names):  # as resource_store's sets: told, nothing to look through
            assert id(whole) in once.__dict__["_changes"] and id(once) in twice.__dict__["_changes"]
        for after, before in ((once, whole), (twice, once)):
            told = after.changes_since(before)
            del after.__dict__["_changes"]
            assert after.changes_since(before) == told  # found by looking: the same
        assert [r.name for r in once.changes_since(whole)[0]] == [n for n in names if n in (names[0], names[3])]


def test_a_whole_composed_of_sets_some_replaced_knows_its_changes_since_the_one_before() -> None:
    """A node's endpoints are composed of shared sets; after a change some of them are sets made by
    ``replaced``: the whole's changes are theirs, told, not looked for through every assignment, and
    they are what looking finds. Sets not made that way, or naming the same resource twice: looked for."""
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    from zpilot.xds.snapshot import CachedResource, TypeResources

    def cla(name: str, port: int) -> CachedResource:
        out = ClusterLoadAssignment(cluster_name=name)
        out.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        return CachedResource.of(ENDPOINT_TYPE, name, out)

    def looked(after: TypeResources, before: TypeResources) -> tuple[list, list]:
        fresh = TypeResources(after.type_url, after.items, after.version)  # not composed: looks
        return fresh.changes_since(before)

    a = TypeResources.of_cached(ENDPOINT_TYPE, {n: cla(n, 1) for n in ("a1", "a2", "a3")})
    b = TypeResources.of_cached(ENDPOINT_TYPE, {n: cla(n, 1) for n in ("b1", "b2")})
    c = TypeResources.of_cached(ENDPOINT_TYPE, {n: cla(n, 1) for n in ("c1",)})
    before = TypeResources.composed(ENDPOINT_TYPE, [a, b, c], {})
    after = TypeResources.composed(ENDPOINT_TYPE, [a.replaced({"a2": cla("a2", 2)}), b,
                                                   c.replaced({"c1": cla("c1", 3)})], {})
    assert after._told_changes(before) is not None
    changed, removed = after.changes_since(before)
    assert [r.name for r in changed] == ["a2", "c1"] and removed == []
    assert (changed, removed) == looked(after, before)
    # a set made otherwise (a name added): looked for, the same answer as ever
    grown = TypeResources.of_cached(ENDPOINT_TYPE, {**b.items, "b3": cla("b3", 1)})
    other = TypeResources.composed(ENDPOINT_TYPE, [a, grown, c], {})
    assert other._told_changes(before) is None
    assert [r.name for r in other.changes_since(before)[0]] == ["b3"]
    # the same name in two sets (the later one's in the whole): looked for
    twice = TypeResources.of_cached(ENDPOINT_TYPE, {"a2": cla("a2", 7)})
    overlap_before = TypeResources.composed(ENDPOINT_TYPE, [a, twice], {})
    overlap_after = TypeResources.composed(ENDPOINT_TYPE, [a.replaced({"a2": cla("a2", 2)}), twice], {})
    assert overlap_after._told_changes(overlap_before) is None
    assert overlap_after.changes_since(overlap_before) == ([], [])  # a2 is still twice's in both


def test_a_whole_of_sets_and_the_nodes_own_knows_its_changes_since_the_one_before() -> None:
    """A node's clusters are composed of shared sets and a few of its own (a pod's own node gets
    its new identity's cluster): the whole's changes are the sets' told ones and the own ones'
    compared, not looked for through every cluster (that node's stream, the first to send a pod
    change, went through 2,100 of them before any other stream sent), and are what looking finds."""
    from zpilot.xds.snapshot import CachedResource, TypeResources

    def cluster(name: str, timeout: int) -> CachedResource:
        return CachedResource.of(CLUSTER_TYPE, name, Cluster(name=name, connect_timeout={"seconds": timeout}))

    def looked(after: TypeResources, before: TypeResources) -> tuple[list, list]:
        fresh = TypeResources(after.type_url, after.items, after.version)  # not composed: looks
        return fresh.changes_since(before)

    a = TypeResources.of_cached(CLUSTER_TYPE, {n: cluster(n, 1) for n in ("a1", "a2", "a3")})
    b = TypeResources.of_cached(CLUSTER_TYPE, {n: cluster(n, 1) for n in ("b1", "b2")})
    own = {n: cluster(n, 1) for n in ("tunnel-x", "tunnel-y")}
    before = TypeResources.composed(CLUSTER_TYPE, [a, b], own)
    steps = [
        ("an own one added", TypeResources.composed(CLUSTER_TYPE, [a, b], {**own, "tunnel-z": cluster("tunnel-z", 1)}),
         ["tunnel-z"], []),
        ("an own one removed", TypeResources.composed(CLUSTER_TYPE, [a, b], {"tunnel-y": own["tunnel-y"]}),
         [], ["tunnel-x"]),
        ("an own one changed, one the same made again, a set replaced",
         TypeResources.composed(CLUSTER_TYPE, [a, b.replaced({"b2": cluster("b2", 5)})],
                                {"tunnel-x": cluster("tunnel-x", 2), "tunnel-y": cluster("tunnel-y", 1)}),
         ["b2", "tunnel-x"], []),
    ]
    for what, after, changed, removed in steps:
        assert after._told_changes(before) is not None, what
        told = after.changes_since(before)
        assert sorted(r.name for r in told[0]) == changed and told[1] == removed, what
        assert (sorted(told[0], key=lambda r: r.name), told[1]) == (
            sorted(looked(after, before)[0], key=lambda r: r.name), looked(after, before)[1]), what
    # an own name that a set now holds too (the set's in the whole): looked for, as ever
    shadowing = TypeResources.composed(CLUSTER_TYPE, [a, b], {"a1": cluster("a1", 9)})
    assert shadowing._told_changes(before) is None


def test_a_set_with_some_resources_replaced_has_the_version_of_one_made_whole() -> None:
    """``TypeResources.replaced`` (a shared set after a change of one or two of its thousands)
    writes the versions that changed over the text the set's version was hashed from: the very
    version :func:`names_version` gives the same resources, again after a replacement of that."""
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    from zpilot.xds.snapshot import CachedResource, TypeResources, names_version

    def cla(name: str, port: int) -> CachedResource:
        out = ClusterLoadAssignment(cluster_name=name)
        out.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        return CachedResource.of(ENDPOINT_TYPE, name, out)

    names = ["svc-b", "svc-a", "svc-10", "svc-1", "é-unicode", "z"]
    whole = TypeResources.of_cached(ENDPOINT_TYPE, {n: cla(n, 1) for n in names})
    once = whole.replaced({"svc-10": cla("svc-10", 2), "z": cla("z", 3)})
    twice = once.replaced({"svc-b": cla("svc-b", 4), "svc-10": cla("svc-10", 5)})
    for made in (once, twice):
        assert made.version == names_version(made.items.values()) == TypeResources.of_cached(
            ENDPOINT_TYPE, dict(made.items)).version
        assert list(made.items) == names  # in the same order
    assert twice.items["svc-10"].version == cla("svc-10", 5).version and twice.items["z"] is once.items["z"]
    assert whole.replaced({}).version == whole.version
    # a name it lacks, or a resource named otherwise: made whole
    for odd in ({"new": cla("new", 1)}, {"z": cla("y", 1)}):
        made = whole.replaced(odd)
        assert made.version == names_version(made.items.values()) and set(odd) <= set(made.items)


def test_a_snapshot_with_one_type_replaced_is_the_old_one_but_for_it_and_the_fields_given():
    from dataclasses import replace
    from types import MappingProxyType

    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    from zpilot.xds.snapshot import TypeResources

    old = snap("n", "x")
    new = TypeResources.of(ENDPOINT_TYPE, {"x": ClusterLoadAssignment(cluster_name="x")})
    made = old.with_type(new, changed_at=old.changed_at + 5, generation_seconds=0.25)
    types = dict(old.types, **{ENDPOINT_TYPE: new})
    assert made == replace(old, types=MappingProxyType(types), changed_at=old.changed_at + 5, generation_seconds=0.25)
    assert list(made.types) == list(old.types) and all(made.types[t] is old.types[t] for t in PUSH_ORDER if t != ENDPOINT_TYPE)
    assert old.resources(ENDPOINT_TYPE).items == {} and made.resources(ENDPOINT_TYPE) is new  # the old one untouched
    with pytest.raises(TypeError):
        made.types[CLUSTER_TYPE] = new  # type: ignore[index]  # read-only, as every snapshot's
    assert old.with_type(new, changed_at=1.0).generation_seconds == old.generation_seconds
    with pytest.raises(TypeError, match="colour"):
        old.with_type(new, changed_at=1.0, colour=1.0)
    # the fields it sets itself are not taken among the others (types= replaced every type, silently)
    with pytest.raises(TypeError, match="with_type sets types itself"):
        old.with_type(new, 1.0, types=MappingProxyType({}))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="changed_at"):
        old.with_type(new, 1.0, **{"changed_at": 2.0})  # type: ignore[misc]

"""Shared bytes: a resource many nodes have is serialized once and held once, and a model change
leaves untouched what it does not reach (the producer with the translator ``zpilot serve`` uses)."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from zpilot import contract
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, extra_pod, node_name, synthetic_cluster, synthetic_manifests
from zpilot.translators import IncrementalTranslator, TranslateOptions, known_layouts
from zpilot.translators import names
from zpilot.translators.context import ResourceSet
from zpilot.translators.fragments import Fragment
from zpilot.translators.incremental import EndpointSets
from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE
from zpilot.xds.push import Producer
from zpilot.xds.resource_store import ResourceStore, total_bytes
from zpilot.xds.snapshot_cache import SnapshotCache

SHAPE = Shape(nodes=3, pods=12, services=4, namespaces=1, ports_per_service=2, service_accounts_per_namespace=2)


def _index(docs) -> MeshIndex:
    return MeshIndex.build(synthetic_cluster(docs))


async def _produced(layout: str, docs) -> tuple[Producer, SnapshotCache]:
    cache = SnapshotCache()
    producer = Producer(cache, translate=IncrementalTranslator(TranslateOptions(layout=layout)))
    await producer.update(_index(docs))
    return producer, cache


@pytest.mark.parametrize("layout", known_layouts())
async def test_two_nodes_snapshots_hold_the_same_bytes_of_a_shared_cluster(layout: str) -> None:
    producer, cache = await _produced(layout, synthetic_manifests(SHAPE))
    a, b = (cache.get_snapshot(node_name(i)).resources(CLUSTER_TYPE) for i in (0, 1))
    # equal content on both (an identity's tunnel clusters name the secret of its first pod on the node: not those)
    shared = sorted(n for n in set(a.items) & set(b.items) if a.items[n].version == b.items[n].version)
    assert names.PASSTHROUGH_CLUSTER in shared and [n for n in shared if "svc-" in n]
    for name in shared:
        assert a.items[name] is b.items[name]
        assert a.items[name].entry is b.items[name].entry


@pytest.mark.parametrize("layout", known_layouts())
async def test_the_control_plane_holds_one_copy_of_each_distinct_resource(layout: str) -> None:
    producer, cache = await _produced(layout, synthetic_manifests(SHAPE))
    served = [r for node in cache.nodes() for t in cache.get_snapshot(node).types.values() for r in t.items.values()]
    distinct_content = {(r.type_url, r.name, r.version) for r in served}
    distinct_objects = {id(r.entry) for r in served}
    assert len(distinct_objects) == len(distinct_content) < len(served)
    assert total_bytes(served) == sum(r.size for r in producer.store.held() if id(r.entry) in distinct_objects)


@pytest.mark.parametrize("layout", known_layouts())
async def test_a_pod_added_on_one_node_leaves_the_others_listeners_and_clusters_untouched(layout: str) -> None:
    docs = synthetic_manifests(SHAPE)
    producer, cache = await _produced(layout, docs)
    before = {node: cache.get_snapshot(node) for node in cache.nodes()}
    serialized = producer.store.serialized
    report = await producer.update(_index(docs + [extra_pod(SHAPE, 0, node=0)]))
    other = node_name(1)
    after = cache.get_snapshot(other)
    assert CLUSTER_TYPE not in report.changed[other]  # no cluster of its changed
    assert after.resources(CLUSTER_TYPE).items == before[other].resources(CLUSTER_TYPE).items
    for name in (contract.INBOUND_LISTENER, contract.INBOUND_PLAINTEXT_LISTENER):
        assert after.resources(LISTENER_TYPE).items[name] is before[other].resources(LISTENER_TYPE).items[name]
    # what was serialized again: the listeners that list the pod, the new pod's service endpoints
    # (per node in the article's layout: its tunnel port differs by node), the new pod's node's own
    again = producer.store.serialized - serialized
    assert 0 < again < sum(len(t.items) for t in after.types.values())
    eds = {n for n, r in after.resources(ENDPOINT_TYPE).items.items()
           if r is not before[other].resources(ENDPOINT_TYPE).items.get(n)}
    if layout == "linear":  # and node 0's pod endpoints; no listener of the other node lists the pod
        assert names.pods_on_node(node_name(0)) in eds
        eds.discard(names.pods_on_node(node_name(0)))
        assert LISTENER_TYPE not in report.changed[other]
    assert eds and all("svc-0." in n for n in eds)


async def test_a_change_no_node_can_see_translates_one_node_and_pushes_none() -> None:
    docs = synthetic_manifests(SHAPE)
    producer, cache = await _produced("article", docs)
    pod = next(d for d in docs if d["kind"] == "Pod" and d["spec"]["nodeName"] == node_name(2))
    pod["metadata"]["labels"] = {**pod["metadata"]["labels"], "version": "v2"}
    report = await producer.update(_index(docs))
    assert report.translated == [node_name(2)] and report.changed == {}


def test_equal_resources_built_apart_are_interned() -> None:
    store = ResourceStore()
    one = store.resource(CLUSTER_TYPE, "c", Cluster(name="c", type=Cluster.STATIC))
    two = store.resource(CLUSTER_TYPE, "c", Cluster(name="c", type=Cluster.STATIC))
    other = store.resource(CLUSTER_TYPE, "c", Cluster(name="c", type=Cluster.EDS))
    assert one is two and other is not one and store.serialized == 3
    assert len(store.held()) == 2
    del one, two
    assert [r.version for r in store.held()] == [other.version]  # nothing holds the first: let go


async def test_a_listener_holds_the_pieces_every_node_shares_as_one_object(monkeypatch) -> None:
    """In the linear layout every node's outbound listener contains the same service chains and
    destination map: each node's cached listener keeps only its own bytes around those pieces,
    and whatever is sent from it (SotW, delta, the debug dump) is the listener itself."""
    from envoy.config.listener.v3.listener_pb2 import Listener
    from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse

    from zpilot.translators import translate_node
    from zpilot.xds import snapshot, wire

    monkeypatch.setattr(snapshot, "MIN_SHARED_CHUNK", 64)  # this small cluster's pieces are small
    docs = synthetic_manifests(SHAPE)
    producer, cache = await _produced("linear", docs)
    a, b = (cache.get_snapshot(node_name(i)).resources(LISTENER_TYPE) for i in (0, 1))
    mine, theirs = a.items[contract.OUTBOUND_LISTENER], b.items[contract.OUTBOUND_LISTENER]
    # the service chains, the pod-IP chains and the destination map, between the node's own bytes
    shared = [part for part in mine.parts if any(part is other for other in theirs.parts)]
    assert len(shared) == 3 and len(mine.parts) == len(theirs.parts) == 7  # and the response entry's header
    assert mine.version != theirs.version  # each node's own gate differs
    expected = translate_node(_index(docs), node_name(0), TranslateOptions(layout="linear"))
    want = expected.listeners[contract.OUTBOUND_LISTENER]

    sotw = DiscoveryResponse.FromString(
        wire.discovery_response_from_entries(version_info="v", entries=a.all_entries, type_url=LISTENER_TYPE, nonce="1"))
    got = {Listener.FromString(r.value).name: Listener.FromString(r.value) for r in sotw.resources}
    assert got[contract.OUTBOUND_LISTENER] == want
    delta = DeltaDiscoveryResponse.FromString(wire.delta_discovery_response_from_entries(
        system_version_info="v", entries=b"".join(mine.delta_parts), removed=[], type_url=LISTENER_TYPE, nonce="2"))
    assert delta.resources[0].version == mine.version
    assert Listener.FromString(delta.resources[0].resource.value) == want
    resources, _ = cache.get_snapshot(node_name(0)).decode()
    assert resources.listeners[contract.OUTBOUND_LISTENER] == want
    # held once: the shared parts count once however many nodes hold them
    served = [r for n in cache.nodes() for t in cache.get_snapshot(n).types.values() for r in t.items.values()]
    assert total_bytes(served) < sum(r.size for r in served)


def _snapshot_state(cache: SnapshotCache) -> dict:
    """Every node's served bytes and versions, by type and name (what Envoy would be sent)."""
    return {
        node: {t: (r.version, {n: (c.version, c.entry) for n, c in r.items.items()}) for t, r in snap.types.items()}
        for node in cache.nodes()
        if (snap := cache.get_snapshot(node)) is not None
    }


def _unready(pod: dict) -> None:
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]


def _terminating(pod: dict) -> None:
    pod["metadata"]["deletionTimestamp"] = "2026-12-02T06:00:00Z"


@pytest.mark.parametrize("change", [_unready, _terminating], ids=["unready", "terminating"])
async def test_a_pod_made_unready_remakes_every_nodes_endpoints_alone_as_a_full_build_would(change) -> None:
    """The linear layout keeps its endpoints apart (layout.LateEndpoints): a pod that turns
    unready (or terminating) changes only the endpoints of every node, its own too (a node's other
    config never reads its pods' readiness: ``incremental._ENDPOINT_ONLY_FIELDS``), which are made
    without translating any node, to exactly what producing the new model from nothing gives."""
    docs = synthetic_manifests(SHAPE)
    producer, cache = await _produced("linear", docs)
    before = {node: cache.get_snapshot(node) for node in cache.nodes()}
    pod = next(d for d in docs if d["kind"] == "Pod" and d["spec"]["nodeName"] == node_name(0))
    change(pod)
    report = await producer.update(_index(docs))
    assert report.translated == [] and report.endpoints_only == cache.nodes()
    for node in cache.nodes():
        assert report.changed[node] == [ENDPOINT_TYPE]
        after = cache.get_snapshot(node)
        for type_url in (CLUSTER_TYPE, LISTENER_TYPE):
            assert after.resources(type_url) is before[node].resources(type_url)
    _fresh, fresh_cache = await _produced("linear", docs)
    assert _snapshot_state(cache) == _snapshot_state(fresh_cache)
    # and the node's next change, translated whole from the input it holds now, is a full build's too
    docs = docs + [extra_pod(SHAPE, 0, node=0)]
    report = await producer.update(_index(docs))
    assert report.translated == [node_name(0)]
    _fresh, fresh_cache = await _produced("linear", docs)
    assert _snapshot_state(cache) == _snapshot_state(fresh_cache)


async def test_a_pod_added_inside_its_nodes_cidr_remakes_the_other_nodes_endpoints_alone() -> None:
    """A pod added on node 0, behind an existing service, inside node 0's pod CIDR: no other node's
    listener or cluster reads it (translators/pod_select.py), so the others are not translated;
    their endpoints change in node 0's pod endpoints and the service's alone, as a full build gives."""
    docs = synthetic_manifests(SHAPE)
    producer, cache = await _produced("linear", docs)
    before = {node: cache.get_snapshot(node) for node in cache.nodes()}
    docs = docs + [extra_pod(SHAPE, 0, node=0)]
    report = await producer.update(_index(docs))
    others = sorted(n for n in cache.nodes() if n != node_name(0))
    assert report.translated == [node_name(0)] and report.endpoints_only == others
    for node in others:
        after = cache.get_snapshot(node)
        for type_url in (CLUSTER_TYPE, LISTENER_TYPE):
            assert after.resources(type_url) is before[node].resources(type_url)
        eds = {n for n, r in after.resources(ENDPOINT_TYPE).items.items()
               if r.entry != before[node].resources(ENDPOINT_TYPE).items[n].entry}
        assert names.pods_on_node(node_name(0)) in eds and all("svc-0." in n for n in eds - {names.pods_on_node(node_name(0))})
    _fresh, fresh_cache = await _produced("linear", docs)
    assert _snapshot_state(cache) == _snapshot_state(fresh_cache)


async def test_endpoints_that_would_be_refused_keep_the_node_on_its_last_good_config() -> None:
    """A node whose endpoints alone changed is checked as a translated one is: endpoints naming an
    internal listener the node lacks are refused before sending, and its snapshot stays."""
    docs = synthetic_manifests(SHAPE)
    producer, cache = await _produced("linear", docs)
    node = node_name(1)
    held = cache.get_snapshot(node)
    translator = producer.translator
    made = translator.endpoints

    def endpoints_to_nowhere(node_input):
        good = made(node_input)
        assignments = {}
        for name, cla in good.sets[0].resources.items():
            broken = ClusterLoadAssignment()
            broken.CopyFrom(cla)
            for lb in broken.endpoints[0].lb_endpoints[:1]:
                lb.endpoint.address.envoy_internal_address.server_listener_name = "no_such_listener"
            assignments[name] = broken
        return EndpointSets((ResourceSet(ENDPOINT_TYPE, Fragment(("broken", node_input.node), assignments)),), ())

    translator.endpoints = endpoints_to_nowhere
    pod = next(d for d in docs if d["kind"] == "Pod" and d["spec"]["nodeName"] == node_name(0))
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    report = await producer.update(_index(docs))
    assert node in report.endpoints_only and "no_such_listener" in report.failed[node]
    assert cache.get_snapshot(node) is held


async def test_a_changes_endpoint_names_are_the_last_ones_when_no_name_changed() -> None:
    """Pods added to a service one by one remake the other nodes' endpoints from the last shared
    sets, a member or two replaced: the names of their sets together are the very set the last
    change had (``ResourceStore.names``), equal to the items' names, so the consistency summary
    compares by identity and no union of thousands of names is made again."""
    from dataclasses import replace

    from zpilot.kube.convert_policy import KIND_CONVERTERS

    cluster = synthetic_cluster(synthetic_manifests(SHAPE))
    pods = tuple(KIND_CONVERTERS["Pod"](extra_pod(SHAPE, i, node=0)) for i in range(3))
    producer = Producer(SnapshotCache(), translate=IncrementalTranslator(TranslateOptions(layout="linear")))
    index = MeshIndex.build(cluster)
    await producer.update(index)
    seen = []
    for added in range(1, len(pods) + 1):  # (another model each time: no set is one the memo still holds)
        index = MeshIndex.build(replace(cluster, workloads=cluster.workloads + pods[:added]), previous=index)
        report = await producer.update(index)
        assert report.endpoints_only and not report.failed
        endpoints = producer.cache.get_snapshot(report.endpoints_only[0]).types[ENDPOINT_TYPE]
        assert len(endpoints.parts) > 1 and not endpoints.own  # (what is looked at: several shared sets)
        names_of = producer.store.names(endpoints)
        assert names_of == frozenset(endpoints.items)
        seen.append(names_of)
    assert seen[0] is seen[1] is seen[2]

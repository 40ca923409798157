"""The linear layout's pod-IP destinations by node pod CIDR (pod_select.py): a pod coming or going
on node A changes, of another node's config, only A's ClusterLoadAssignment; its pod IP is in no
listener and no cluster; pods outside their node's CIDR ("strays") keep per-identity IP ranges."""

from __future__ import annotations

import copy

from zpilot.explain.envoy_config import Connection, select_chain
from zpilot.model.problems import Problems
from zpilot.kube.store import ObjectStore
from zpilot.kube.convert import CONVERTERS
from zpilot.model import MeshIndex
from zpilot.synthetic import Shape, extra_pod, node_name, synthetic_manifests
from zpilot.translators import TranslateOptions, names, translate_node
from zpilot.translators.context import NodeView
from zpilot.translators.fragments import Fragments
from zpilot.translators.inputs import MeshInput, PodRoutes, node_inputs
from zpilot.translators.node import translate_view
from zpilot.translators import pod_select

SHAPE = Shape(nodes=3, pods=12, services=3)
LINEAR = TranslateOptions(layout="linear")


def index_of(docs: list[dict]) -> MeshIndex:
    store = ObjectStore()
    for doc in docs:
        store.put(CONVERTERS[doc["kind"]](doc))
    return MeshIndex.build(store.snapshot(), Problems())


def serialized(resources) -> dict[tuple[str, str], bytes]:
    out = {}
    for kind, by_name in (("listener", resources.listeners), ("cluster", resources.clusters), ("endpoints", resources.endpoints)):
        for name, message in by_name.items():
            out[(kind, name)] = message.SerializeToString(deterministic=True)
    return out


def changed(before: dict, after: dict) -> set[tuple[str, str]]:
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


def unserviced(doc: dict) -> dict:
    """The pod behind no service (its ``app`` label matches none)."""
    doc = copy.deepcopy(doc)
    doc["metadata"]["labels"] = {"app": "none"}
    return doc


def test_a_pod_added_on_one_node_changes_only_its_nodes_endpoints_elsewhere() -> None:
    docs = synthetic_manifests(SHAPE)
    new = unserviced(extra_pod(SHAPE, 0, node=0))
    before = index_of(docs)
    after = index_of([*docs, new])
    observer = node_name(1)
    assert changed(serialized(translate_node(before, observer, LINEAR)), serialized(translate_node(after, observer, LINEAR))) == {
        ("endpoints", names.pods_on_node(node_name(0)))
    }
    # behind a service: the endpoints of that service's ports too, nothing else
    served = extra_pod(SHAPE, 0, node=0)
    after = index_of([*docs, served])
    service_changes = changed(serialized(translate_node(before, observer, LINEAR)), serialized(translate_node(after, observer, LINEAR)))
    service, namespace = served["metadata"]["labels"]["app"], served["metadata"]["namespace"]
    ports = {("endpoints", f"tcp-{p}_{service}.{namespace}.svc.cluster.local") for p in range(SHAPE.ports_per_service)}
    assert service_changes == {("endpoints", names.pods_on_node(node_name(0)))} | ports


def test_a_node_without_meshed_pods_has_its_chain_so_its_first_pod_changes_no_listener() -> None:
    docs = [d for d in synthetic_manifests(SHAPE) if not (d["kind"] == "Pod" and d["spec"]["nodeName"] == node_name(2))]
    before = index_of(docs)
    observer = translate_node(before, node_name(1), LINEAR)
    outbound = observer.listeners["ztunnel_outbound"]
    assert names.pods_on_node(node_name(2)) in {c.name for c in outbound.filter_chains}
    first = unserviced(extra_pod(SHAPE, 0, node=2))
    after = translate_node(index_of([*docs, first]), node_name(1), LINEAR)
    assert changed(serialized(observer), serialized(after)) == {("endpoints", names.pods_on_node(node_name(2)))}


def test_in_cidr_pod_ips_are_in_no_listener_and_no_cluster() -> None:
    index = index_of(synthetic_manifests(SHAPE))
    resources = translate_node(index, node_name(0), LINEAR)
    remote = [w for w in index.meshed_workloads() if w.node_name != node_name(0)]
    blobs = [m.SerializeToString() for m in (*resources.listeners.values(), *resources.clusters.values())]
    for pod in remote:
        assert not any(pod.ip.encode() in blob for blob in blobs), pod.ip
        cla = resources.endpoints[names.pods_on_node(pod.node_name)]
        assert pod.ip in {lb.endpoint.address.envoy_internal_address.endpoint_id for g in cla.endpoints for lb in g.lb_endpoints}
    assert not any(name.startswith("outbound_pod_internal_to_") for name in resources.clusters)


def test_a_stray_keeps_its_own_range_inside_another_nodes_cidr() -> None:
    """A pod outside its node's CIDR, its address in node 1's: found by its own /32 (the longest
    prefix), pinned by its identity's chain; node 1's pods are found by node 1's CIDR."""
    docs = synthetic_manifests(SHAPE)
    stray = unserviced(extra_pod(SHAPE, 0, node=0))
    stray["status"]["podIP"] = "10.2.200.9"  # node-1's CIDR is 10.2.0.0/16
    index = index_of([*docs, stray])
    routes = MeshInput.of(index).pod_routes
    assert [ip for ip, *_ in routes.strays] == ["10.2.200.9"]
    resources = translate_node(index, node_name(2), LINEAR)
    outbound = resources.listeners["ztunnel_outbound"]
    source = next(w.ip for w in index.meshed_workloads_on(node_name(2)))
    identity = f"spiffe://cluster.local/ns/{stray['metadata']['namespace']}/sa/{stray['spec']['serviceAccountName']}"
    chain, _ = select_chain(outbound, Connection(source, "10.2.200.9", 80))
    assert chain.name == names.pod_direct_chain(identity)
    assert names.pod_internal_cluster(identity) in resources.clusters
    chain, _ = select_chain(outbound, Connection(source, "10.2.200.10", 80))
    assert chain.name == names.pods_on_node(node_name(1))
    node_pods = resources.endpoints[names.pods_on_node(node_name(0))]
    assert "10.2.200.9" not in str(node_pods)


def test_overlapping_cidrs_are_not_used() -> None:
    """Two nodes claiming overlapping CIDRs: neither's is matched (which node's endpoints would a
    destination there be among?), their pods are strays; a third node's CIDR is used."""
    docs = synthetic_manifests(SHAPE)
    for doc in docs:
        if doc["kind"] == "Node" and doc["metadata"]["name"] == node_name(1):
            doc["spec"]["podCIDR"] = "10.1.128.0/17"  # inside node-0's 10.1.0.0/16
    routes = MeshInput.of(index_of(docs)).pod_routes
    assert [n.node for n in routes.nodes] == [node_name(2)]
    assert {ip for ip, *_ in routes.strays} == {
        w.ip for w in index_of(docs).meshed_workloads() if w.node_name in (node_name(0), node_name(1))
    }


def test_a_pod_add_rebuilds_only_its_nodes_endpoints() -> None:
    """With the memo of the last model (as the producer keeps it), another node's translation after
    a pod add on node 0 builds one ClusterLoadAssignment: node 0's."""
    docs = synthetic_manifests(SHAPE)
    before, after = index_of(docs), index_of([*docs, unserviced(extra_pod(SHAPE, 0, node=0))])
    built: list[str] = []

    class Counting(Fragments):
        def build(self, builder, args, kwargs):
            if builder is pod_select.node_endpoints:
                built.append(args[0].node)
            return super().build(builder, args, kwargs)

    fragments = Counting()
    mesh = MeshInput.of(before)
    first = translate_view(NodeView.for_input(node_inputs(before, [node_name(1)], LINEAR, mesh)[node_name(1)], fragments))
    assert sorted(built) == [node_name(n) for n in range(3)]
    built.clear()
    mesh_after = MeshInput.of(after, previous=mesh)
    assert mesh_after.pod_routes.nodes[1] is mesh.pod_routes.nodes[1]  # kept: node 1's pods are the same
    second = translate_view(NodeView.for_input(node_inputs(after, [node_name(1)], LINEAR, mesh_after)[node_name(1)], fragments))
    assert built == [node_name(0)]
    assert first is not second


def test_pod_routes_compare_by_content() -> None:
    facts = (("10.1.0.2", "node-0", "ns", "sa"),)
    cidrs = (("node-0", ("10.1.0.0/16",)),)
    assert PodRoutes.of(facts, cidrs) == PodRoutes.of(facts, cidrs)
    assert hash(PodRoutes.of(facts, cidrs)) == hash(PodRoutes.of(facts, cidrs))
    assert PodRoutes.of(facts, cidrs).nodes[0].pods == (("10.1.0.2", "ns", "sa"),)
    assert PodRoutes.of(facts, ()).strays == (("10.1.0.2", "ns", "sa"),)

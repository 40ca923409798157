"""The generated manifests describe exactly the world the packets cross: every pod the model
knows sits at its IP in its own namespace, behind the node the model puts it on."""

from __future__ import annotations

import json

import pytest

from zpilot.kube.manifests import load_manifests
from zpilot.model.index import MeshIndex
from zpilot.world.netns import run

from ..layouts import LAYOUTS

#: Each layout's world (they are built anyway, for the scenarios): the ztunnels' config differs, the
#: namespaces it must describe do not, and this checks that they do not.
pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow,
              pytest.mark.parametrize("world", LAYOUTS, indirect=True)]


def _addresses(netns: str) -> set[str]:
    links = json.loads(run(["ip", "-n", netns, "-j", "addr", "show"]))
    return {a["local"] for link in links for a in link.get("addr_info", []) if a.get("family") == "inet"}


def test_manifests_match_the_namespaces(world):
    loaded = load_manifests(world.manifests)
    assert [p for p in loaded.problems if p.severity.value == "error"] == []
    index = MeshIndex.build(loaded.cluster, loaded.problems)
    by_name = {n.name: n for n in world.spec.nodes}
    assert set(index.nodes) == set(by_name)
    for node in world.spec.nodes:
        assert node.internal_ip in _addresses(world.node_ns(node))
        assert index.nodes[node.name].internal_ip == node.internal_ip
    workloads = index.cluster.workloads
    assert {w.name for w in workloads} == {p.name for p in world.spec.pods}
    for w in workloads:
        pod = world.spec.pod(w.name)
        assert w.ip in _addresses(world.pod_ns(pod)), f"{w.ref} is not at {w.ip}"
        node = by_name[w.node_name]
        # the main table (the CNI plugin's); policy routing would send meshed pods into istioin
        route = run(["ip", "-n", world.node_ns(node), "route", "show", "table", "main", f"{w.ip}/32"]).split()
        assert route and route[route.index("dev") + 1] == pod.veth, f"{w.ref} is not behind node {node.key}"
    meshed = {w.name for w in index.meshed_workloads()}
    assert meshed == {"sleep-5644bdc767-2dfg7", "details-v1-6997d94bb9-4jssp", "productpage-v1-5586c4d4ff-qxz9f"}
    for node in world.spec.nodes:
        assert world.meshed_ips(node.key) == {w.ip for w in index.meshed_workloads_on(node.name)}
        ztunnel = index.ztunnel_on(node.name)
        assert ztunnel is not None and ztunnel.ip == world.ztunnels[node.key].pod.ip

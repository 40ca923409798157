"""The CNI agent reading the cluster through the API server: its own node only, with the serve's credential flags."""

from __future__ import annotations

import asyncio
import time

import pytest

from zpilot.cli import build_parser, main
from zpilot.cni.cli import _source
from zpilot.kube.api_resources import node_agent_watches
from zpilot.kube.credentials import Credentials
from zpilot.kube.source import first_model
from zpilot.kube.watch import ApiWatchSource

from ..kube.apiserver import ApiServer, seed_article
from ..kube.apiserver.objects import make_pod
from .kernel_state import ipset_list
from .topology import NODE_A

NODE_B = "gke-jimmy-cluster-default-pool-d5041909-c1da"


def test_the_agents_flags_name_a_source_of_its_own_node(apiserver: ApiServer):  # noqa: F811
    """As the commands run: synchronously, the credentials checked before anything starts."""
    seed_article(apiserver)
    args = build_parser().parse_args(["cni", "status", "--node", NODE_A, "--kubeconfig",
                                      str(apiserver.kubeconfig_path), "--context", "test-apiserver"])
    source = _source(args)
    assert isinstance(source, ApiWatchSource)
    assert source.watches == node_agent_watches(NODE_A)
    assert source.credentials == Credentials(kubeconfig=apiserver.kubeconfig_path, context="test-apiserver")
    event = asyncio.run(first_model(source))
    assert set(event.index.nodes) == {NODE_A}
    assert {w.node_name for w in event.index.cluster.workloads} == {NODE_A}


def test_manifests_and_a_kubeconfig_do_not_go_together(capsys, tmp_path):
    code = main(["cni", "status", "--node", NODE_A, "--manifests", str(tmp_path), "--kubeconfig", str(tmp_path / "k")])
    assert code == 2 and "without --kubeconfig" in capsys.readouterr().err


@pytest.mark.root
@pytest.mark.netns
async def test_the_agent_follows_its_nodes_pods_through_the_api(make_agent, topology, apiserver):  # noqa: F811
    seed_article(apiserver)
    source = ApiWatchSource(Credentials(kubeconfig=apiserver.kubeconfig_path, environ={}),
                            node_agent_watches(NODE_A), quiet=0.02)
    agent = make_agent(source=source)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop, resync=30.0))

    async def until(predicate, what: str) -> None:
        deadline = time.monotonic() + 15
        while not await asyncio.to_thread(predicate):
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    try:
        await until(lambda: "10.4.4.19" in ipset_list(topology.node), "the node's meshed pods were not applied")
        apiserver.create(make_pod("web-1", ip="10.4.4.70", node=NODE_A, labels={"app": "web"}))
        apiserver.create(make_pod("web-2", ip="10.4.3.70", node=NODE_B, labels={"app": "web"}))
        await until(lambda: "10.4.4.70" in ipset_list(topology.node), "a new pod on the node was not meshed")
        assert "10.4.3.70" not in ipset_list(topology.node)  # another node's pod: never even read
        apiserver.delete("pods", "web-1")
        await until(lambda: "10.4.4.70" not in ipset_list(topology.node), "a deleted pod stayed meshed")
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
    pods = [r for r in apiserver.requests if r.resource == "pods" and r.verb in ("list", "watch")]
    assert pods and all(r.query.get("fieldSelector") == f"spec.nodeName={NODE_A}" for r in pods)

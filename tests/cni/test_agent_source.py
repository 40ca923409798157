"""The agent reads the cluster through the source seam: any ModelSource, swapped in untouched."""

from __future__ import annotations

import asyncio
import time

import pytest

from zpilot.kube.directory import ManifestDirectorySource
from zpilot.kube.manifests import load_manifests
from zpilot.kube.source import load_model
from zpilot.model.index import MeshIndex

from ..fake_source import QueueSource
from .kernel_state import ipset_list
from .topology import NODE_A


def index_of(manifests) -> MeshIndex:
    loaded = load_manifests(manifests)
    return MeshIndex.build(loaded.cluster, loaded.problems)


def test_an_invalid_object_is_skipped_and_named_the_rest_loads(manifests):
    (manifests / "bad.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: broken, namespace: default}\n"
                                        "spec: {nodeName: 7}\nstatus: {podIP: 10.4.4.99}\n")
    index = load_model(ManifestDirectorySource(manifests))
    assert len(index.meshed_workloads_on(NODE_A)) == 3
    assert any("broken" in p.subject for p in index.problems)


@pytest.mark.root
@pytest.mark.netns
async def test_the_agent_applies_whatever_model_its_source_yields(make_agent, manifests, topology):
    source = QueueSource()
    agent = make_agent(source=source)
    stop = asyncio.Event()
    rounds: list = []
    run = asyncio.create_task(agent.run(stop, resync=30.0, on_reconcile=lambda plan, reports: rounds.append(plan)))

    async def until(predicate, what: str) -> None:
        deadline = time.monotonic() + 10
        while not await asyncio.to_thread(predicate):
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.05)

    try:
        await asyncio.sleep(0.2)
        assert rounds == [], "the agent reconciled before its source had a model"
        source.put(index_of(manifests))
        await until(lambda: rounds and "10.4.4.19" in ipset_list(topology.node), "the first model was not applied")
        pods = manifests / "pods.yaml"  # sleep finishes: the next model has it out of the mesh
        pods.write_text(pods.read_text().replace(
            "    phase: Running\n    hostIP: 10.168.15.222\n    podIP: 10.4.4.19",
            "    phase: Succeeded\n    hostIP: 10.168.15.222\n    podIP: 10.4.4.19"))
        source.put(index_of(manifests))
        await until(lambda: len(rounds) == 2 and "10.4.4.19" not in ipset_list(topology.node),
                    "the second model was not applied")
        assert all(plan is not None for plan in rounds)
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
    assert source.runs == 1 and source.closed == 1

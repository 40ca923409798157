"""A producer fed one model after another serves each node exactly what a new producer serves
from the latest model alone, for random hostile clusters and random changes.

The producer's per-change paths carry what the last model derived over to the next, by what
the index says changed (``MeshIndex.changes_since``): the mesh's pod routes and the ports every
node captures (translators/inputs.py), each service port's endpoints looked up again only where
they changed, a shared endpoint set serialized and checked from the last one by the members that
differ (xds/resource_store.py), a node whose endpoints alone changed checked once for all
(xds/push.py). None of that may show in what is served. The changes are test_endpoints_only.py's
(random clusters and their variants, pods coming, going, turning unready inside their nodes' pod
CIDRs) plus pods that move to another node or change identity, a service that gains and
loses a port, and a node whose pod CIDRs change (alone, at times: the pods as they were); at
each step every node's served bytes, versions and failures are compared.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.kube.source import ModelBuilder, OriginContent
from zpilot.model.index import MeshIndex
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.xds.order import PUSH_ORDER, short_name
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache

from .test_endpoints_only import _churn_pod, _terminating, churning
from .test_incremental_model import EXPLORE, _variant


def _service(ports: int) -> Any:
    """A second service over the churn pods: one port, or two (a port added, then removed)."""
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web2", "namespace": "churn"},
           "spec": {"clusterIP": "10.96.9.10", "selector": {"app": "web"},
                    "ports": [{"name": f"p{i}", "port": 81 + i, "targetPort": 8080} for i in range(ports)]}}
    return KIND_CONVERTERS["Service"](doc)


def _mover(i: int) -> list[Any]:
    """A pod's versions: as it is, of another identity, moved to the other node (an address in that
    node's pod CIDR), unready, on no node, on a node the cluster has no Node object of (a stray, both)."""
    pod = _churn_pod(50 + i, 0, "web")
    return [pod, replace(pod, service_account="other"), replace(pod, node_name="churn-b", ips=(f"10.201.1.{i + 1}",)),
            replace(pod, ready=False), replace(pod, node_name=None), replace(pod, node_name="churn-ghost")]


def _cidr_node(cidrs: list[str]) -> Any:
    """A third node whose pod CIDRs change: its own, then churn-b's (both clash: their pods turn
    strays), then a part of churn-a's (the same), while the pods stay as they are."""
    doc = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "churn-c"}, "spec": {"podCIDRs": cidrs},
           "status": {"addresses": [{"type": "InternalIP", "address": "172.19.0.9"}]}}
    return KIND_CONVERTERS["Node"](doc)


@st.composite
def changing(draw: st.DrawFn) -> tuple[list[tuple[str, list[Any]]], list[list[int]]]:
    """Origins with their versions, and at each step the version of each (0: absent, n: version n - 1)."""
    pool, steps = draw(churning())
    # the versions churning()'s steps choose among: equal, _variant's, _terminating's
    slots = [(origin, [obj, _variant(obj, 0), _variant(obj, 1), _terminating(obj)]) for origin, obj in pool]
    first = len(slots)
    slots.append(("web2", [_service(1), _service(2)]))
    slots.append(("node-c", [_cidr_node([cidr]) for cidr in ("10.202.0.0/16", "10.201.0.0/16", "10.200.0.0/24")]))
    slots += [(f"mover-{i}", _mover(i)) for i in range(draw(st.integers(1, 3)))]
    out = []
    previous = None
    for step in steps:
        extra = [draw(st.integers(0, len(versions))) for _origin, versions in slots[first:]]
        if previous is not None and draw(st.booleans()):  # often: the step changes the pool's objects alone
            extra = previous[first:]
        out.append(step + extra)
        previous = out[-1]
    return slots, out


def _served(producer: Producer) -> dict:
    """Every node's served bytes and versions, by type and name, and the nodes that failed."""
    cache = producer.cache
    state = {
        node: {t: (r.version, {n: (c.version, c.entry) for n, c in r.items.items()}) for t, r in snap.types.items()}
        for node in cache.nodes()
        if (snap := cache.get_snapshot(node)) is not None
    }
    return {"served": state, "failed": sorted(producer.failures)}


def _gauged(producer: Producer) -> tuple[dict[str, float], dict[str, int]]:
    """The resources gauge by type, and what the cache holds by type (the gauge is kept from what
    each node's snapshot held as it was set, not counted over every node again)."""
    counted = {short_name(t): 0 for t in PUSH_ORDER}
    for node in producer.cache.nodes():
        for t, resources in producer.cache.get_snapshot(node).types.items():
            counted[short_name(t)] += len(resources.items)
    return {k: producer.metrics.value("zpilot_xds_resources", type=k) for k in counted}, counted


def model_at(builder: ModelBuilder, slots: list[tuple[str, list[Any]]], step: list[int]) -> MeshIndex:
    """The model of one step of a :func:`changing` history: each slot's chosen version (0: absent)."""
    contents = [
        (origin, OriginContent(((origin, versions[choice - 1]),)), None)
        for (origin, versions), choice in zip(slots, step)
        if choice
    ]
    contents.sort(key=lambda entry: entry[0])
    return builder.build(contents)


def _producer() -> Producer:
    return Producer(SnapshotCache(), translate=IncrementalTranslator(TranslateOptions()))


@settings(max_examples=200 if EXPLORE else 30, deadline=None, derandomize=not EXPLORE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(changing())
def test_a_producer_fed_each_change_serves_what_a_new_one_serves_from_the_model_alone(
    history: tuple[list[tuple[str, list[Any]]], list[list[int]]],
) -> None:
    slots, steps = history
    builder = ModelBuilder()
    kept = _producer()

    async def run() -> None:
        for i, step in enumerate(steps):
            index = model_at(builder, slots, step)
            await kept.update(index)
            if i % 2:  # what idle time pays ahead for the next change, paid or not: the same served
                await kept.prepare_pending()
            fresh = _producer()
            await fresh.update(index)
            assert _served(kept) == _served(fresh)
            gauged, counted = _gauged(kept)
            assert gauged == counted

    asyncio.run(run())

"""A long-lived producer, fed random histories of one node's pods, serves every node what a new
producer serves from the latest model alone: the same bytes and the same versions, for every type.

What the producer carries from one change to the next for a node's own listeners (its pods'
chains kept serialized with their hashes, ``SerializedChains``; the first change's chains cut
from the served bytes; the plaintext listener's and the tunnel listener's maps of its pods
kept as entries, ``matcher.SerializedMap``; idle-time work, ``Producer.prepare_pending``) must
never show in what is served: a version that did not change with the bytes would not be sent
to Envoy. The histories here are pods added and deleted, relabelled (into another service,
under a policy or out of it), of another service account (another identity, secret and tunnel
chain), at another address, moved to the other node, scheduled without an address yet; AuthorizationPolicies and a
PeerAuthentication coming and going; a pod of the base cluster changed the same ways.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zpilot.model.index import MeshIndex
from zpilot.synthetic import EXTRA_POD_HOSTS, Shape, extra_policy, extra_pod, pod_ip, synthetic_cluster, synthetic_manifests
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.xds import snapshot
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache

from .test_incremental_model import EXPLORE

SHAPE = Shape(nodes=2, pods=6, services=3, namespaces=2, ports_per_service=1, service_accounts_per_namespace=2)
BASE = synthetic_manifests(SHAPE)
_BASE_POD = next(i for i, d in enumerate(BASE) if d["kind"] == "Pod")


def _versions(pod: dict[str, Any], serial: int) -> list[dict[str, Any]]:
    """A pod's versions: as it is, relabelled into another service, of another service account,
    at another address on its node, moved to the other node, relabelled out of every service,
    and without an address (scheduled, not running yet)."""
    relabelled = copy.deepcopy(pod)
    relabelled["metadata"]["labels"] = {"app": "svc-1" if pod["metadata"]["labels"]["app"] != "svc-1" else "svc-2"}
    account = copy.deepcopy(pod)
    account["spec"]["serviceAccountName"] = "sa-1" if pod["spec"]["serviceAccountName"] != "sa-1" else "sa-0"
    moved_ip = copy.deepcopy(pod)
    node = int(pod["spec"]["nodeName"].rsplit("-", 1)[1])
    moved_ip["status"]["podIP"] = pod_ip(node, EXTRA_POD_HOSTS + 40 + serial)
    moved = copy.deepcopy(pod)
    moved["spec"]["nodeName"] = f"node-{1 - node}"
    moved["status"]["podIP"] = pod_ip(1 - node, EXTRA_POD_HOSTS + 80 + serial)
    unlabelled = copy.deepcopy(pod)
    unlabelled["metadata"]["labels"] = {"other": "x"}
    pending = copy.deepcopy(pod)  # scheduled, no address yet
    del pending["status"]["podIP"]
    pending["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    return [pod, relabelled, account, moved_ip, moved, unlabelled, pending]


PEER_STRICT = {
    "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
    "metadata": {"name": "strict", "namespace": "ns-1"},
    "spec": {"selector": {"matchLabels": {"app": "svc-1"}}, "mtls": {"mode": "STRICT"}},
}
ALLOW_NS = {
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "allow-ns", "namespace": "ns-0"},
    "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["ns-1"]}}]}]},
}

#: Each slot's versions (a step picks one, or none: absent). The base pod's slot replaces it.
SLOTS: list[list[dict[str, Any]]] = [
    _versions(BASE[_BASE_POD], 0),
    *(_versions(extra_pod(SHAPE, serial, node=serial % 2), serial + 1) for serial in range(4)),
    [extra_policy(SHAPE, 0), extra_policy(SHAPE, 1)],
    [PEER_STRICT],
    [ALLOW_NS],
]


def _docs(step: list[int]) -> list[dict[str, Any]]:
    docs = BASE[:_BASE_POD] + BASE[_BASE_POD + 1 :]
    return docs + [versions[choice - 1] for versions, choice in zip(SLOTS, step) if choice]


def _served(producer: Producer) -> dict:
    cache = producer.cache
    return {
        "served": {
            node: {t: (r.version, {n: (c.version, c.entry) for n, c in r.items.items()}) for t, r in snap.types.items()}
            for node in cache.nodes()
            if (snap := cache.get_snapshot(node)) is not None
        },
        "failed": sorted(producer.failures),
    }


STEPS = st.lists(
    st.tuples(st.tuples(*(st.integers(0, len(v)) for v in SLOTS)).map(list), st.booleans()), min_size=2, max_size=8
)


@pytest.mark.parametrize("min_shared", [64, snapshot.MIN_SHARED_CHUNK])
@pytest.mark.parametrize("layout", ["linear", "article"])
@settings(max_examples=100 if EXPLORE else 15, deadline=None, derandomize=not EXPLORE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_a_producer_fed_pod_histories_serves_what_a_new_one_serves(
    monkeypatch, layout: str, min_shared: int, steps: list[tuple[list[int], bool]]
) -> None:
    """With the listeners' pieces kept apart (64: this small cluster's maps and chains too) or
    joined into their node's own bytes (the default, for pieces this small)."""
    monkeypatch.setattr(snapshot, "MIN_SHARED_CHUNK", min_shared)
    options = TranslateOptions(layout=layout)
    kept = Producer(SnapshotCache(), translate=IncrementalTranslator(options))

    async def run() -> None:
        index = None
        for step, idle in steps:
            index = MeshIndex.build(synthetic_cluster(_docs(step)), previous=index)
            report = await kept.update(index)
            assert not report.failed
            if idle:  # what idle time pays ahead for the next change, paid or not: the same served
                await kept.prepare_pending()
            fresh = Producer(SnapshotCache(), translate=IncrementalTranslator(options))
            await fresh.update(MeshIndex.build(synthetic_cluster(_docs(step))))
            assert _served(kept) == _served(fresh), step

    asyncio.run(run())

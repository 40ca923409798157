"""Config Envoy would refuse is never sent (issue 11, point 2): a Service with two ports of one name
is refused at the source, and a node whose translated config is inconsistent anyway keeps its last
good snapshot, reported as a problem naming the node. Against a real Envoy: no NACK, and
``ztunnel_outbound`` stays."""

from __future__ import annotations

import asyncio

from tests.translators.test_consistency import SAME_NAME_PORTS, SLEEP_CHAIN
from zpilot.translators import translate_node
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache

from .conftest import load_index
from .e2e_util import debug_json, wait_no_diff, wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, NODE_B, eventually


EXTRA_SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: extra, namespace: default}
spec:
  clusterIP: 10.8.0.78
  selector: {app: productpage}
  ports: [{name: http, port: 80, targetPort: 9080}]
"""


def edited(resources, edit):
    edit(resources)
    return resources


def needs_envoy(test):
    for mark in NEEDS_ENVOY_AS_ROOT:
        test = mark(test)
    return test


class DuplicateChain:
    """Test hook: when on, node A's outbound listener gets a second chain of an existing name."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, resources) -> None:
        if self.on and resources.node == NODE_A:
            outbound = resources.listeners["ztunnel_outbound"]
            outbound.filter_chains.add().CopyFrom(next(c for c in outbound.filter_chains if c.name == SLEEP_CHAIN))


async def test_an_inconsistent_node_keeps_its_snapshot_and_the_others_go_on(manifests):
    hook = DuplicateChain()
    cache = SnapshotCache()
    producer = Producer(cache, translate=lambda index, node: edited(translate_node(index, node), hook))
    await producer.update(load_index(manifests))
    good = cache.get_snapshot(NODE_A)

    hook.on = True
    (manifests / "extra.yaml").write_text(EXTRA_SERVICE)
    report = await producer.update(load_index(manifests))
    assert cache.get_snapshot(NODE_A) is good
    assert f"node {NODE_A}: listener 'ztunnel_outbound' has 2 filter chains named '{SLEEP_CHAIN}'" in report.failed[NODE_A]
    assert NODE_B in report.changed  # the new Service reached the other node
    assert list(producer.failures) == [NODE_A]

    hook.on = False
    report = await producer.update()
    assert NODE_A in report.changed and producer.failures == {}


async def test_registryz_names_the_refused_node(make_plane):
    hook = DuplicateChain()
    plane = await make_plane(edit=hook)
    hook.on = True
    await plane.update()
    model = await debug_json(plane.debug_port, "/debug/registryz")
    [problem] = [p for p in model["problems"] if p["subject"] == f"Node {NODE_A}"]
    assert problem["severity"] == "error"
    assert "has 2 filter chains named" in problem["reason"] and "keeps its last good config" in problem["reason"]
    hook.on = False
    await plane.update()
    model = await debug_json(plane.debug_port, "/debug/registryz")
    assert not [p for p in model["problems"] if p["subject"] == f"Node {NODE_A}"]


def _types(conn) -> dict[str, dict]:
    return {t["type"]: t for t in conn["types"]}


async def _outbound_chains(envoy) -> list[str]:
    dump = await envoy.config_dump()
    listeners = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
    [outbound] = [
        lis["active_state"]["listener"]
        for lis in listeners.get("dynamic_listeners", [])
        if lis["name"] == "ztunnel_outbound" and "active_state" in lis
    ]
    return [c["name"] for c in outbound["filter_chains"]]


@needs_envoy
async def test_real_envoy_bad_service_no_nack_and_outbound_stays(make_plane, envoys, manifests):
    plane = await make_plane()
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)
    before = await _outbound_chains(envoy)
    assert SLEEP_CHAIN in before

    (manifests / "twin.yaml").write_text(SAME_NAME_PORTS)
    await plane.update(load_index(manifests))
    conn = await wait_synced(plane.debug_port, NODE_A)
    assert all(t["nack_count"] == 0 for t in conn["types"]), conn
    assert await _outbound_chains(envoy) == before
    await wait_no_diff(plane.debug_port, envoy)
    model = await debug_json(plane.debug_port, "/debug/registryz")
    assert any("Service default/twin" in p["subject"] and "is used by two ports" in p["reason"] for p in model["problems"])


@needs_envoy
async def test_real_envoy_is_never_sent_a_duplicate_chain(make_plane, envoys):
    hook = DuplicateChain()
    plane = await make_plane(edit=hook)
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    conn = await wait_synced(plane.debug_port, NODE_A)
    sent = {name: t["sent_count"] for name, t in _types(conn).items()}
    before = await _outbound_chains(envoy)

    hook.on = True
    report = await plane.update()
    assert NODE_A in report.failed
    await asyncio.sleep(0.5)  # a push, had there been one, would have gone out by now
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node=NODE_A)
    assert {name: t["sent_count"] for name, t in _types(conn).items()} == sent
    assert all(t["nack_count"] == 0 and t["state"] == "SYNCED" for t in conn["types"]), conn
    assert await _outbound_chains(envoy) == before

    hook.on = False
    await plane.update()

    async def fixed():
        await wait_synced(plane.debug_port, NODE_A)
        return True

    await eventually(fixed)
    await wait_no_diff(plane.debug_port, envoy)

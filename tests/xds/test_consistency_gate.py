"""Config Envoy would refuse is never sent (issue 11, point 2): a Service with two ports of one name
is refused at the source, and a node whose translated config is inconsistent anyway keeps its last
good snapshot, reported as a problem naming the node. Against a real Envoy: no NACK, and
``ztunnel_outbound`` stays."""

from __future__ import annotations

import asyncio

import pytest

from tests.layouts import service_chain
from tests.translators.test_consistency import SAME_NAME_PORTS
from zpilot.translators import TranslateOptions, translate_node
from zpilot.xds.order import CLUSTER_TYPE, LISTENER_TYPE
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache

from .ads_client import AdsClient
from .conftest import load_index
from .e2e_util import debug_json, wait_no_diff, wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, NODE_B, eventually
from .fake_world import NodeSpec


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


def sleep_chain(layout: str) -> str:
    """Node A's outbound chain for sleep -> productpage's VIP."""
    return service_chain(layout, "http_productpage.default.svc.cluster.local")


class DuplicateChain:
    """Test hook: when on, node A's outbound listener gets a second chain of an existing name."""

    def __init__(self, layout: str) -> None:
        self.on = False
        self.chain = sleep_chain(layout)

    def __call__(self, resources) -> None:
        if self.on and resources.node == NODE_A:
            outbound = resources.listeners["ztunnel_outbound"]
            outbound.filter_chains.add().CopyFrom(next(c for c in outbound.filter_chains if c.name == self.chain))


async def test_an_inconsistent_node_keeps_its_snapshot_and_the_others_go_on(manifests, layout):
    hook = DuplicateChain(layout)
    cache = SnapshotCache()
    options = TranslateOptions(layout=layout)
    producer = Producer(cache, translate=lambda index, node: edited(translate_node(index, node, options), hook))
    await producer.update(load_index(manifests))
    good = cache.get_snapshot(NODE_A)

    hook.on = True
    (manifests / "extra.yaml").write_text(EXTRA_SERVICE)
    report = await producer.update(load_index(manifests))
    assert cache.get_snapshot(NODE_A) is good
    assert f"node {NODE_A}: listener 'ztunnel_outbound' has 2 filter chains named '{hook.chain}'" in report.failed[NODE_A]
    assert NODE_B in report.changed  # the new Service reached the other node
    assert list(producer.failures) == [NODE_A]

    hook.on = False
    report = await producer.update()
    assert NODE_A in report.changed and producer.failures == {}


async def test_a_node_without_good_config_is_withheld_until_it_has_one(manifests, layout):
    """The first translation of a node fails: there is nothing to keep, and the cache withholds the
    node (its streams send nothing) instead of leaving it without a snapshot (an empty config)."""
    hook = DuplicateChain(layout)
    hook.on = True
    cache = SnapshotCache()
    options = TranslateOptions(layout=layout)
    producer = Producer(cache, translate=lambda index, node: edited(translate_node(index, node, options), hook))
    await producer.update(load_index(manifests))
    assert cache.get_snapshot(NODE_A) is None and "2 filter chains named" in cache.withheld(NODE_A)
    assert cache.get_snapshot(NODE_B) is not None and cache.withheld(NODE_B) is None

    hook.on = False
    report = await producer.update()
    assert NODE_A in report.changed and cache.withheld(NODE_A) is None and cache.get_snapshot(NODE_A) is not None

    hook.on = True  # failing again with a good snapshot: that one is kept, nothing is withheld
    await producer.update()
    assert cache.withheld(NODE_A) is None and cache.get_snapshot(NODE_A) is not None


async def test_a_withheld_node_that_leaves_the_model_is_forgotten(manifests, layout):
    hook = DuplicateChain(layout)
    hook.on = True
    cache = SnapshotCache()
    options = TranslateOptions(layout=layout)
    producer = Producer(cache, translate=lambda index, node: edited(translate_node(index, node, options), hook))
    await producer.update(load_index(manifests))
    assert cache.withheld(NODE_A) is not None
    watch = cache.watch(NODE_A)
    for path in manifests.rglob("*.yaml"):  # node A and everything on it leave the model
        if NODE_A in path.read_text():
            path.unlink()
    await producer.update(load_index(manifests))
    assert cache.withheld(NODE_A) is None and NODE_A not in producer.failures
    await asyncio.wait_for(watch.wait(), 1)  # its streams wake: it is now a node the model lacks
    watch.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_withheld_node_is_sent_nothing_and_then_its_config(fake_plane, delta):
    """Over the wire: a node of the model whose config failed from the start gets no response at all
    (SotW and delta alike), while a node the model lacks gets its empty config; once the node's
    config is good the waiting requests are answered."""
    plane, world = await fake_plane()
    world.nodes["c"] = NodeSpec(clusters={"c1": ["10.0.0.3"]}, listeners={"l1": 10001, "l2": 10001})  # one port twice
    report = await plane.update(world.index())
    assert "binds 127.0.0.1:10001 like listener" in report.failed["c"]
    clients = {name: AdsClient(plane.xds_port, delta=delta) for name in ("c", "ghost")}
    try:
        for name, client in clients.items():
            for type_url in (CLUSTER_TYPE, LISTENER_TYPE):
                if delta:  # the ghost names a cluster: an empty wildcard answer would be no answer
                    client.delta_request(type_url, node_name=name, subscribe=["c1"] if name == "ghost" else ())
                else:
                    client.request(type_url, node_name=name)
        ghost = await clients["ghost"].recv()  # a node the model lacks: served its (empty) config
        assert ghost.type_url == CLUSTER_TYPE and len(ghost.resources) == 0
        if delta:
            assert list(ghost.removed_resources) == ["c1"]
        await clients["c"].expect_silence(0.5)
        [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="c")
        assert conn["known_node"] is True and all(t["sent_count"] == 0 for t in conn["types"]), conn

        world.nodes["c"].listeners = {"l1": 10001}
        await plane.update(world.index())
        first, second = await clients["c"].recv(), await clients["c"].recv()
        assert (first.type_url, second.type_url) == (CLUSTER_TYPE, LISTENER_TYPE)
        assert len(first.resources) == 1 and len(second.resources) == 1
    finally:
        for client in clients.values():
            await client.close()


async def test_registryz_names_the_refused_node(make_plane, layout):
    hook = DuplicateChain(layout)
    plane = await make_plane(edit=hook, layout=layout)
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
async def test_real_envoy_bad_service_no_nack_and_outbound_stays(make_plane, envoys, manifests, layout):
    plane = await make_plane(layout=layout)
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)
    before = await _outbound_chains(envoy)
    assert sleep_chain(layout) in before

    (manifests / "twin.yaml").write_text(SAME_NAME_PORTS)
    await plane.update(load_index(manifests))
    conn = await wait_synced(plane.debug_port, NODE_A)
    assert all(t["nack_count"] == 0 for t in conn["types"]), conn
    assert await _outbound_chains(envoy) == before
    await wait_no_diff(plane.debug_port, envoy)
    model = await debug_json(plane.debug_port, "/debug/registryz")
    assert any("Service default/twin" in p["subject"] and "is used by two ports" in p["reason"] for p in model["problems"])


@needs_envoy
async def test_real_envoy_is_never_sent_a_duplicate_chain(make_plane, envoys, layout):
    hook = DuplicateChain(layout)
    plane = await make_plane(edit=hook, layout=layout)
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


@needs_envoy
async def test_real_envoy_reconnecting_to_a_serve_with_no_good_config_for_it_keeps_its_own(make_plane, envoys, layout):
    """A node whose config fails the check before it ever had a good one has nothing to keep: it is
    withheld, served nothing (the stream waits), never an empty config. An Envoy with good config
    from another serve (restarted, or a replica) that reconnects here keeps its listeners (with the
    empty config it was served before, it dropped every one), and gets config as soon as the node's
    translation is good."""
    first = await make_plane(layout=layout)
    envoy = envoys(NODE_A, first.xds_port)
    await envoy.wait_ready()
    await wait_synced(first.debug_port, NODE_A)
    before = await _outbound_chains(envoy)
    port = first.xds_port
    await first.stop()  # the serve goes away; the Envoy keeps its config and keeps redialling

    hook = DuplicateChain(layout)
    hook.on = True
    second = await make_plane(xds_port=port, edit=hook, layout=layout)  # its first translation of node A fails
    assert NODE_A in second.producer.failures and second.cache.get_snapshot(NODE_A) is None
    assert second.cache.get_snapshot(NODE_B) is not None

    async def asked():
        conns = await debug_json(second.debug_port, "/debug/syncz", node=NODE_A)
        assert len(conns) == 1, conns
        assert {"CDS", "LDS"} <= set(_types(conns[0])), conns[0]
        return conns[0]

    await eventually(asked, timeout=40)
    await asyncio.sleep(1.0)  # a response, had there been one, would have been sent and applied by now
    [conn] = await debug_json(second.debug_port, "/debug/syncz", node=NODE_A)
    assert {name: t["sent_count"] for name, t in _types(conn).items()} == dict.fromkeys(_types(conn), 0), conn
    assert conn["known_node"] is True
    assert await _outbound_chains(envoy) == before
    model = await debug_json(second.debug_port, "/debug/registryz")
    [problem] = [p for p in model["problems"] if p["subject"] == f"Node {NODE_A}"]
    assert "never had a good config: it is sent nothing" in problem["reason"], problem

    hook.on = False
    await second.update()
    await wait_synced(second.debug_port, NODE_A)
    await wait_no_diff(second.debug_port, envoy)

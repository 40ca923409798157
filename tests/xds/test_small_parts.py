"""Node identity, metrics exposition, dump normalization and the producer's guarantees."""

from __future__ import annotations

import copy

import pytest
from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import struct_pb2

from zpilot.xds.dump_diff import normalize, unified_diff
from zpilot.xds.metrics import Metrics
from zpilot.xds.node_identity import NodeIdentityError, node_name
from zpilot.xds.order import CLUSTER_TYPE, SECRET_TYPE
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache

from .fake_world import FakeWorld, NodeSpec


def _node(node_id: str = "", **metadata) -> Node:
    n = Node(id=node_id)
    if metadata:
        s = struct_pb2.Struct()
        s.update(metadata)
        n.metadata.CopyFrom(s)
    return n


@pytest.mark.parametrize(
    "node, expected",
    [
        (_node("whatever", NODE_NAME="node-a"), "node-a"),
        (_node("ztunnel~node-b"), "node-b"),
        (_node("ztunnel~node-c~10.0.0.1~x"), "node-c"),
        (_node("node-d"), "node-d"),
    ],
)
def test_node_name(node, expected):
    assert node_name(node) == expected


@pytest.mark.parametrize("node", [_node(""), _node("x", NODE_NAME=""), _node("x", NODE_NAME=3)])
def test_node_name_refused(node):
    with pytest.raises(NodeIdentityError):
        node_name(node)


def test_metrics_exposition():
    m = Metrics()
    m.pushes.inc("CDS", "sotw")
    m.pushes.inc("CDS", "sotw")
    m.nacks.inc('we"ird\n')
    m.push_latency.observe(0.003, "EDS")
    m.push_latency.observe(20.0, "EDS")
    m.connections.inc("delta")
    m.connections.dec("delta")
    text = m.render()
    assert 'zpilot_xds_pushes_total{type="CDS",mode="sotw"} 2' in text
    assert 'zpilot_xds_nacks_total{type="we\\"ird\\n"} 1' in text
    assert 'zpilot_xds_push_latency_seconds_bucket{type="EDS",le="0.0025"} 0' in text
    assert 'zpilot_xds_push_latency_seconds_bucket{type="EDS",le="0.005"} 1' in text
    assert 'zpilot_xds_push_latency_seconds_bucket{type="EDS",le="+Inf"} 2' in text
    assert 'zpilot_xds_push_latency_seconds_count{type="EDS"} 2' in text
    assert 'zpilot_xds_connections{mode="delta"} 0' in text
    assert "# TYPE zpilot_xds_push_latency_seconds histogram" in text
    with pytest.raises(ValueError):
        m.pushes.inc("CDS")


ENVOY_LIKE = {
    "configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
         "static_clusters": [{"cluster": {"name": "xds-grpc"}}],
         "dynamic_active_clusters": [
             {"version_info": "2", "last_updated": "t", "cluster": {"name": "b", "type": "EDS"}},
             {"version_info": "1", "cluster": {"name": "a"}},
         ],
         "dynamic_warming_clusters": [{"cluster": {"name": "warm"}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
         "dynamic_endpoint_configs": [
             {"endpoint_config": {"cluster_name": "a", "policy": {"overprovisioning_factor": 140}}},
             {"endpoint_config": {"cluster_name": "b", "policy": {"overprovisioning_factor": 140},
                                  "endpoints": [{"locality": {}, "load_balancing_weight": 0,
                                                 "lb_endpoints": [{"endpoint": {}}]}]}},
         ]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "dynamic_listeners": [{"name": "l", "active_state": {"version_info": "3", "listener": {"name": "l"}}},
                               {"name": "w", "warming_state": {"listener": {"name": "w"}}}]},
    ]
}


def test_normalize_keeps_dynamic_active_and_drops_envoy_defaults():
    n = normalize(ENVOY_LIKE)
    assert [c["name"] for c in n["clusters"]] == ["a", "b"]
    assert n["endpoints"] == [{"cluster_name": "b", "endpoints": [{"lb_endpoints": [{"endpoint": {}}]}]}]
    assert n["listeners"] == [{"name": "l"}]
    assert unified_diff(ENVOY_LIKE, ENVOY_LIKE) == ""
    other = copy.deepcopy(ENVOY_LIKE)
    other["configs"][2]["dynamic_listeners"][0]["active_state"]["listener"]["port"] = 1
    diff = unified_diff(ENVOY_LIKE, other)
    assert '+   "port": 1' in diff and diff.startswith("--- zpilot")


async def test_producer_keeps_last_good_config_when_a_node_fails():
    world = FakeWorld(a=NodeSpec(clusters={"c": []}), b=NodeSpec(clusters={"c": []}))
    cache = SnapshotCache()
    producer = Producer(cache, translate=world.translate, secrets=world.secrets)
    await producer.update(world.index())
    good = cache.get_snapshot("a")

    def explode(resources):
        if resources.node == "a":
            raise RuntimeError("translator bug")

    producer.mutate = explode
    world.nodes["b"].clusters["d"] = []
    report = await producer.update(world.index())
    assert "RuntimeError: translator bug" in report.failed["a"]
    assert cache.get_snapshot("a") is good
    assert list(report.changed) == ["b"]
    assert producer.metrics.producer_errors.value() == 1


async def test_producer_refuses_misnamed_resources_and_unreferenced_secrets():
    world = FakeWorld(a=NodeSpec(clusters={"c": []}, secrets=["s"]))
    cache = SnapshotCache()

    def rename(resources):
        resources.clusters["c"].name = "other"

    producer = Producer(cache, translate=world.translate, secrets=world.secrets, mutate=rename)
    report = await producer.update(world.index())
    assert "named 'other'" in report.failed["a"] and cache.get_snapshot("a") is None

    def extra_secret(resources):
        return {**world.secrets(resources), **world.secrets(type(resources)(node="x", secrets={"t": None}))}

    producer = Producer(cache, translate=world.translate, secrets=extra_secret)
    report = await producer.update(world.index())
    assert "unreferenced secrets ['t']" in report.failed["a"]


async def test_producer_sds_serves_only_referenced_names_and_drops_nodes_that_left():
    world = FakeWorld(a=NodeSpec(clusters={"c": []}, secrets=["s1", "s2"]), b=NodeSpec())
    cache = SnapshotCache()
    producer = Producer(cache, translate=world.translate, secrets=world.secrets)
    await producer.update(world.index())
    assert sorted(cache.get_snapshot("a").resources(SECRET_TYPE).items) == ["s1", "s2"]
    assert cache.get_snapshot("b").resources(SECRET_TYPE).items == {}
    del world.nodes["b"]
    report = await producer.update(world.index())
    assert report.removed == ["b"] and cache.get_snapshot("b") is None
    assert producer.metrics.resources.value("CDS") == 1
    assert cache.get_snapshot("a").resources(CLUSTER_TYPE).items["c"].version


async def test_producer_skips_translation_when_the_cluster_state_is_equal():
    world = FakeWorld(a=NodeSpec(clusters={"c": []}))
    producer = Producer(SnapshotCache(), translate=world.translate, secrets=world.secrets)
    await producer.update(world.index())
    assert world.translations == ["a"]
    report = await producer.update(world.index())  # an equal, freshly built model
    assert world.translations == ["a"] and report.unchanged == ["a"] and not report.changed
    await producer.refresh()  # an explicit refresh (certificate rotation) always produces again
    assert world.translations == ["a", "a"]


async def test_nodes_named_only_by_pods_get_config(manifests):
    from pathlib import Path

    from .conftest import load_index

    for path in Path(manifests).glob("*.yaml"):  # drop the Node objects, keep the pods
        text = path.read_text()
        if "kind: Node\n" in text:
            docs = [d for d in text.split("\n---") if "kind: Node\n" not in d]
            path.write_text("\n---".join(docs))
    index = load_index(manifests)
    assert not index.nodes
    cache = SnapshotCache()
    await Producer(cache).update(index)
    from .envoy_util import NODE_A, NODE_B

    assert {NODE_A, NODE_B} <= set(cache.nodes())


def test_zpilot_diff_exits_2_when_a_side_cannot_be_read():
    import subprocess
    import sys

    from .envoy_util import free_port

    closed = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "zpilot.cli", "diff", "--node", "n", "--envoy-admin", f"http://127.0.0.1:{closed}",
         "--server", f"http://127.0.0.1:{closed}", "--timeout", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert f"127.0.0.1:{closed}/debug/config_dump?node=n" in result.stderr


def test_normalize_keeps_only_referenced_secrets():
    dump = {"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [
            {"cluster": {"name": "c", "transport_socket": {"typed_config": {"common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "cert", "sds_config": {"ads": {}}}],
                "combined_validation_context": {"validation_context_sds_secret_config": {"name": "ROOTCA"}},
            }}}}}]},
        {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": [
            {"name": n, "secret": {"name": n}} for n in ("unused", "ROOTCA", "cert")]},
    ]}
    assert [s["name"] for s in normalize(dump)["secrets"]] == ["ROOTCA", "cert"]


async def test_a_second_server_on_the_same_port_fails_to_start():
    from zpilot.xds.server import AdsServer, ServerOptions

    first = AdsServer(SnapshotCache(), options=ServerOptions(host="127.0.0.1", port=0))
    port = await first.start()
    try:
        second = AdsServer(SnapshotCache(), options=ServerOptions(host="127.0.0.1", port=port))
        with pytest.raises(OSError, match=f"cannot bind the xDS server to 127.0.0.1:{port}"):
            await second.start()
    finally:
        await first.stop(0)


def test_serve_exits_2_when_its_ports_are_taken(tmp_path):
    import socket
    import subprocess
    import sys

    from .conftest import EXAMPLE

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--xds-port", "--debug-port"):
            other = "--debug-port" if flag == "--xds-port" else "--xds-port"
            result = subprocess.run(
                [sys.executable, "-m", "zpilot.cli", "serve", "--manifests", str(EXAMPLE), "--xds-address",
                 "127.0.0.1", flag, str(port), other, "0"],
                capture_output=True, text=True, timeout=60,
            )
            assert result.returncode == 2, (flag, result.stderr[-2000:])
            assert "cannot start" in result.stderr and str(port) in result.stderr

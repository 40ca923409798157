"""Node identity, metrics, dump normalization and the producer's guarantees."""

from __future__ import annotations

import copy

import pytest
from envoy.config.core.v3.base_pb2 import Node
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf import struct_pb2

from zpilot.xds.dump_diff import normalize, unified_diff
from zpilot.xds.metrics import Metrics, observe_all
from zpilot.xds.node_identity import NodeIdentityError, node_name
from zpilot.xds.observer import Observers, Response, StreamInfo, StreamObserver
from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE
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


@pytest.mark.parametrize("node", [_node(""), _node("x", NODE_NAME=""), _node("x", NODE_NAME=3), _node("n" * 254),
                                  _node("ztunnel~" + "n" * 254), _node("x", NODE_NAME="n" * 254)])
def test_node_name_refused(node):
    with pytest.raises(NodeIdentityError):
        node_name(node)


def test_metrics_count_stream_events_with_bounded_labels():
    """Metrics is a stream observer (called directly here, so a broken handler raises); labels
    are type short names and modes, never what the client sent; each instance is independent."""
    m = Metrics()
    stream = StreamInfo(id="conn-1", node="n", node_id="ztunnel~n", mode="sotw", peer="ipv4:1.2.3.4:5")
    m.stream_opened(stream)
    m.request_received(stream, CLUSTER_TYPE)
    m.response_sent(stream, Response(CLUSTER_TYPE, "v1", "1", resources=3, bytes=100))
    m.response_sent(stream, Response(CLUSTER_TYPE, "v2", "2", resources=3, bytes=50, push_latency=0.003))
    m.response_sent(stream, Response(ENDPOINT_TYPE, "v2", "3", resources=1, bytes=10, push_latency=20.0))
    m.ack(stream, CLUSTER_TYPE, "v2", "2")
    m.nack(stream, ENDPOINT_TYPE, "v2", "3", 3, 'we"ird\n error text')
    m.stale_request(stream, "type.googleapis.com/client.Chosen", "9")
    m.unserved_names(stream, SECRET_TYPE, ["a", "b"])
    m.node_known(stream, False)
    m.stream_refused(stream, "unknown_type", "unknown type URL 'x'")
    m.stream_closed(stream)
    text = m.render().decode()
    assert 'zpilot_xds_responses_total{mode="sotw",type="CDS"} 2.0' in text
    assert 'zpilot_xds_response_bytes_total{type="CDS"} 150.0' in text
    assert 'zpilot_xds_push_latency_seconds_bucket{le="0.0025",type="CDS"} 0.0' in text
    assert 'zpilot_xds_push_latency_seconds_bucket{le="0.005",type="CDS"} 1.0' in text
    assert 'zpilot_xds_push_latency_seconds_count{type="EDS"} 1.0' in text
    assert "# TYPE zpilot_xds_push_latency_seconds histogram" in text
    assert m.value("zpilot_xds_push_latency_seconds_count", type="CDS") == 1  # the first response is no push
    assert m.value("zpilot_xds_acks_total", type="CDS") == 1
    assert m.value("zpilot_xds_nacks_total", type="EDS") == 1
    assert m.value("zpilot_xds_stale_requests_total", type="other") == 1
    assert m.value("zpilot_xds_unserved_resource_names_total", type="SDS") == 2
    assert m.value("zpilot_xds_requests_total", type="CDS", mode="sotw") == 1
    assert m.value("zpilot_xds_streams", mode="sotw") == 0
    assert m.value("zpilot_xds_streams_opened_total", mode="sotw") == 1
    assert m.value("zpilot_xds_unknown_node_streams_total") == 1
    assert m.value("zpilot_xds_rejected_requests_total", reason="unknown_type") == 1
    assert "weird" not in text and "we\"ird" not in text and "Chosen" not in text and "conn-1" not in text
    for line in text.splitlines():  # Prometheus conventions: counters end in _total, no unit-less durations
        if line.startswith("# TYPE ") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line
    assert Metrics().value("zpilot_xds_acks_total", type="CDS") == 0  # no state shared between instances


def test_observe_all_counts_as_observing_each():
    """The producer observes a change's hundred generation times at once: the same buckets and
    count as one ``observe`` each, the sum to a float's rounding."""
    amounts = [0.0, 0.0004, 0.001, 0.0011, 0.003, 0.003, 0.02, 0.7, 12.0, 31.0, 100.0, float("nan")]
    one, all_ = Metrics(), Metrics()
    for amount in amounts:
        one.generation.observe(amount)
    observe_all(all_.generation, amounts)
    observe_all(all_.generation, [])

    def samples(metrics):
        found = {s.name + repr(sorted(s.labels.items())): s.value
                 for family in metrics.generation.collect() for s in family.samples if not s.name.endswith("_created")}
        return found

    theirs, mine = samples(one), samples(all_)
    assert theirs.keys() == mine.keys()
    for key, value in theirs.items():
        assert mine[key] == pytest.approx(value, nan_ok=True), key


def test_observers_hand_every_event_to_each_and_survive_a_broken_one(caplog):
    import inspect

    events = [name for name, value in vars(StreamObserver).items() if callable(value) and not name.startswith("_")]
    seen: list[tuple] = []

    class Recorder(StreamObserver):
        pass

    for name in events:
        setattr(Recorder, name, lambda self, *args, _event=name: seen.append((_event, *args)))

    class Broken(StreamObserver):
        def ack(self, *args):
            raise RuntimeError("observer bug")

    observers = Observers(Broken(), Recorder())
    for name in events:
        arity = len(inspect.signature(getattr(StreamObserver, name)).parameters) - 1
        getattr(observers, name)(*[f"{name}-{i}" for i in range(arity)])
    assert [event[0] for event in seen] == events  # every event reaches every observer, in order
    assert seen[events.index("ack")][1:] == ("ack-0", "ack-1", "ack-2", "ack-3")
    assert "stream observer Broken failed on ack" in caplog.text


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
                                                 "lb_endpoints": [{"endpoint": {"health_check_config": {}},
                                                                   "health_status": "HEALTHY",
                                                                   "load_balancing_weight": 1},
                                                                  {"endpoint": {}, "health_status": "DRAINING",
                                                                   "load_balancing_weight": 2}]}]}},
         ]},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
         "dynamic_listeners": [{"name": "l", "active_state": {"version_info": "3", "listener": {"name": "l"}}},
                               {"name": "w", "warming_state": {"listener": {"name": "w"}}}]},
    ]
}


def test_normalize_keeps_dynamic_active_and_drops_envoy_defaults():
    n = normalize(ENVOY_LIKE)
    assert [c["name"] for c in n["clusters"]] == ["a", "b"]
    assert n["endpoints"] == [{"cluster_name": "b", "endpoints": [{"lb_endpoints": [
        {"endpoint": {}}, {"endpoint": {}, "health_status": "DRAINING", "load_balancing_weight": 2}]}]}]
    assert n["listeners"] == [{"name": "l"}]
    assert unified_diff(ENVOY_LIKE, ENVOY_LIKE) == ""
    other = copy.deepcopy(ENVOY_LIKE)
    other["configs"][2]["dynamic_listeners"][0]["active_state"]["listener"]["port"] = 1
    diff = unified_diff(ENVOY_LIKE, other)
    assert '+   "port": 1' in diff and diff.startswith("--- zpilot")


async def test_producer_keeps_last_good_config_when_a_node_fails():
    world = FakeWorld(a=NodeSpec(clusters={"c": []}), b=NodeSpec(clusters={"c": []}))
    cache = SnapshotCache()
    broken: set[str] = set()

    def translate(index, node):
        if node in broken:
            raise RuntimeError("translator bug")
        return world.translate(index, node)

    producer = Producer(cache, translate=translate, secrets=world.secrets)
    await producer.update(world.index())
    good = cache.get_snapshot("a")

    broken.add("a")
    world.nodes["b"].clusters["d"] = []
    report = await producer.update(world.index())
    assert "RuntimeError: translator bug" in report.failed["a"]
    assert cache.get_snapshot("a") is good
    assert list(report.changed) == ["b"]
    assert producer.metrics.value("zpilot_producer_errors_total") == 1


async def test_producer_refuses_misnamed_resources_and_unreferenced_secrets():
    world = FakeWorld(a=NodeSpec(clusters={"c": []}, secrets=["s"]))
    cache = SnapshotCache()

    def misnamed(index, node):
        resources = world.translate(index, node)
        resources.clusters["c"].name = "other"
        return resources

    producer = Producer(cache, translate=misnamed, secrets=world.secrets)
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
    assert producer.metrics.value("zpilot_xds_resources", type="CDS") == 1
    assert cache.get_snapshot("a").resources(CLUSTER_TYPE).items["c"].version


async def test_producer_skips_translation_when_the_cluster_state_is_equal():
    world = FakeWorld(a=NodeSpec(clusters={"c": []}))
    producer = Producer(SnapshotCache(), translate=world.translate, secrets=world.secrets)
    await producer.update(world.index())
    assert world.translations == ["a"]
    report = await producer.update(world.index())  # an equal, freshly built model
    assert world.translations == ["a"] and report.unchanged == ["a"] and not report.changed
    await producer.update()  # no model given: every node is produced again
    assert world.translations == ["a", "a"]


async def test_producer_refresh_makes_secrets_again_without_translating():
    """A certificate rotation changes secrets, never what the translators make from the model."""
    world = FakeWorld(a=NodeSpec(clusters={"c": []}, secrets=["s"]), b=NodeSpec())
    cache = SnapshotCache()
    generation = ["first"]

    def secrets(resources):
        return {name: Secret(name=name, tls_certificate={"certificate_chain": {"inline_string": generation[0]}})
                for name in resources.secrets}

    producer = Producer(cache, translate=world.translate, secrets=secrets)
    await producer.update(world.index())
    before = cache.get_snapshot("a")
    generation[0] = "rotated"
    report = await producer.refresh()
    after = cache.get_snapshot("a")
    assert world.translations == ["a", "b"] and report.changed == {"a": [SECRET_TYPE]}
    assert report.unchanged == ["b"]  # no secret, nothing to rotate
    assert after.resources(CLUSTER_TYPE) is before.resources(CLUSTER_TYPE)
    assert after.secret_refs == before.secret_refs
    _, served = after.decode()
    assert served["s"].tls_certificate.certificate_chain.inline_string == "rotated"


async def test_a_node_translated_again_keeps_its_secrets_until_its_references_or_a_refresh_change_them():
    """A node's secrets change with the names its config references, or through ``refresh`` (a rotation, a CA
    reload): not made again each time the node is translated, and what a refresh made is what is kept."""
    world = FakeWorld(a=NodeSpec(clusters={"c": []}, secrets=["s"]))
    cache = SnapshotCache()
    generation, made = ["first"], []

    def secrets(resources):
        made.append(sorted(resources.secrets))
        if generation[0] == "broken":
            raise RuntimeError("the CA cannot sign")
        return {name: Secret(name=name, tls_certificate={"certificate_chain": {"inline_string": generation[0]}})
                for name in resources.secrets}

    def served() -> str:
        return cache.get_snapshot("a").decode()[1]["s"].tls_certificate.certificate_chain.inline_string

    producer = Producer(cache, translate=world.translate, secrets=secrets)
    await producer.update(world.index())
    first = cache.get_snapshot("a").resources(SECRET_TYPE)
    await producer.update()  # every node translated again, the same references
    assert world.translations == ["a", "a"] and made == [["s"]]
    assert cache.get_snapshot("a").resources(SECRET_TYPE) is first
    generation[0] = "rotated"
    await producer.refresh()
    await producer.update()  # translated again after the rotation: the rotated certificate stays
    assert served() == "rotated" and len(made) == 2
    generation[0] = "broken"  # a refresh that cannot make them: the node keeps its current ones...
    assert (await producer.refresh()).failed and served() == "rotated"
    generation[0] = "reissued"  # ... and has them made at its next translation, not those from before
    await producer.update()
    assert served() == "reissued" and len(made) == 4
    world.nodes["a"] = NodeSpec(clusters={"c": []}, secrets=["s", "t"])  # its references changed: made again
    await producer.update(world.index())
    assert made[-1] == ["s", "t"] and sorted(cache.get_snapshot("a").resources(SECRET_TYPE).items) == ["s", "t"]
    producer.secrets = secrets  # a source given anew (a CA attached): made again
    await producer.update()
    assert len(made) == 6


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
    from zpilot.xds.security import XdsSecurity
    from zpilot.xds.server import AdsServer, ServerOptions

    first = AdsServer(SnapshotCache(), security=XdsSecurity.insecure(), options=ServerOptions(host="127.0.0.1", port=0))
    port = await first.start()
    try:
        second = AdsServer(SnapshotCache(), security=XdsSecurity.insecure(),
                           options=ServerOptions(host="127.0.0.1", port=port))
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
        for flag in ("--xds-port", "--debug-port", "--metrics-port"):
            ports = {"--xds-port": "0", "--debug-port": "0", "--metrics-port": "0", flag: str(port)}
            result = subprocess.run(
                [sys.executable, "-m", "zpilot.cli", "serve", "--manifests", str(EXAMPLE), "--xds-address",
                 "127.0.0.1", "--metrics-address", "127.0.0.1", "--ca-dir", str(tmp_path / "ca"),
                 *(x for item in ports.items() for x in item)],
                capture_output=True, text=True, timeout=60,
            )
            assert result.returncode == 2, (flag, result.stderr[-2000:])
            assert "cannot start" in result.stderr and str(port) in result.stderr
            if flag != "--debug-port":  # (the debug API's uvicorn still prints its own line first)
                # Ours is the one message about it: gRPC core's "E.... add_port.cc ... Failed to
                # add port" no longer comes first.
                errors = [line for line in result.stderr.splitlines()
                          if " INFO " not in line and " WARNING " not in line]
                assert len(errors) == 1, (flag, errors)
                assert f"127.0.0.1:{port}: Address already in use" in errors[0], errors


def test_serve_defaults_metrics_reachable_by_scrapers_and_debug_api_local():
    from zpilot.cli import build_parser

    args = build_parser().parse_args(["serve", "--manifests", "x"])
    assert (args.metrics_address, args.metrics_port) == ("0.0.0.0", 15020)
    assert (args.debug_address, args.debug_port) == ("127.0.0.1", 15014)


def test_a_types_push_latency_series_appears_at_zero_with_its_first_response():
    """docs/xds-server.md: a type's push latency series appear, at count 0, with its first response
    (no push measured yet: ``rate()`` reads 0, not an absent series)."""
    m = Metrics()
    stream = StreamInfo(id="conn-1", node="n", node_id="ztunnel~n", mode="delta", peer="ipv4:1.2.3.4:5")
    m.response_sent(stream, Response(ENDPOINT_TYPE, "v1", "1", resources=3, bytes=100))
    text = m.render().decode()
    assert 'zpilot_xds_push_latency_seconds_count{type="EDS"} 0.0' in text, text
    assert 'zpilot_xds_push_latency_seconds_bucket{le="+Inf",type="EDS"} 0.0' in text
    assert 'zpilot_xds_push_latency_seconds_count{type="CDS"}' not in text  # no response of it yet


def test_a_sotw_subscription_holds_a_full_state_as_its_resources_until_a_new_ask():
    """A full state of every resource is booked as the resources it carried (not name by name, 2,100
    clusters at R): the versions held are read from them, and a new ask forgets them as it forgets
    names booked one by one."""
    from zpilot.xds.snapshot import TypeResources
    from zpilot.xds.subscription import Subscription

    resources = TypeResources.of(CLUSTER_TYPE, {"c1": Secret(name="c1"), "c2": Secret(name="c2")})
    sub = Subscription(CLUSTER_TYPE)
    sub.known = {"c1": "old"}
    assert sub.held_version("c1") == "old" and sub.held_version("c2") is None
    sub.sent_whole = resources
    assert [sub.held_version(n) for n in ("c1", "c2", "c3")] == [resources.items["c1"].version,
                                                                 resources.items["c2"].version, None]
    sub.forget_known()
    assert sub.sent_whole is None and sub.held_version("c1") is None

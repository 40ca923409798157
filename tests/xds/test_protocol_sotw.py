"""State-of-the-world ADS protocol rules (xds-protocol-notes.md), with a Python gRPC client."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from zpilot.xds.limits import Limits
from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, SECRET_TYPE
from zpilot.xds.sotw import SotwStream

from .ads_client import AdsClient
from .e2e_util import debug_json


def names(response) -> list[str]:
    """The names of a response's resources, in order."""
    by_type = {CLUSTER_TYPE: (Cluster, "name"), ENDPOINT_TYPE: (ClusterLoadAssignment, "cluster_name"),
               LISTENER_TYPE: (Listener, "name"), SECRET_TYPE: (Secret, "name")}
    out = []
    for any_ in response.resources:
        cls, attr = by_type[any_.type_url]
        out.append(getattr(cls.FromString(any_.value), attr))
    return out


@pytest.fixture
async def client_factory():
    clients: list[AdsClient] = []

    def make(port: int, **kw) -> AdsClient:
        client = AdsClient(port, **kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_wildcard_cds_ack_and_no_resend(fake_plane, client_factory):
    plane, _ = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(CLUSTER_TYPE, node_name="a")
    r = await c.recv()
    assert r.type_url == CLUSTER_TYPE and r.nonce and r.version_info
    assert names(r) == ["c1", "c2"]
    assert r.control_plane.identifier == "zpilot"
    c.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)  # ACK
    await c.expect_silence()
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="a")
    [cds] = conn["types"]
    assert cds["state"] == "SYNCED" and cds["acked_version"] == r.version_info and cds["subscribed"] == "*"


async def test_eds_and_sds_are_served_by_name_only(fake_plane, client_factory):
    plane, _ = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(ENDPOINT_TYPE, names=["c2", "nope"], node_name="a")
    r = await c.recv()
    assert names(r) == ["c2"]
    c.request(SECRET_TYPE, names=["s1", "someone-elses-secret"])
    r = await c.recv()
    assert names(r) == ["s1"]
    assert plane.metrics.value("zpilot_xds_unserved_resource_names_total", type="SDS") == 1
    assert plane.metrics.value("zpilot_xds_unserved_resource_names_total", type="EDS") == 1


async def eds_acked_then_changed(fake_plane, client_factory, names=("c1",), changed="c1", ip="10.0.0.9"):
    """A client subscribed to EDS ``names`` and ACKing them; then ``changed`` gets the endpoint ``ip``:
    (plane, client, first, second)."""
    plane, world = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(ENDPOINT_TYPE, names=list(names), node_name="a")
    first = await c.recv()
    c.request(ENDPOINT_TYPE, names=list(names), nonce=first.nonce, version=first.version_info)
    await c.expect_silence()
    world.nodes["a"].clusters[changed] = [ip]
    await plane.update(world.index())
    second = await c.recv()
    return plane, c, first, second


async def test_stale_nonce_is_ignored(fake_plane, client_factory):
    plane, c, first, second = await eds_acked_then_changed(fake_plane, client_factory)
    assert second.nonce != first.nonce and second.version_info != first.version_info
    # A request still answering the first response (with new names) is stale: ignored.
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=first.nonce, version=first.version_info)
    await c.expect_silence()
    assert plane.metrics.value("zpilot_xds_stale_requests_total", type="EDS") == 1
    # The same names with the current nonce are answered: with the one the client lacks.
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=second.nonce, version=second.version_info)
    third = await c.recv()
    assert names(third) == ["c2"]


async def test_nack_is_recorded_and_the_rejected_version_not_resent(fake_plane, client_factory):
    plane, world = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(CLUSTER_TYPE, node_name="a")
    r = await c.recv()
    c.request(CLUSTER_TYPE, nonce=r.nonce, version="", error="cluster c1: bad config")
    await c.expect_silence(0.5)
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="a")
    [cds] = conn["types"]
    assert cds["state"] == "NACKED" and cds["nack_count"] == 1
    assert cds["last_nack"]["error"] == "cluster c1: bad config"
    assert cds["last_nack"]["version"] == r.version_info
    assert plane.metrics.value("zpilot_xds_nacks_total", type="CDS") == 1
    # An unrelated model update that leaves node a unchanged does not resend the rejected version.
    world.nodes["b"].clusters["c9"] = ["10.0.0.9"]
    await plane.update(world.index())
    await c.expect_silence(0.5)
    # A changed config is sent.
    world.nodes["a"].clusters["c3"] = ["10.0.0.3"]
    await plane.update(world.index())
    fixed = await c.recv()
    assert names(fixed) == ["c1", "c2", "c3"]
    c.request(CLUSTER_TYPE, nonce=fixed.nonce, version=fixed.version_info)
    await asyncio.sleep(0.1)
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="a")
    assert conn["types"][0]["state"] == "SYNCED"


async def test_unchanged_nodes_get_no_push(fake_plane, client_factory):
    plane, world = await fake_plane()
    a, b = client_factory(plane.xds_port), client_factory(plane.xds_port)
    for client, node in ((a, "a"), (b, "b")):
        client.request(CLUSTER_TYPE, node_name=node)
        r = await client.recv()
        client.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)
    world.nodes["b"].clusters["c5"] = ["10.0.0.5"]
    report = await plane.update(world.index())
    assert list(report.changed) == ["b"] and report.unchanged == ["a"]
    assert names(await b.recv()) == ["c1", "c5"]
    await a.expect_silence()


async def test_responses_follow_push_order_whatever_the_request_order(fake_plane, client_factory):
    plane, _ = await fake_plane()
    c = client_factory(plane.xds_port)
    # A reconnecting Envoy sends all four at once; here even in the worst order.
    c.request(LISTENER_TYPE, node_name="a", version="old")
    c.request(SECRET_TYPE, names=["s1"], version="old")
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], version="old")
    c.request(CLUSTER_TYPE, version="old")
    got = [(await c.recv()).type_url for _ in range(4)]
    assert got == [CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE, LISTENER_TYPE]


async def eds_synced(fake_plane, client_factory):
    """A client of node a with CDS and EDS (c1, c2) ACKed: (plane, world, client, cds, eds)."""
    plane, world = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(CLUSTER_TYPE, node_name="a")
    cds = await c.recv()
    c.request(CLUSTER_TYPE, nonce=cds.nonce, version=cds.version_info)
    c.request(ENDPOINT_TYPE, names=["c1", "c2"])
    eds = await c.recv()
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=eds.nonce, version=eds.version_info)
    await c.expect_silence()
    return plane, world, c, cds, eds


async def test_eds_carries_only_the_changed_assignments(fake_plane, client_factory):
    plane, world, c, _, eds = await eds_synced(fake_plane, client_factory)
    assert names(eds) == ["c1", "c2"]
    world.nodes["a"].clusters["c2"] = ["10.0.0.22"]  # c2's endpoints change, c1's do not
    await plane.update(world.index())
    eds2 = await c.recv()
    assert eds2.type_url == ENDPOINT_TYPE and names(eds2) == ["c2"]
    assert ClusterLoadAssignment.FromString(eds2.resources[0].value).endpoints[0].lb_endpoints[0].endpoint.address \
        .socket_address.address == "10.0.0.22"
    # version_info stands for every subscribed assignment, as the client now holds them
    items = plane.cache.get_snapshot("a").resources(ENDPOINT_TYPE).select(["c1", "c2"])
    from zpilot.xds.snapshot import names_version

    assert eds2.version_info == names_version(items) != eds.version_info
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=eds2.nonce, version=eds2.version_info)
    await c.expect_silence()
    # A reconnect (no nonce) is answered with every subscribed assignment.
    again = client_factory(plane.xds_port)
    again.request(ENDPOINT_TYPE, names=["c1", "c2"], node_name="a", version=eds2.version_info)
    assert names(await again.recv()) == ["c1", "c2"]
    # A name added on the open stream (a service added) is answered with that assignment alone: the
    # client holds the others, and a SotW EDS response leaves the assignments it does not carry as they are.
    world.nodes["a"].clusters["c3"] = ["10.0.0.3"]
    await plane.update(world.index())
    cds = await c.recv()
    assert cds.type_url == CLUSTER_TYPE
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "c3"], nonce=eds2.nonce, version=eds2.version_info)
    eds3 = await c.recv()
    assert names(eds3) == ["c3"]
    assert eds3.version_info == names_version(
        plane.cache.get_snapshot("a").resources(ENDPOINT_TYPE).select(["c1", "c2", "c3"]))
    # Names only let go need no answer; the next change still sends only what changed.
    c.request(ENDPOINT_TYPE, names=["c1", "c3"], nonce=eds3.nonce, version=eds3.version_info)
    await c.expect_silence()
    world.nodes["a"].clusters["c3"] = ["10.0.0.33"]
    await plane.update(world.index())
    eds4 = await c.recv()
    assert names(eds4) == ["c3"]


async def test_eds_of_an_added_or_changed_cluster_follows_cds(fake_plane, client_factory):
    """A cluster Envoy adds or changes warms until its assignment comes, even an unchanged one
    (envoy#13009): after a CDS response the assignments of the clusters it changed are sent
    again; an unchanged cluster is left alone (tests/xds/test_envoy_partial_eds.py: a real Envoy)."""
    plane, world, c, _, eds = await eds_synced(fake_plane, client_factory)
    # A cluster is added; c1 and c2 do not change: CDS, and EDS only when the client asks for c3.
    world.nodes["a"].clusters["c3"] = ["10.0.0.3"]
    await plane.update(world.index())
    cds2 = await c.recv()
    assert cds2.type_url == CLUSTER_TYPE and names(cds2) == ["c1", "c2", "c3"]
    c.request(CLUSTER_TYPE, nonce=cds2.nonce, version=cds2.version_info)
    await c.expect_silence()
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "c3"], nonce=eds.nonce, version=eds.version_info)
    eds2 = await c.recv()
    assert names(eds2) == ["c3"]
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "c3"], nonce=eds2.nonce, version=eds2.version_info)
    await c.expect_silence()
    # c1 changes, its endpoints do not: CDS, then c1's assignment again (and only it), same version.
    world.nodes["a"].timeouts["c1"] = 5
    await plane.update(world.index())
    cds3, eds3 = await c.recv(), await c.recv()
    assert cds3.type_url == CLUSTER_TYPE and eds3.type_url == ENDPOINT_TYPE
    assert names(eds3) == ["c1"] and eds3.version_info == eds2.version_info and eds3.nonce != eds2.nonce


async def test_a_full_state_response_goes_to_grpc_before_the_names_it_carries_are_booked(
    fake_plane, client_factory, monkeypatch
):
    """A CDS response names every cluster of its node, thousands at R, and a pod's own node's CDS is
    the first response of its change, ahead of every other stream's (snapshot_cache.py): which names
    it carries is booked once gRPC has it, so that booking does not hold the change's other streams.
    What its answer is matched against (its version and nonce) is booked before, and the EDS that
    follows still knows which clusters it added or changed."""
    plane, world, c, _, eds = await eds_synced(fake_plane, client_factory)
    at_write: list[tuple[str, str | None, bool]] = []
    streams: list[SotwStream] = []
    write = SotwStream.write

    async def watched(self, chunks):
        sub = self.subscriptions[CLUSTER_TYPE]
        at_write.append((self.node, sub.sent_nonce, sub.held_version("c3") is not None))
        streams.append(self)
        await write(self, chunks)

    monkeypatch.setattr(SotwStream, "write", watched)
    world.nodes["a"].clusters["c3"] = ["10.0.0.3"]
    await plane.update(world.index())
    cds2 = await c.recv()
    assert names(cds2) == ["c1", "c2", "c3"]
    assert at_write == [("a", cds2.nonce, False)]  # matched against already, its names not booked yet
    cds = streams[0].subscriptions[CLUSTER_TYPE]
    for _ in range(100):  # booked as soon as gRPC is done with it
        if cds.held_version("c3") is not None:
            break
        await asyncio.sleep(0.01)
    assert all(cds.held_version(n) is not None for n in ("c1", "c2", "c3")) and "c3" in cds.ever_served
    c.request(CLUSTER_TYPE, nonce=cds2.nonce, version=cds2.version_info)
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "c3"], nonce=eds.nonce, version=eds.version_info)
    eds2 = await c.recv()
    assert names(eds2) == ["c3"]
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "c3"], nonce=eds2.nonce, version=eds2.version_info)
    await c.expect_silence()
    # c1 changes: its assignment follows the CDS response (it warms), found after that write
    world.nodes["a"].timeouts["c1"] = 5
    await plane.update(world.index())
    cds3, eds3 = await c.recv(), await c.recv()
    assert cds3.type_url == CLUSTER_TYPE and names(eds3) == ["c1"]


async def test_unsubscribe(fake_plane, client_factory):
    plane, world = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(ENDPOINT_TYPE, names=["c1"], node_name="a")
    r = await c.recv()
    c.request(ENDPOINT_TYPE, names=[], nonce=r.nonce, version=r.version_info)  # unsubscribe from everything
    await c.expect_silence()
    world.nodes["a"].clusters["c1"] = ["10.0.0.7"]
    await plane.update(world.index())
    await c.expect_silence()
    # LDS: legacy wildcard, then explicit names, then an empty list means none (not all).
    c.request(LISTENER_TYPE)
    r = await c.recv()
    assert names(r) == ["l1"]
    c.request(LISTENER_TYPE, names=["l1"], nonce=r.nonce, version=r.version_info)
    r = await c.recv()
    assert names(r) == ["l1"]
    c.request(LISTENER_TYPE, names=[], nonce=r.nonce, version=r.version_info)
    await c.expect_silence()
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="a")
    assert {t["type"]: t["subscribed"] for t in conn["types"]} == {"EDS": [], "LDS": []}


async def test_unknown_node_gets_empty_config_then_its_config(fake_plane, client_factory):
    plane, world = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(CLUSTER_TYPE, node_name="newcomer")
    r = await c.recv()
    assert list(r.resources) == []
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="newcomer")
    assert conn["known_node"] is False
    c.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)
    from .fake_world import NodeSpec

    world.nodes["newcomer"] = NodeSpec(clusters={"n1": []})
    await plane.update(world.index())
    assert names(await c.recv()) == ["n1"]


@pytest.mark.parametrize(
    "payload, reason, message",
    [
        (b"\xff\xff\xff\xff", "unparseable", "cannot parse"),
        (None, "unknown_type", "unknown type URL"),
        (b"", "no_node", "names no node"),
    ],
    ids=["garbage", "unknown-type", "no-node"],
)
async def test_bad_requests_end_only_their_stream(fake_plane, client_factory, payload, reason, message):
    plane, world = await fake_plane()
    good = client_factory(plane.xds_port)
    good.request(CLUSTER_TYPE, node_name="a")
    r = await good.recv()
    good.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)
    bad = client_factory(plane.xds_port)
    if payload is None:
        bad.request("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", node_name="a")
    else:
        bad.send(payload)
    code, details = await bad.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert plane.metrics.value("zpilot_xds_rejected_requests_total", reason=reason) == 1
    # The other stream still works and still gets pushes.
    world.nodes["a"].clusters["c4"] = ["10.0.0.4"]
    await plane.update(world.index())
    assert names(await good.recv()) == ["c1", "c2", "c4"]


async def test_unknown_type_after_a_good_start_is_refused(fake_plane, client_factory):
    plane, _ = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(CLUSTER_TYPE, node_name="a")
    await c.recv()
    c.request("type.googleapis.com/not.a.Type")
    code, details = await c.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not.a.Type" in details
    assert await debug_json(plane.debug_port, "/debug/syncz", node="a") == []  # the stream is gone


async def test_oversized_request_is_refused_without_harm(fake_plane, client_factory):
    plane, world = await fake_plane(limits=Limits(max_request_bytes=64 * 1024))
    good = client_factory(plane.xds_port)
    good.request(CLUSTER_TYPE, node_name="a")
    await good.recv()
    big = client_factory(plane.xds_port, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)])
    big.request(ENDPOINT_TYPE, names=[f"cluster-{i:06d}" for i in range(20_000)], node_name="a")
    code, _ = await big.status()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    world.nodes["a"].clusters["c4"] = ["10.0.0.4"]
    await plane.update(world.index())
    assert names(await good.recv()) == ["c1", "c2", "c4"]


async def test_random_garbage_never_hurts_the_server(fake_plane, client_factory):
    import random

    plane, world = await fake_plane()
    good = client_factory(plane.xds_port)
    good.request(CLUSTER_TYPE, node_name="a")
    r = await good.recv()
    good.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)
    rng = random.Random(1234)
    valid = DiscoveryRequestBytes.example()
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(20)]
    # Truncated and bit-flipped versions of a valid request, which are harder to tell from the real thing.
    payloads += [valid[: rng.randrange(1, len(valid))] for _ in range(10)]
    for _ in range(10):
        flipped = bytearray(valid)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        payloads.append(bytes(flipped))
    for payload in payloads:
        bad = client_factory(plane.xds_port)
        bad.send(payload)
        try:
            code, _ = await bad.status(timeout=0.5)
        except asyncio.TimeoutError:
            # A flipped bit can leave a valid request for node "a" (or another node): it is answered.
            continue
        assert code == grpc.StatusCode.INVALID_ARGUMENT, payload
    world.nodes["a"].clusters["c4"] = ["10.0.0.4"]
    await plane.update(world.index())
    assert names(await good.recv()) == ["c1", "c2", "c4"]
    assert len(plane.registry) >= 1


class DiscoveryRequestBytes:
    @staticmethod
    def example() -> bytes:
        from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

        from .ads_client import node

        return DiscoveryRequest(type_url=CLUSTER_TYPE, node=node("a")).SerializeToString()


async def test_random_subscriptions_and_changes_converge(fake_plane, client_factory):
    """SotW EDS: after any sequence of subscription and config changes, a client that merges each
    response's assignments by name (as Envoy does) holds every subscribed assignment that exists,
    with the current content."""
    import random

    plane, world = await fake_plane()
    rng = random.Random(11)
    universe = [f"c{i}" for i in range(6)]
    world.nodes["a"].clusters = {n: [f"10.0.0.{i}"] for i, n in enumerate(universe[:3])}
    await plane.update(world.index())
    c = client_factory(plane.xds_port)
    have: dict[str, bytes] = {}
    last = None
    subscribed: set[str] = set()

    async def drain() -> None:
        nonlocal last, have
        while True:
            try:
                r = await c.recv(timeout=0.15)
            except asyncio.TimeoutError:
                return
            last = r
            # as Envoy: each assignment replaces its cluster's, the others stay
            have.update({ClusterLoadAssignment.FromString(a.value).cluster_name: a.value for a in r.resources})
            c.request(ENDPOINT_TYPE, names=sorted(subscribed), nonce=r.nonce, version=r.version_info)

    for step in range(30):
        op = rng.choice(["names", "change", "add", "remove"])
        if op == "names" or last is None:
            subscribed = set(rng.sample(universe, rng.randint(0 if last else 1, 4)))
            if last is None:
                c.request(ENDPOINT_TYPE, names=sorted(subscribed), node_name="a")
            else:
                c.request(ENDPOINT_TYPE, names=sorted(subscribed), nonce=last.nonce, version=last.version_info)
            have = {n: v for n, v in have.items() if n in subscribed}  # a dropped name: the client drops it
        else:
            clusters = world.nodes["a"].clusters
            name = rng.choice(universe)
            if op == "remove":
                clusters.pop(name, None)
            else:
                clusters[name] = [f"10.1.{step}.{rng.randint(1, 9)}"]
            await plane.update(world.index())
        await drain()
        items = plane.cache.get_snapshot("a").resources(ENDPOINT_TYPE).items
        expected = {n: items[n].any for n in subscribed if n in items}
        from google.protobuf import any_pb2

        # A subscribed name the config no longer has keeps what the client had (Envoy drops it with its cluster).
        assert {n: v for n, v in have.items() if n in items} == {
            n: any_pb2.Any.FromString(v).value for n, v in expected.items()}, (step, op)
        assert have.keys() <= subscribed


async def test_unsubscribe_overtaken_by_a_response_is_honoured(fake_plane, client_factory):
    """A client dropping its last EDS name while our EDS response is in flight never ACKs that
    response: the type shows UNSUBSCRIBED and the connection synced, not STALE forever."""
    plane, c, first, second = await eds_acked_then_changed(fake_plane, client_factory)
    assert second.nonce != first.nonce
    c.request(ENDPOINT_TYPE, names=[], nonce=first.nonce, version=first.version_info)  # stale, unsubscribing
    await c.expect_silence()
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="a")
    [eds] = conn["types"]
    assert eds["state"] == "UNSUBSCRIBED" and eds["subscribed"] == []
    assert conn["synced"] is True


async def test_names_served_before_and_removed_are_churn_not_unserved(fake_plane, client_factory, caplog):
    """A cluster removed from the config is still named by the client's EDS request until it has
    taken in the CDS update: a debug line, not an INFO line, and not counted as unserved. A name
    this stream was never served is counted, once while it stays requested."""
    import logging

    caplog.set_level(logging.DEBUG, logger="zpilot.xds")
    plane, world = await fake_plane()
    c = client_factory(plane.xds_port)
    c.request(CLUSTER_TYPE, node_name="a")
    cds = await c.recv()
    c.request(CLUSTER_TYPE, nonce=cds.nonce, version=cds.version_info)
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "never"])
    eds = await c.recv()
    assert names(eds) == ["c1", "c2"]
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "never"], nonce=eds.nonce, version=eds.version_info)
    await c.expect_silence()
    unserved = "zpilot_xds_unserved_resource_names_total"
    assert plane.metrics.value(unserved, type="EDS") == 1  # "never"
    caplog.clear()

    del world.nodes["a"].clusters["c2"]  # an ordinary change: CDS, then EDS (c1's endpoints changed too)
    world.nodes["a"].clusters["c1"] = ["10.0.0.11"]
    await plane.update(world.index())
    cds2, eds2 = await c.recv(), await c.recv()
    assert (cds2.type_url, eds2.type_url) == (CLUSTER_TYPE, ENDPOINT_TYPE) and names(eds2) == ["c1"]
    assert plane.metrics.value(unserved, type="EDS") == 1  # neither c2 (served before) nor "never" again
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "asked for" in r.getMessage()]
    assert info == []
    assert any("still asks for EDS ['c2'], served before" in r.getMessage() and r.levelno == logging.DEBUG
               for r in caplog.records)
    # The client catches up and drops c2; asking for it again later is churn still (it was served here).
    c.request(CLUSTER_TYPE, nonce=cds2.nonce, version=cds2.version_info)
    c.request(ENDPOINT_TYPE, names=["c1"], nonce=eds2.nonce, version=eds2.version_info)
    await c.expect_silence()  # a name let go needs no answer
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=eds2.nonce, version=eds2.version_info)
    eds4 = await c.recv()
    assert plane.metrics.value(unserved, type="EDS") == 1
    # Every new ask for a name never served counts (node authorization watches SDS this way).
    c.request(ENDPOINT_TYPE, names=["c1", "never"], nonce=eds4.nonce, version=eds4.version_info)
    await c.recv()
    assert plane.metrics.value(unserved, type="EDS") == 2


async def test_every_push_records_a_push_latency_sample(fake_plane, client_factory):
    """One sample per type a model change reaches a stream with: an EDS-only change records an EDS
    sample, a changed cluster records CDS and the EDS answered after it. Initial responses and
    answers to requests from the same snapshot are not pushes."""
    plane, world = await fake_plane()

    def samples(kind: str) -> float:
        return plane.metrics.value("zpilot_xds_push_latency_seconds_count", type=kind)

    c = client_factory(plane.xds_port)
    c.request(CLUSTER_TYPE, node_name="a")
    cds = await c.recv()
    c.request(CLUSTER_TYPE, nonce=cds.nonce, version=cds.version_info)
    c.request(ENDPOINT_TYPE, names=["c1", "c2"])
    eds = await c.recv()
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=eds.nonce, version=eds.version_info)
    await c.expect_silence()
    assert (samples("CDS"), samples("EDS")) == (0, 0)

    world.nodes["a"].clusters["c1"] = ["10.0.0.9"]  # endpoints only
    await plane.update(world.index())
    eds = await c.recv()
    assert eds.type_url == ENDPOINT_TYPE
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=eds.nonce, version=eds.version_info)
    await c.expect_silence()
    assert (samples("CDS"), samples("EDS")) == (0, 1)

    world.nodes["a"].clusters["c3"] = ["10.0.0.3"]  # a cluster added: CDS (no endpoint it has changed)
    await plane.update(world.index())
    cds = await c.recv()
    assert cds.type_url == CLUSTER_TYPE
    assert (samples("CDS"), samples("EDS")) == (1, 1)

    # The client then subscribes to the new cluster's endpoints: same snapshot, no new sample.
    c.request(CLUSTER_TYPE, nonce=cds.nonce, version=cds.version_info)
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "c3"], nonce=eds.nonce, version=eds.version_info)
    eds = await c.recv()
    assert names(eds) == ["c3"]
    assert (samples("CDS"), samples("EDS")) == (1, 1)
    c.request(ENDPOINT_TYPE, names=["c1", "c2", "c3"], nonce=eds.nonce, version=eds.version_info)
    await c.expect_silence()

    world.nodes["a"].timeouts["c3"] = 3  # a cluster changed: CDS, and its endpoints again after it
    await plane.update(world.index())
    cds, eds = await c.recv(), await c.recv()
    assert (cds.type_url, eds.type_url) == (CLUSTER_TYPE, ENDPOINT_TYPE) and names(eds) == ["c3"]
    assert (samples("CDS"), samples("EDS")) == (2, 2)


async def test_a_name_let_go_in_a_stale_request_is_sent_again(fake_plane, client_factory):
    """While our response is in flight, the client lets go of c1 (a cluster removed) and asks for it
    again (re-added): both requests are stale and not answered, and its ACK names what it named
    before. It no longer holds c1's assignment, so c1 is sent again; c2, held all along, is not."""
    plane, c, first, second = await eds_acked_then_changed(fake_plane, client_factory, names=("c1", "c2"),
                                                           changed="c2", ip="10.0.0.29")
    assert names(first) == ["c1", "c2"] and names(second) == ["c2"]
    c.request(ENDPOINT_TYPE, names=["c2"], nonce=first.nonce, version=first.version_info)
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=first.nonce, version=first.version_info)
    await c.expect_silence()
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=second.nonce, version=second.version_info)
    again = await c.recv()
    assert names(again) == ["c1"]
    c.request(ENDPOINT_TYPE, names=["c1", "c2"], nonce=again.nonce, version=again.version_info)
    await c.expect_silence()

"""Incremental (delta) ADS protocol rules, with a Python gRPC client."""

from __future__ import annotations

import grpc
import pytest

from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE

from .ads_client import AdsClient
from .e2e_util import debug_json
from .fake_world import NodeSpec


@pytest.fixture
async def delta_client():
    clients: list[AdsClient] = []

    def make(port: int) -> AdsClient:
        client = AdsClient(port, delta=True)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def versions(response) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


async def test_initial_versions_are_not_resent_and_removals_are_sent(fake_plane, delta_client):
    plane, world = await fake_plane()
    c = delta_client(plane.xds_port)
    c.delta_request(CLUSTER_TYPE, node_name="a")
    first = await c.recv()
    assert sorted(versions(first)) == ["c1", "c2"] and list(first.removed_resources) == []
    assert all(r.resource.type_url == CLUSTER_TYPE for r in first.resources)
    c.delta_request(CLUSTER_TYPE, nonce=first.nonce)
    await c.expect_silence()

    # A new stream that already has c1 (same version), an old c2, and a cluster that no longer exists.
    known = versions(first)
    again = delta_client(plane.xds_port)
    again.delta_request(CLUSTER_TYPE, node_name="a",
                        initial={"c1": known["c1"], "c2": "outdated", "gone": "x"})
    r = await again.recv()
    assert sorted(versions(r)) == ["c2"]
    assert list(r.removed_resources) == ["gone"]

    # Removing a cluster from the config sends removed_resources; unchanged ones are not resent.
    del world.nodes["a"].clusters["c2"]
    await plane.update(world.index())
    r = await c.recv()
    assert list(r.resources) == [] and list(r.removed_resources) == ["c2"]


async def test_subscribe_unsubscribe_and_missing_names(fake_plane, delta_client):
    plane, world = await fake_plane()
    c = delta_client(plane.xds_port)
    c.delta_request(ENDPOINT_TYPE, subscribe=["c1", "nope"], node_name="a")
    r = await c.recv()
    assert sorted(versions(r)) == ["c1"] and list(r.removed_resources) == ["nope"]
    c.delta_request(ENDPOINT_TYPE, nonce=r.nonce)
    # Subscription changes count even with a stale nonce.
    c.delta_request(ENDPOINT_TYPE, subscribe=["c2"], unsubscribe=["c1"], nonce="stale")
    r = await c.recv()
    assert sorted(versions(r)) == ["c2"] and list(r.removed_resources) == []
    # An unsubscribed resource's changes are not sent.
    world.nodes["a"].clusters["c1"] = ["10.9.9.9"]
    await plane.update(world.index())
    await c.expect_silence()
    world.nodes["a"].clusters["c2"] = ["10.9.9.8"]
    await plane.update(world.index())
    r = await c.recv()
    assert sorted(versions(r)) == ["c2"]
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="a")
    assert conn["mode"] == "delta" and conn["types"][0]["subscribed"] == ["c2", "nope"]


async def test_secret_of_another_node_is_not_served(fake_plane, delta_client):
    plane, _ = await fake_plane()
    c = delta_client(plane.xds_port)
    c.delta_request(SECRET_TYPE, subscribe=["s1", "spiffe://cluster.local/ns/x/sa/other"], node_name="a")
    r = await c.recv()
    assert sorted(versions(r)) == ["s1"]
    assert list(r.removed_resources) == ["spiffe://cluster.local/ns/x/sa/other"]
    assert plane.metrics.value("zpilot_xds_unserved_resource_names_total", type="SDS") == 1


async def test_nack_recorded_and_not_resent(fake_plane, delta_client):
    plane, world = await fake_plane()
    c = delta_client(plane.xds_port)
    c.delta_request(CLUSTER_TYPE, node_name="a")
    r = await c.recv()
    c.delta_request(CLUSTER_TYPE, nonce=r.nonce, error="bad cluster c2")
    await c.expect_silence()
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="a")
    assert conn["types"][0]["state"] == "NACKED" and conn["types"][0]["last_nack"]["error"] == "bad cluster c2"
    world.nodes["b"].clusters["zz"] = []  # a change elsewhere: node a is not pushed
    await plane.update(world.index())
    await c.expect_silence()
    world.nodes["a"].clusters["c3"] = ["10.0.0.3"]  # the fix: a config change
    await plane.update(world.index())
    fixed = await c.recv()
    assert sorted(versions(fixed)) == ["c3"]


async def test_delta_garbage_ends_only_that_stream(fake_plane, delta_client):
    plane, world = await fake_plane()
    good = delta_client(plane.xds_port)
    good.delta_request(CLUSTER_TYPE, node_name="b")
    await good.recv()
    bad = delta_client(plane.xds_port)
    bad.delta_request("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", node_name="b")
    code, details = await bad.status()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown type URL" in details
    world.nodes["b"] = NodeSpec(clusters={"c1": ["10.0.0.1"], "c7": []})
    await plane.update(world.index())
    assert sorted(versions(await good.recv())) == ["c7"]


async def test_reconnect_is_answered_in_push_order(fake_plane, delta_client):
    from zpilot.xds.order import LISTENER_TYPE

    plane, _ = await fake_plane()
    c = delta_client(plane.xds_port)
    c.delta_request(LISTENER_TYPE, node_name="a", initial={"l1": "old"})
    c.delta_request(SECRET_TYPE, subscribe=["s1"], initial={"s1": "old"})
    c.delta_request(ENDPOINT_TYPE, subscribe=["c1"], initial={"c1": "old"})
    c.delta_request(CLUSTER_TYPE, initial={"c1": "old"})
    got = [(await c.recv()).type_url for _ in range(4)]
    assert got == [CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE, LISTENER_TYPE]


async def test_random_subscriptions_and_changes_converge(fake_plane, delta_client):
    """After any sequence of (un)subscriptions and config changes, the client holds exactly the
    subscribed resources that exist, at the server's versions: no stale, missing or extra ones."""
    import asyncio
    import random

    plane, world = await fake_plane()
    rng = random.Random(7)
    universe = [f"c{i}" for i in range(6)]
    world.nodes["a"].clusters = {n: [f"10.0.0.{i}"] for i, n in enumerate(universe[:3])}
    await plane.update(world.index())
    c = delta_client(plane.xds_port)
    have: dict[str, str] = {}
    subscribed: set[str] = set()
    first = True

    async def drain() -> None:
        while True:
            try:
                r = await c.recv(timeout=0.15)
            except asyncio.TimeoutError:
                return
            for res in r.resources:
                have[res.name] = res.version
            for name in r.removed_resources:
                have.pop(name, None)
            c.delta_request(ENDPOINT_TYPE, nonce=r.nonce)

    for step in range(30):
        op = rng.choice(["sub", "unsub", "change", "add", "remove"])
        if op == "sub" or first:
            names = set(rng.sample(universe, rng.randint(1, 3)))
            c.delta_request(ENDPOINT_TYPE, subscribe=sorted(names), node_name="a" if first else None)
            subscribed |= names
            first = False
        elif op == "unsub" and subscribed:
            names = set(rng.sample(sorted(subscribed), rng.randint(1, len(subscribed))))
            c.delta_request(ENDPOINT_TYPE, unsubscribe=sorted(names))
            subscribed -= names
            for n in names:
                have.pop(n, None)  # a client drops what it unsubscribed from
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
        expected = {n: items[n].version for n in subscribed if n in items}
        assert have == expected, (step, op)


async def test_a_removed_subscribed_name_is_removed_once_and_not_unserved(fake_plane, delta_client, caplog):
    """A cluster leaves the config while the client is still subscribed to its endpoints: one
    removal, no "asked for ... answered as removed" line, not counted as unserved, and later
    responses do not remove it again. A name never served is counted once."""
    import logging

    caplog.set_level(logging.INFO, logger="zpilot.xds")
    plane, world = await fake_plane()
    unserved = "zpilot_xds_unserved_resource_names_total"
    c = delta_client(plane.xds_port)
    c.delta_request(ENDPOINT_TYPE, subscribe=["c1", "c2", "never"], node_name="a")
    r = await c.recv()
    assert sorted(versions(r)) == ["c1", "c2"] and list(r.removed_resources) == ["never"]
    c.delta_request(ENDPOINT_TYPE, nonce=r.nonce)
    assert plane.metrics.value(unserved, type="EDS") == 1
    caplog.clear()

    del world.nodes["a"].clusters["c2"]
    await plane.update(world.index())
    r = await c.recv()
    assert list(r.resources) == [] and list(r.removed_resources) == ["c2"]
    c.delta_request(ENDPOINT_TYPE, nonce=r.nonce)
    world.nodes["a"].clusters["c1"] = ["10.0.0.8"]  # a later change: c2 is not removed again
    await plane.update(world.index())
    r = await c.recv()
    assert sorted(versions(r)) == ["c1"] and list(r.removed_resources) == []
    assert plane.metrics.value(unserved, type="EDS") == 1
    assert not [rec for rec in caplog.records if "asked for" in rec.getMessage()]


async def clusters_and_endpoints_acked(fake_plane, delta_client):
    """A client of node a that took and ACKed every cluster and the endpoints of c1 and c2:
    (plane, world, client, the endpoints' versions)."""
    plane, world = await fake_plane()
    c = delta_client(plane.xds_port)
    c.delta_request(CLUSTER_TYPE, node_name="a")
    r = await c.recv()
    c.delta_request(CLUSTER_TYPE, nonce=r.nonce)
    c.delta_request(ENDPOINT_TYPE, subscribe=["c1", "c2"])
    r = await c.recv()
    c.delta_request(ENDPOINT_TYPE, nonce=r.nonce)
    await c.expect_silence()
    return plane, world, c, versions(r)


async def test_delta_pushes_record_push_latency(fake_plane, delta_client):
    plane, world, c, _ = await clusters_and_endpoints_acked(fake_plane, delta_client)

    def samples(kind: str) -> float:
        return plane.metrics.value("zpilot_xds_push_latency_seconds_count", type=kind)

    assert (samples("CDS"), samples("EDS")) == (0, 0)
    world.nodes["a"].clusters["c1"] = ["10.0.0.9"]  # endpoints only
    await plane.update(world.index())
    r = await c.recv()
    assert r.type_url == ENDPOINT_TYPE and (samples("CDS"), samples("EDS")) == (0, 1)


async def test_endpoints_of_a_changed_cluster_are_sent_again_and_only_theirs(fake_plane, delta_client):
    """A cluster that changed warms until its endpoints come (envoy#13009): after the CDS response,
    its assignment is sent again at the version the client has; the other cluster's is not, and
    later endpoint changes still reach the client (each found from the changes all streams share)."""
    plane, world, c, endpoints = await clusters_and_endpoints_acked(fake_plane, delta_client)

    world.nodes["a"].timeouts["c1"] = 5
    await plane.update(world.index())
    r = await c.recv()
    assert r.type_url == CLUSTER_TYPE and sorted(versions(r)) == ["c1"]
    c.delta_request(CLUSTER_TYPE, nonce=r.nonce)
    r = await c.recv()
    assert r.type_url == ENDPOINT_TYPE and versions(r) == {"c1": endpoints["c1"]} and not r.removed_resources
    c.delta_request(ENDPOINT_TYPE, nonce=r.nonce)
    await c.expect_silence()

    world.nodes["a"].clusters["c2"] = ["10.0.0.7"]
    world.nodes["a"].clusters["c9"] = ["10.0.0.9"]  # a new cluster: CDS, then its endpoints (subscribed next)
    await plane.update(world.index())
    r = await c.recv()
    assert r.type_url == CLUSTER_TYPE and sorted(versions(r)) == ["c9"]
    c.delta_request(CLUSTER_TYPE, nonce=r.nonce)
    r = await c.recv()
    assert r.type_url == ENDPOINT_TYPE and sorted(versions(r)) == ["c2"]
    c.delta_request(ENDPOINT_TYPE, nonce=r.nonce, subscribe=["c9"])
    r = await c.recv()
    assert sorted(versions(r)) == ["c9"]

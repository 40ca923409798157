"""Streams closed abruptly, at any point of their life, leave nothing behind (issue 11.6).

Thousands of real gRPC streams, in this process, each cut short at a random point: before its
first request, while its first answer is on the way, after it, after its ACK, by a refused
request, or with its whole connection. Afterwards no stream may be left in the sync status
(``/debug/connections``, ``/debug/syncz``), in the streams gauge, or among the cache's watches.
Before the fix about one stream in a thousand or two stayed registered forever: the client's
cancellation reached the handler while its ``finally`` awaited the reader task, and the rest of
the cleanup was skipped.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)

from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE

from .ads_client import SERVICE, AdsClient, node
from .e2e_util import debug_json
from .envoy_util import eventually

STREAMS = 3000
CONCURRENT = 150
PER_CONNECTION = 30
FATES = ("at_once", "after_request", "after_response", "after_ack", "refused", "connection_dropped")


def first_request(delta: bool) -> bytes:
    if delta:
        return DeltaDiscoveryRequest(type_url=CLUSTER_TYPE, node=node("a")).SerializeToString()
    return DiscoveryRequest(type_url=CLUSTER_TYPE, node=node("a")).SerializeToString()


def ack(delta: bool, response) -> bytes:
    if delta:
        return DeltaDiscoveryRequest(type_url=CLUSTER_TYPE, response_nonce=response.nonce).SerializeToString()
    return DiscoveryRequest(type_url=CLUSTER_TYPE, response_nonce=response.nonce,
                            version_info=response.version_info).SerializeToString()


async def short_life(channel: grpc.aio.Channel, fate: str, delta: bool, rng: random.Random) -> None:
    """One stream, ended the way ``fate`` says, after a random pause where there is one."""
    method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
    response_type = DeltaDiscoveryResponse if delta else DiscoveryResponse
    outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def requests():
        while (item := await outgoing.get()) is not None:
            yield item

    call = channel.stream_stream(SERVICE + method, request_serializer=lambda b: b,
                                 response_deserializer=response_type.FromString)(requests())
    pause = rng.choice((0, 0, 0.0005, 0.002, 0.01))
    try:
        if fate != "at_once":
            outgoing.put_nowait(first_request(delta))
        if fate == "refused":
            outgoing.put_nowait(DiscoveryRequest(type_url=ENDPOINT_TYPE[:-3] + "Nope").SerializeToString())
        if fate in ("after_response", "after_ack", "refused", "connection_dropped"):
            response = await asyncio.wait_for(call.read(), 10)
            if fate == "after_ack" and response is not grpc.aio.EOF:
                outgoing.put_nowait(ack(delta, response))
        if pause:
            await asyncio.sleep(pause)
        if fate == "refused":
            await asyncio.wait_for(call.code(), 10)
    except grpc.aio.AioRpcError:
        pass  # the server ended it first (refused, or its connection is gone)
    finally:
        if fate != "connection_dropped":
            call.cancel()


async def connection(port: int, fates: list[tuple[str, bool]], seed: int, gate: asyncio.Semaphore) -> None:
    """One TCP connection carrying ``fates``' streams, a few at a time; dropped at the end
    while a stream is still open when any fate asks for it."""
    rng = random.Random(seed)
    # Each connection its own: without a local subchannel pool every channel shares one.
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        pending = []
        for fate, delta in fates:
            async with gate:
                task = asyncio.create_task(short_life(channel, fate, delta, rng))
                if fate == "connection_dropped":
                    pending.append(task)  # still open when the connection goes
                    await asyncio.sleep(rng.choice((0, 0.001, 0.005)))
                else:
                    await task
        await channel.close(grace=None)  # abrupt: every open stream is cut with its connection
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await channel.close()


async def test_abruptly_closed_streams_leave_nothing_behind(fake_plane):
    plane, _ = await fake_plane()
    rng = random.Random(20240611)
    lives = [(rng.choice(FATES), rng.random() < 0.5) for _ in range(STREAMS)]
    gate = asyncio.Semaphore(CONCURRENT)
    groups = [lives[i:i + PER_CONNECTION] for i in range(0, STREAMS, PER_CONNECTION)]
    await asyncio.gather(*(connection(plane.xds_port, g, seed, gate) for seed, g in enumerate(groups)))

    opened = sum(plane.metrics.value("zpilot_xds_streams_opened_total", mode=m) for m in ("sotw", "delta"))
    assert opened > STREAMS / 2  # most streams got far enough to be registered

    async def all_gone():
        left = {
            "registry": len(plane.registry),
            "gauge": sum(plane.metrics.value("zpilot_xds_streams", mode=m) for m in ("sotw", "delta")),
            "watches": plane.cache.watcher_count(),
        }
        assert left == {"registry": 0, "gauge": 0, "watches": 0}, left
        return left

    await eventually(all_gone, 20)
    assert await debug_json(plane.debug_port, "/debug/connections") == []
    assert await debug_json(plane.debug_port, "/debug/syncz") == []


def handler_tasks() -> set[asyncio.Task]:
    """gRPC's tasks running our RPC handlers (grpc.aio names them ``HandleExceptions[<method>]``)."""
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("HandleExceptions[") and not t.done()}


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize("moment", ["first_request", "answered", "half_closed", "refused"])
async def test_cancellations_during_cleanup_leave_nothing_behind(fake_plane, moment, delta):
    """gRPC cancels a handler's task when its client goes; if that lands while the stream's
    cleanup awaits, the cleanup must still complete. Here the handler is cancelled again and
    again (every loop iteration) from a point of its life until it ends, so every await of its
    cleanup is hit by a cancellation, deterministically."""
    plane, _ = await fake_plane()
    before = handler_tasks()
    client = AdsClient(plane.xds_port, delta=delta)
    try:
        (client.delta_request if delta else client.request)(CLUSTER_TYPE, node_name="a")
        if moment != "first_request":
            await client.recv()
        if moment == "half_closed":
            client.half_close()
        if moment == "refused":
            client.send(DiscoveryRequest(type_url="type.googleapis.com/not.a.Type").SerializeToString())

        async def handler():
            return handler_tasks() - before

        [task] = await eventually(handler, 5)
        if moment == "first_request":
            await eventually(lambda: asyncio.sleep(0, len(plane.registry)), 5)  # registered: cancel from here
        for _ in range(10_000):
            if task.done():
                break
            task.cancel()
            await asyncio.sleep(0)
        assert task.done()
    finally:
        await client.close()
    left = {"registry": len(plane.registry), "watches": plane.cache.watcher_count(),
            "gauge": sum(plane.metrics.value("zpilot_xds_streams", mode=m) for m in ("sotw", "delta"))}
    assert left == {"registry": 0, "watches": 0, "gauge": 0}

"""A push burst (push_burst.py): while the streams woken by a change send it, the clients' other
requests wait (handled afterwards, in order, none lost) and the garbage collector pauses; both
for at most ``max_seconds``."""

from __future__ import annotations

import asyncio
import gc

from zpilot.xds.observer import StreamObserver
from zpilot.xds.order import CLUSTER_TYPE
from zpilot.xds.push_burst import PushBurst
from zpilot.xds.sotw import SotwStream

from .test_protocol_sotw import client_factory, names  # noqa: F401  (client_factory: a fixture)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def until(condition) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 10)


async def test_a_burst_lasts_until_its_last_stream_and_pauses_the_collector_meanwhile():
    assert gc.isenabled()
    burst = PushBurst(max_seconds=60)
    a, b = object(), object()
    burst.begin(a)
    burst.begin(b)
    waiter = asyncio.create_task(burst.over())
    await settle()
    assert burst.active and not waiter.done() and not gc.isenabled() and burst.held == 1
    burst.end(a)
    burst.end(a)  # twice (close() after the send loop): no effect
    await settle()
    assert not waiter.done() and not gc.isenabled()
    burst.end(b)
    await asyncio.wait_for(waiter, 5)
    assert not burst.active and gc.isenabled() and burst.cut_short == 0
    await burst.over()  # no burst: returns at once, holds nothing
    assert burst.held == 1


async def test_a_burst_whose_stream_never_finishes_ends_after_max_seconds():
    burst = PushBurst(max_seconds=0.01)
    burst.begin(object())  # a client that does not read: its write never completes
    assert not gc.isenabled()
    await asyncio.wait_for(burst.over(), 5)
    assert burst.cut_short == 1 and not burst.active and gc.isenabled()


class Acks(StreamObserver):
    def __init__(self) -> None:
        self.acks: list[tuple[str, str]] = []

    def ack(self, stream, type_url, version, nonce) -> None:
        self.acks.append((stream.node, nonce))


async def test_a_request_arriving_during_a_burst_is_handled_once_it_is_over(fake_plane, client_factory):  # noqa: F811
    plane, _ = await fake_plane()
    acks = Acks()
    plane.ads.observer.add(acks)
    c = client_factory(plane.xds_port)
    c.request(CLUSTER_TYPE, node_name="a")
    r = await c.recv()
    burst = plane.ads.push_burst
    other = object()  # another stream, still sending a change
    burst.begin(other)
    c.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)  # its ACK
    await until(lambda: burst.held == 1 or acks.acks)  # read by the server: held back, or (wrongly) handled
    await settle()
    assert acks.acks == []
    burst.end(other)
    await until(lambda: acks.acks)
    assert acks.acks == [("a", r.nonce)]
    await c.expect_silence()


async def _synced(plane, client_factory, *nodes: str):  # noqa: F811
    clients = {}
    for node in nodes:
        c = client_factory(plane.xds_port)
        c.request(CLUSTER_TYPE, node_name=node)
        r = await c.recv()
        c.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)  # ACK
        clients[node] = c
    await until(lambda: not plane.ads.push_burst.active)
    return clients


async def test_a_change_to_two_real_streams_is_one_burst_ended_by_the_last_of_them(fake_plane, client_factory):  # noqa: F811
    plane, world = await fake_plane()
    clients = await _synced(plane, client_factory, "a", "b")
    burst = plane.ads.push_burst
    begun, cut_short = burst.begun, burst.cut_short
    world.nodes["a"].clusters["c4"] = ["10.0.0.4"]
    world.nodes["b"].clusters["c4"] = ["10.0.0.4"]
    await plane.update(world.index())
    for c in clients.values():
        assert "c4" in names(await c.recv())
    await until(lambda: not burst.active)
    # one burst, ended by its streams' sends (not by its timer), the collector running again
    assert (burst.begun, burst.cut_short) == (begun + 1, cut_short) and gc.isenabled()


async def test_a_stream_stuck_writing_an_earlier_change_is_left_out_of_the_next_burst(  # noqa: F811
    fake_plane, client_factory, monkeypatch
):
    """A client that stops reading holds its stream's write; it must not make every later burst
    last its whole ``max_seconds`` (holding every other stream's requests and the collector)."""
    plane, world = await fake_plane()
    clients = await _synced(plane, client_factory, "a", "b")
    burst = plane.ads.push_burst
    never = asyncio.Event()
    stuck: list[str] = []
    write = SotwStream.write

    async def write_unless_b(self, chunks):
        if self.info is not None and self.info.node == "b":
            stuck.append("b")
            await never.wait()  # node b's client reads nothing more
        await write(self, chunks)

    monkeypatch.setattr(SotwStream, "write", write_unless_b)
    cut_short = burst.cut_short
    for round_, cluster in enumerate(("c4", "c5")):
        world.nodes["a"].clusters[cluster] = ["10.0.0.4"]
        world.nodes["b"].clusters[cluster] = ["10.0.0.4"]
        await plane.update(world.index())
        assert cluster in names(await clients["a"].recv())
        await until(lambda: not burst.active)
        assert stuck == ["b"]
    # the first change's burst waited for b until its timer; the second one did not include b
    assert burst.cut_short == cut_short + 1 and gc.isenabled()

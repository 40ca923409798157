"""The envoy phase asks Envoy's ``/ready`` once Envoy's log says its workers start, and only every 100 ms
before (bench/scale.py ``_wait_live``): each ask is a request Envoy's main thread answers while it takes its
config, and asking every 20 ms overstated LIVE by up to 20 ms."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scale  # noqa: E402


class Running:
    returncode = None

    def poll(self):
        return None


class Exited:
    returncode = 1

    def poll(self):
        return 1


def test_ready_is_asked_every_100_ms_until_the_log_says_workers_start_then_at_once(tmp_path, monkeypatch):
    log = tmp_path / "envoy.log"
    log.write_bytes(b"[info][main] starting main dispatch loop\n")
    asks: list[float] = []
    started = time.monotonic()
    live_after = 0.35

    def is_live(admin: int) -> bool:
        asks.append(time.monotonic() - started)
        return time.monotonic() - started >= live_after and b"starting workers" in log.read_bytes()

    async def scenario() -> float | None:
        async def write_later() -> None:
            await asyncio.sleep(live_after)
            with open(log, "ab") as f:  # the line split over two writes: still seen
                f.write(b"[info][main] all dependencies initialized. starting ")
                f.flush()
                await asyncio.sleep(0.01)
                f.write(b"workers\n")

        writer = asyncio.create_task(write_later())
        live = await scale._wait_live(Running(), 1, log, started, timeout=5)
        await writer
        return live

    monkeypatch.setattr(scale, "_is_live", is_live)
    live = asyncio.run(scenario())
    assert live is not None and live >= live_after
    before = [t for t in asks if t < live_after]
    assert 1 <= len(before) <= 5  # every 100 ms, not every 20 (about 18 asks)


def test_an_envoy_that_exits_is_reported_with_its_log(tmp_path, monkeypatch):
    log = tmp_path / "envoy.log"
    log.write_bytes(b"[critical][main] error initializing config\n")
    monkeypatch.setattr(scale, "_is_live", lambda admin: False)
    with pytest.raises(RuntimeError, match="envoy exited 1: .*error initializing config"):
        asyncio.run(scale._wait_live(Exited(), 1, log, time.monotonic(), timeout=5))


def test_none_after_the_timeout(tmp_path, monkeypatch):
    log = tmp_path / "envoy.log"
    log.write_bytes(b"")
    monkeypatch.setattr(scale, "_is_live", lambda admin: False)
    assert asyncio.run(scale._wait_live(Running(), 1, log, time.monotonic(), timeout=0.2)) is None

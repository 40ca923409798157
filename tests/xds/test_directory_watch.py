"""The manifest directory watch: debounce rule and change detection."""

from __future__ import annotations

import asyncio
import time

from zpilot.kube.directory_watch import Debouncer, DirectoryWatch, fingerprint


def test_debounce_waits_for_quiet():
    d = Debouncer(quiet=0.1, max_delay=10.0)
    assert d.due(0.0) is None
    d.changed(1.0)
    assert d.due(1.05) is None
    d.changed(1.08)
    assert d.due(1.15) is None
    assert d.due(1.19) == 1.0  # reports when the burst began
    assert d.due(5.0) is None  # and resets


def test_debounce_fires_at_max_delay_under_constant_change():
    d = Debouncer(quiet=0.1, max_delay=10.0)
    t = 0.0
    fired = None
    while fired is None:
        d.changed(t)
        t += 0.05
        fired = d.due(t)
    assert fired == 0.0 and 10.0 <= t < 10.1


def test_fingerprint_sees_edits_additions_and_removals(tmp_path):
    (tmp_path / "a.yaml").write_text("kind: Node\n")
    first = fingerprint(tmp_path)
    (tmp_path / "b.yaml").write_text("kind: Node\n")
    second = fingerprint(tmp_path)
    assert second != first
    (tmp_path / "notes.txt").write_text("ignored")
    assert fingerprint(tmp_path) == second
    (tmp_path / "b.yaml").unlink()
    assert fingerprint(tmp_path) == first
    assert fingerprint(tmp_path / "missing") == frozenset()


async def test_watch_reports_one_burst_once(tmp_path):
    calls: list[float] = []

    async def on_change(first_seen: float) -> None:
        calls.append(first_seen)

    watch = DirectoryWatch(tmp_path, on_change, interval=0.01, quiet=0.1, max_delay=10.0)
    watch.prime()
    task = asyncio.create_task(watch.run())
    try:
        start = time.monotonic()
        for i in range(5):  # a burst of writes 20 ms apart
            (tmp_path / f"p{i}.yaml").write_text(f"n: {i}\n")
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 2
        while not calls and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert len(calls) == 1
        assert start <= calls[0] <= start + 0.1
    finally:
        task.cancel()


async def test_a_failing_reload_does_not_stop_the_watch(tmp_path):
    calls = 0

    async def on_change(first_seen: float) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("broken reload")

    watch = DirectoryWatch(tmp_path, on_change, interval=0.01, quiet=0.03)
    watch.prime()
    task = asyncio.create_task(watch.run())
    try:
        (tmp_path / "a.yaml").write_text("x: 1\n")
        await asyncio.sleep(0.2)
        (tmp_path / "b.yaml").write_text("x: 2\n")
        await asyncio.sleep(0.2)
        assert calls == 2
    finally:
        task.cancel()

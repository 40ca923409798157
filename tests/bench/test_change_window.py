"""bench/scale.py's ``_one_change`` times the model and the producer from the debounce window's end:
its own readings of /proc (the host's steal, the threads' wait for a core: 0.5-0.6 ms at R) are
taken before that, not counted in the model's time nor in any stream's sent time."""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scale  # noqa: E402


class _Clock:
    """A monotonic clock that moves 1 us a reading, and 1,000 s at each of the bench's /proc readings."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        self.now += 1e-6
        return self.now

    def probe(self, value):
        self.now += 1000.0
        return value


class _Plane:
    async def update(self, index, changed_at=None):
        return types.SimpleNamespace(changed=[])


class _Models:
    def build(self, model):
        return model


def test_the_benchs_own_readings_are_not_in_the_model_time(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(scale, "time", types.SimpleNamespace(monotonic=clock.monotonic, process_time=lambda: 0.0))
    monkeypatch.setattr(scale, "_steal_ms", lambda: clock.probe(0))
    monkeypatch.setattr(scale, "_runqueue_ms", lambda: clock.probe(0.0))

    async def quiet(*args, **kwargs):
        return True

    monkeypatch.setattr(scale, "_quiet", quiet)
    sent = types.SimpleNamespace(records=[])
    result = asyncio.run(scale._one_change(object(), _Plane(), sent, scale.ClientRecords(), set(), _Models()))
    assert result["model_ms"] < 1.0  # the clock moved 1,000 s in each reading: none is in the window
    assert result["producer_ms"] < 1.0

"""The churn table names each change whose last send came after issue 13's 50 ms, with the host's
steal and the wait for a core in its window (bench/scale.py ``_late``), so that a late run says
whether the time was ours or the host's; the p99 itself keeps every change."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scale  # noqa: E402


def change(last: float, steal: int | None, waited: float | None = 1.0) -> dict:
    return {"sent_ms": [10.0, last, 20.0], "steal_ms": steal, "runqueue_ms": waited}


def test_only_changes_whose_last_send_is_after_50_ms_are_listed_with_their_steal():
    results = [change(44.0, 0), change(64.6, 40), change(50.0, 0), change(141.1, 140, 3.5), {"sent_ms": [],
               "steal_ms": 0, "runqueue_ms": 0.0}]
    assert scale._late(results) == [
        {"change": 1, "last_sent_ms": 64.6, "steal_ms": 40, "runqueue_ms": 1.0},
        {"change": 3, "last_sent_ms": 141.1, "steal_ms": 140, "runqueue_ms": 3.5},
    ]

"""The benchmark keeps the simulated ztunnels' JSON lines as bytes while a change is measured and
parses them when asked (bench/scale.py ``ClientRecords``): a line cut between two reads must wait
for its end, and each kind of line must land where the benchmark looks for it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import scale  # noqa: E402


def line(record: dict) -> bytes:
    return json.dumps(record).encode() + b"\n"


def test_a_line_cut_between_reads_is_parsed_once_whole():
    records = scale.ClientRecords()
    first = line({"node": "node-0", "type": "Cluster", "t": 1.0, "bytes": 10})
    second = line({"node": "node-1", "type": "Listener", "t": 2.0, "bytes": 20})
    records.feed(first + second[:7])
    assert [r["node"] for r in records.parse().received] == ["node-0"]
    records.feed(second[7:])
    assert [r["node"] for r in records.parse().received] == ["node-0", "node-1"]
    assert records.bytes_in == len(first) + len(second)


def test_ready_and_holdings_are_kept_apart_from_responses():
    records = scale.ClientRecords()
    records.feed(line({"ready": "node-0"}) + line({"holds": "node-0", "eds": "abc"}))
    records.parse()
    assert records.ready == {"node-0"}
    assert records.holdings == {"node-0": "abc"}
    assert records.received == []

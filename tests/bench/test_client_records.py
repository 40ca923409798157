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


class _Sent:
    def __init__(self) -> None:
        self.records: list[tuple] = []


async def test_quiet_waits_for_the_clients_to_hold_every_byte_sent():
    """A client that has not read what was sent (niced, on a busy machine) is not quiet yet, however
    long nothing was written; once its records show every byte, it is."""
    import asyncio

    sent, records = _Sent(), scale.ClientRecords()
    sent.records.append((0.0, "node-0", "Cluster", 0.0, 30))
    records.feed(line({"node": "node-0", "type": "Cluster", "t": 1.0, "bytes": 10}))
    quiet = asyncio.create_task(scale._quiet(sent, 0.01, records))
    await asyncio.sleep(0.1)
    assert not quiet.done()
    records.feed(line({"node": "node-0", "type": "Cluster", "t": 2.0, "bytes": 20}))
    await asyncio.wait_for(quiet, 5)
    assert quiet.result() is True
    # and it gives up waiting for a client that never reads
    sent.records.append((0.0, "node-1", "Cluster", 0.0, 5))
    assert await asyncio.wait_for(scale._quiet(sent, 0.01, records, catch_up_seconds=0.05), 5) is False


async def test_quiet_giving_up_says_so(capsys):
    """Giving up on the clients is said (stderr, and the change's ``caught_up``): it returned as if they had
    read everything, and the late answers were counted as the next change's without a trace."""
    sent, records = _Sent(), scale.ClientRecords()
    sent.records.append((0.0, "node-0", "Cluster", 0.0, 30))
    records.feed(line({"node": "node-0", "type": "Cluster", "t": 1.0, "bytes": 10}))
    assert await scale._quiet(sent, 0.01, records, catch_up_seconds=0.0) is False
    assert "the clients still lack 20 of the 30 bytes sent" in capsys.readouterr().err

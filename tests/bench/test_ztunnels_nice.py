"""The benchmark's simulated ztunnels at ``--nice 19`` take only the CPU the control plane leaves.
With the scheduler's autogroups on (Linux's default) the CPU is shared between sessions first and a
nice value ranks a process only within its session: so the clients run in the control plane's
session (a process group of their own, to be killed as one), at nice 19."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import scale  # noqa: E402


async def test_the_churn_clients_run_niced_in_the_control_planes_session() -> None:
    from zpilot.model.index import MeshIndex
    from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests

    shape = Shape(nodes=2, pods=6, services=2)
    index = MeshIndex.build(synthetic_cluster(synthetic_manifests(shape)))
    params = {"layout": "linear", "shape": dataclasses.asdict(shape), "clients": 2, "xds": "sotw",
              "clients_nice": 19, "sync_timeout": 60}
    async with scale.serving(params, index) as served:
        pid = served.clients.pid
        assert len(served.records.ready) == 2
        assert os.getsid(pid) == os.getsid(0)  # the same session, so the same autogroup where there are any
        assert os.getpgid(pid) == pid != os.getpgid(0)  # a group of their own: killed as one
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text() == Path("/proc/self/autogroup").read_text()


async def test_the_clients_records_count_every_byte_the_server_sent() -> None:
    """What ``scale._quiet`` compares (the clients hold every byte sent) adds up, over both protocols."""
    from zpilot.model.index import MeshIndex
    from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests

    shape = Shape(nodes=2, pods=6, services=2)
    index = MeshIndex.build(synthetic_cluster(synthetic_manifests(shape)))
    for xds in ("sotw", "delta"):
        params = {"layout": "linear", "shape": dataclasses.asdict(shape), "clients": 2, "xds": xds,
                  "clients_nice": 19, "sync_timeout": 60}
        async with scale.serving(params, index) as served:
            received = sum(r["bytes"] for r in served.records.parse().received)
            assert received == sum(r[4] for r in served.sent.records) > 0, xds

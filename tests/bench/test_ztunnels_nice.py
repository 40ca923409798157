"""The benchmark's simulated ztunnels at ``--nice 19`` take only the CPU the control plane leaves:
with scheduler autogroups on, that takes their session's autogroup niced too (scale.py starts them
in a session of their own, where a nice value alone ranks them only among themselves)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import scale  # noqa: E402

AUTOGROUP = Path("/proc/self/autogroup")


def autogroups_on() -> bool:
    try:
        return "autogroup-" in AUTOGROUP.read_text()
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not autogroups_on(), reason="no scheduler autogroups on this kernel")


def test_renice_autogroup_sets_the_sessions_nice_value() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import ztunnels; from pathlib import Path;"
         " print(ztunnels.renice_autogroup(19)); print(Path('/proc/self/autogroup').read_text())", str(BENCH)],
        capture_output=True, text=True, start_new_session=True, check=True,
    )
    done, group = child.stdout.splitlines()[:2]
    assert done == "True"
    assert group.endswith("nice 19")
    assert not AUTOGROUP.read_text().strip().endswith("nice 19")  # the caller's own session untouched


async def test_the_churn_clients_are_niced_with_their_autogroup_once_synced() -> None:
    from zpilot.model.index import MeshIndex
    from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests

    shape = Shape(nodes=2, pods=6, services=2)
    index = MeshIndex.build(synthetic_cluster(synthetic_manifests(shape)))
    params = {"layout": "linear", "shape": dataclasses.asdict(shape), "clients": 2, "xds": "sotw",
              "clients_nice": 19, "sync_timeout": 60}
    async with scale.serving(params, index) as served:
        assert len(served.records.ready) == 2
        assert Path(f"/proc/{served.clients.pid}/autogroup").read_text().strip().endswith("nice 19")

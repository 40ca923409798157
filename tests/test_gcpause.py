"""The collector pause around config generation restores what it found, however nested."""

from __future__ import annotations

import gc

from zpilot.gcpause import paused_gc


def test_pauses_nest_and_restore_the_collector() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


_FREEZE_CHILD = r"""
import asyncio, gc, weakref
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache
from zpilot.gcpause import freeze_long_lived

async def main():
    shape = Shape(nodes=2, pods=6, services=2)
    index = MeshIndex.build(synthetic_cluster(synthetic_manifests(shape)))
    class Cyclic:
        pass

    garbage = Cyclic()
    garbage.me = garbage  # a cycle, garbage once dropped: collected before the freeze, not kept
    gone = weakref.ref(garbage)
    del garbage
    producer = Producer(SnapshotCache(), freeze_first_model=True)
    assert gc.get_freeze_count() == 0
    await producer.update(index)
    frozen = gc.get_freeze_count()
    assert frozen > 0, frozen
    await producer.update(MeshIndex.build(synthetic_cluster(synthetic_manifests(Shape(nodes=2, pods=7, services=2)))))
    assert gc.get_freeze_count() <= frozen  # not again (frozen objects still go when freed)
    assert not freeze_long_lived()  # once per process
    assert gone() is None  # collected first, not frozen
    print("ok")

asyncio.run(main())
"""


def test_a_server_freezes_the_first_models_objects_once() -> None:
    """``Producer(freeze_first_model=True)`` (``zpilot serve``) takes what the first model left alive
    out of the collector's walks, once, after collecting the cycles already garbage. In a child
    process: freezing is for the process's life."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _FREEZE_CHILD], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

"""The collector pause around config generation restores what it found, however nested."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

from zpilot.gcpause import free_later, pause, paused_gc


@pytest.fixture(autouse=True)
def _collector_on_after():
    """A test that fails inside a pause leaves the collector on for the tests after it."""
    yield
    gc.enable()


def collect_young() -> None:
    """``gc.collect(0)``, made sure to have run.

    While another thread is in the middle of a collection, CPython's ``gc.collect`` returns 0 at
    once and collects nothing (``gcstate->collecting``), and no collection starts by allocation
    either. A thread is there whenever Python code runs inside its collection (a weak-value memo's
    callbacks, a finalizer) and it is switched out: the producer's idle step in a worker thread, a
    thread an earlier test left, on a loaded machine. What a test expects the collection after a
    pause to free is then freed by the next one, not by this call: so it waits for the other
    thread's collection to end (it gets the GIL back as this one sleeps) and collects then."""
    me = threading.get_ident()
    ran: list[int] = []

    def started(phase: str, info: dict) -> None:
        if phase == "start" and threading.get_ident() == me:
            ran.append(info["generation"])

    gc.callbacks.append(started)
    try:
        for _ in range(1000):
            gc.collect(0)
            if ran:
                return
            time.sleep(0.01)
    finally:
        gc.callbacks.remove(started)
    raise AssertionError("no collection could run here: another thread's stayed under way for 10 s")


def test_the_young_collection_is_made_while_another_thread_is_in_the_middle_of_one() -> None:
    """What failed once in the full suite: the collection after the producer's pause, asked for while
    a thread was inside its own (a finalizer running), collected nothing, and the test read the
    replaced config as kept. Here a finalizer that lets the GIL go stands for that thread."""
    import weakref

    inside, release = threading.Event(), threading.Event()

    class Finalized:
        def __del__(self) -> None:
            inside.set()
            release.wait(10)  # Python code inside a collection: other threads run meanwhile

    def collect_in_another_thread() -> None:
        garbage = Finalized()
        garbage.me = garbage  # type: ignore[attr-defined]
        del garbage
        gc.collect()

    class Held:
        pass

    other = threading.Thread(target=collect_in_another_thread)
    other.start()
    try:
        assert inside.wait(10)
        held = Held()
        gone = weakref.ref(held)
        cycle: list = [held]
        cycle.append(cycle)
        del held, cycle
        assert gc.collect(0) == 0 and gone() is not None  # the bare call, as in the failure: nothing collected
        threading.Timer(0.1, release.set).start()  # the other collection ends while collect_young waits
        collect_young()
        assert gone() is None
    finally:
        release.set()
        other.join()


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


def test_a_pause_ended_later_ends_once_and_nests_with_the_others() -> None:
    end = pause()
    assert not gc.isenabled()
    with paused_gc():
        end()
        end()  # once: the block's pause stays
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_whose_end_is_freed_uncalled_ends_then() -> None:
    end = pause()
    assert not gc.isenabled()
    del end  # its generator, closed as it is freed, leaves paused_gc through its finally
    assert gc.isenabled()


def test_a_pause_whose_end_was_scheduled_on_a_loop_closed_before_it_ran_ends_then() -> None:
    """The producer ends its pause from a callback scheduled from a callback (``_end_once_woken``): a loop
    closed before running them drops them, and with them the pause."""
    from zpilot.xds.push import _end_once_woken

    loop = asyncio.new_event_loop()

    async def produce() -> None:
        _end_once_woken(pause())

    loop.run_until_complete(produce())  # returns before the callbacks it scheduled have run
    assert not gc.isenabled()
    loop.close()
    assert gc.isenabled()


def test_what_is_given_up_under_a_pause_is_freed_by_the_collection_after_it() -> None:
    import weakref

    class Held:
        pass

    held = Held()
    gone = weakref.ref(held)
    with paused_gc():
        free_later([held])
        del held
        assert gone() is not None
    collect_young()
    assert gone() is None
    for collector_off in (False, True):  # no pause: at once, the collector on or off
        held = Held()
        gone = weakref.ref(held)
        if collector_off:
            gc.disable()
        try:
            free_later([held])
            del held
            assert gone() is None
        finally:
            gc.enable()


async def test_a_change_is_produced_stored_and_its_streams_started_without_a_collection() -> None:
    """The producer's pause lasts until the streams its change woke have run their first step (a
    server's begin their push burst there, which holds the collector off until they have sent)."""
    from zpilot.model.index import MeshIndex
    from zpilot.synthetic import Shape, node_name, synthetic_cluster, synthetic_manifests
    from zpilot.xds.push import Producer
    from zpilot.xds.snapshot_cache import SnapshotCache

    cache = SnapshotCache()
    producer = Producer(cache)
    await producer.update(MeshIndex.build(synthetic_cluster(synthetic_manifests(Shape(nodes=2, pods=6, services=2)))))
    for _ in range(3):
        await asyncio.sleep(0)
    assert gc.isenabled()
    watch = cache.watch(node_name(0))
    woken: list[tuple[bool, int, bool]] = []
    import weakref

    replaced = weakref.ref(cache.get_snapshot(node_name(0)))

    async def stream() -> None:
        await watch.wait()
        # no collection yet, none running, what the change replaced not freed yet
        woken.append((gc.isenabled(), len(collections), replaced() is not None))

    collections: list[int] = []
    task = asyncio.create_task(stream())
    await asyncio.sleep(0)

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    changed = MeshIndex.build(synthetic_cluster(synthetic_manifests(Shape(nodes=2, pods=7, services=2))))
    gc.callbacks.append(seen)  # from the update's call on (the model is built before it, the collector on)
    try:
        await producer.update(changed)
        assert not gc.isenabled()
        await task
    finally:
        gc.callbacks.remove(seen)
    watch.close()
    assert woken == [(False, 0, True)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert gc.isenabled()
    collect_young()
    assert replaced() is None  # by the collector, once the pause is over


async def test_the_model_a_change_replaces_is_freed_after_the_change_not_before_it() -> None:
    """The producer's last model is given up to the collection after the change (gcpause.free_later),
    not freed as the new one is taken: at R that was a millisecond before the change was planned."""
    import weakref

    from zpilot.model.index import MeshIndex
    from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests
    from zpilot.xds.push import Producer
    from zpilot.xds.snapshot_cache import SnapshotCache

    producer = Producer(SnapshotCache())
    first = MeshIndex.build(synthetic_cluster(synthetic_manifests(Shape(nodes=2, pods=6, services=2))))
    await producer.update(first)
    replaced = weakref.ref(first)
    del first
    for _ in range(3):
        await asyncio.sleep(0)
    assert gc.isenabled() and replaced() is not None  # the producer's model
    await producer.update(MeshIndex.build(synthetic_cluster(synthetic_manifests(Shape(nodes=2, pods=7, services=2)))))
    assert replaced() is not None  # nobody but the producer held it: still not freed
    for _ in range(3):
        await asyncio.sleep(0)
    assert gc.isenabled()
    collect_young()
    assert replaced() is None  # by the collector, once the pause is over


async def test_an_update_that_fails_ends_the_producers_pause_all_the_same() -> None:
    """The producer's pause ends in its ``finally`` (once the loop has run on, as after a change it
    stored): an update that raises leaves the collector as it found it."""
    import pytest

    from zpilot.xds.push import Producer
    from zpilot.xds.snapshot_cache import SnapshotCache

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="before any model"):
        await Producer(SnapshotCache()).update()
    for _ in range(3):
        await asyncio.sleep(0)
    assert gc.isenabled()


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

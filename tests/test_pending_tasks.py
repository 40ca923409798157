"""The check of tests/pending_tasks.py can fail, and a Producer's idle-time work ends with its loop.

The Producer's idle-time preparation (``Producer._prepare_ahead``) is a task of its own. It ends at
``Producer.close()`` (``ControlPlane.stop``), or when the loop's tasks are cancelled as ``asyncio.run`` and
pytest-asyncio cancel them at the end. Only a loop closed with the task still in it leaves it pending.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
from pathlib import Path

from tests.pending_tasks import RECORDER, ZPILOT_DIR, PendingTaskRecorder
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache

SHAPE = Shape(nodes=2, pods=4, services=2, namespaces=1, ports_per_service=1, service_accounts_per_namespace=1)


def _producer() -> tuple[Producer, MeshIndex]:
    index = MeshIndex.build(synthetic_cluster(synthetic_manifests(SHAPE)))
    return Producer(SnapshotCache(), translate=IncrementalTranslator(TranslateOptions(layout="linear"))), index


#: A loop closed with the Producer's idle work still in it, in a process of its own: what else a process holds
#: decides when the collector frees that task (an executor thread still holding the work it ran kept it alive
#: into the next test), and the check would fail whichever test it is freed in.
CLOSED_LOOP = """
import asyncio, gc, logging
from tests.pending_tasks import RECORDER
from tests.test_pending_tasks import _producer
logging.getLogger("asyncio").addHandler(RECORDER)
producer, index = _producer()
loop = asyncio.new_event_loop()
loop.run_until_complete(producer.update(index))
assert producer._preparing is not None and not producer._preparing.done()  # waiting for idle time
loop.run_until_complete(loop.shutdown_default_executor())  # (its threads let go of what they ran)
loop.close()  # its tasks not cancelled: what asyncio.run and pytest-asyncio never do
del producer, loop
gc.collect()
print(len(RECORDER.seen), "Producer._prepare_ahead()" in "".join(RECORDER.seen))
"""


def test_a_loop_closed_with_the_idle_work_in_it_is_reported() -> None:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", CLOSED_LOOP], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True"], done.stdout + done.stderr


def test_only_zpilot_tasks_are_recorded() -> None:
    """grpc's client tasks, which test_stream_leaks.py drops on purpose, are not zpilot's to end."""
    def report(where: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1, "Task was destroyed but it is pending!"
                                 f"\ntask: <Task pending coro=<f() running at {where}>>", None, None)

    recorder = PendingTaskRecorder()
    recorder.emit(report("/usr/lib/python3/site-packages/grpc/aio/_call.py:449"))
    assert recorder.seen == []
    recorder.emit(report(ZPILOT_DIR + "xds/push.py:546"))
    assert len(recorder.seen) == 1


def test_asyncio_run_ends_the_idle_work() -> None:
    producer, index = _producer()
    asyncio.run(producer.update(index))
    assert producer._preparing is not None and producer._preparing.cancelled()
    del producer
    gc.collect()
    assert RECORDER.seen == []


async def test_close_ends_the_idle_work() -> None:
    producer, index = _producer()
    await producer.update(index)
    assert producer._preparing is not None and not producer._preparing.done()
    await producer.close()
    assert producer._preparing.cancelled()

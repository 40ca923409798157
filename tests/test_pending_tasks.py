"""The check of tests/pending_tasks.py can fail, and a Producer's idle-time work ends with its loop.

The Producer's idle-time preparation (``Producer._prepare_ahead``) is a task of its own. It ends at
``Producer.close()`` (``ControlPlane.stop``), or when the loop's tasks are cancelled as ``asyncio.run`` and
pytest-asyncio cancel them at the end. Only a loop closed with the task still in it leaves it pending.
"""

from __future__ import annotations

import asyncio
import gc

from tests.pending_tasks import RECORDER
from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache

SHAPE = Shape(nodes=2, pods=4, services=2, namespaces=1, ports_per_service=1, service_accounts_per_namespace=1)


def _producer() -> tuple[Producer, MeshIndex]:
    index = MeshIndex.build(synthetic_cluster(synthetic_manifests(SHAPE)))
    return Producer(SnapshotCache(), translate=IncrementalTranslator(TranslateOptions(layout="linear"))), index


def test_a_loop_closed_with_the_idle_work_in_it_is_reported() -> None:
    producer, index = _producer()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(producer.update(index))
    assert producer._preparing is not None and not producer._preparing.done()  # waiting for idle time
    loop.close()  # its tasks not cancelled: what asyncio.run and pytest-asyncio never do
    del producer, loop
    gc.collect()
    seen, RECORDER.seen = RECORDER.seen, []  # (not this test's failure: it is what it checks)
    assert len(seen) == 1 and "Producer._prepare_ahead()" in seen[0], seen


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

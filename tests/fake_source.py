"""A model source a test drives by hand, to swap into ``zpilot serve``'s runtime or the CNI agent."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from zpilot.kube.source import ModelEvent
from zpilot.model.index import MeshIndex


class QueueSource:
    """Each :meth:`put` model becomes one event, the first of a run being the initial one.

    Like a real source it keeps going until its reader stops; ``runs`` counts how often it was
    started and ``closed`` how often a reader let it go.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[MeshIndex, float]] = asyncio.Queue()
        self.runs = 0
        self.closed = 0

    def __str__(self) -> str:
        return "test source"

    def put(self, index: MeshIndex, changed_at: float | None = None) -> None:
        self._queue.put_nowait((index, time.monotonic() if changed_at is None else changed_at))

    async def events(self) -> AsyncIterator[ModelEvent]:
        self.runs += 1
        initial = True
        try:
            while True:
                index, changed_at = await self._queue.get()
                yield ModelEvent(index, changed_at, initial=initial)
                initial = False
        finally:
            self.closed += 1

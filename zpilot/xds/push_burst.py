"""A push burst: the streams woken by a model change and not done sending it yet, server-wide.

All streams share one event loop (and the producer's worker thread shares the GIL). While a
change is being sent, the loop's time goes first to the streams still to send it:

- the clients' answers (an ACK of the last response; at R a SotW EDS ACK names 2,100 resources
  and costs a quarter of a millisecond to decode) are read but handled only once the burst is
  over: a stream whose next response waits for its previous write (a pod's own node: CDS, EDS,
  LDS in a row) is otherwise served after the ACKs of every other stream;
- the cyclic garbage collector is paused: the producer's new config is young and large, and a
  collection that started during the burst (30-90 ms at R) held every stream's send. The young
  generations are collected as soon as the burst is over (when no other pause is on): left to
  the allocation counter, that collection landed on whatever came next, often the next change.

Requests are only handled later, never dropped or reordered (each stream's reader handles its
own in order), so what the client sees is what it would see had it answered a little later.
Both are bounded: a burst ends when every stream woken has answered the change, or after
``max_seconds`` whatever is still being sent. A client that does not read can hold one burst
that long, not the next ones: a stream still writing an earlier response is not part of a burst
(stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Hashable

from ..gcpause import paused_gc

#: The longest a burst holds requests and the garbage collector back.
DEFAULT_MAX_SECONDS = 0.1


class PushBurst:
    """The streams sending a change now (see the module's docstring); one per server, one event loop."""

    def __init__(self, max_seconds: float = DEFAULT_MAX_SECONDS) -> None:
        if max_seconds < 0:
            raise ValueError(f"push burst of {max_seconds} s; must not be negative")
        self.max_seconds = max_seconds
        self._due: set[Hashable] = set()
        self._over = asyncio.Event()
        self._over.set()
        self._gc: contextlib.AbstractContextManager[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Bursts ended by ``max_seconds`` rather than by their last stream, ever (tests read it).
        self.cut_short = 0
        #: Bursts begun, ever (tests read it).
        self.begun = 0
        #: Requests whose handling waited for a burst to end, ever (tests read it).
        self.held = 0

    @property
    def active(self) -> bool:
        return bool(self._due)

    def begin(self, stream: Hashable) -> None:
        """``stream`` has a change to send."""
        if self.max_seconds == 0:
            return
        if not self._due:
            self.begun += 1
            self._over.clear()
            self._gc = paused_gc()
            self._gc.__enter__()
            self._timer = asyncio.get_running_loop().call_later(self.max_seconds, self._expire)
        self._due.add(stream)

    def end(self, stream: Hashable) -> None:
        """``stream`` sent what it had to (or is gone)."""
        if stream in self._due:
            self._due.discard(stream)
            if not self._due:
                self._finish()

    async def over(self) -> None:
        """Return once no burst is being sent."""
        if not self._over.is_set():
            self.held += 1
            await self._over.wait()

    def _expire(self) -> None:
        self._timer = None
        if self._due:
            self.cut_short += 1
            self._due.clear()
            self._finish()

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        paused, self._gc = self._gc, None
        try:
            if paused is not None:  # first: nothing after it may leave the collector off
                paused.__exit__(None, None, None)
                try:
                    asyncio.get_running_loop().call_soon(_collect_young)
                except RuntimeError:  # ended off the loop (at shutdown): left to the counter
                    pass
        finally:
            self._over.set()


def _collect_young() -> None:
    if gc.isenabled():  # not while another pause is on (the producer's, a new burst's)
        gc.collect(1)

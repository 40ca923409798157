"""How many bytes of responses the server writes at once, across all its streams.

A response is joined from cached bytes only when it is about to be written, and gRPC copies it
again into its own buffer, which it holds until the HTTP/2 flow control lets the bytes out (the
client reads them). A large node's response is megabytes: when a hundred ztunnels connect at
once, a hundred of them were in flight together, twice each, and the control plane's memory
peaked at the first sync far above what it needs to serve (docs/scale.md). The budget bounds
that: a large response waits, first come first served, until the responses being written leave
room for it; one larger than the whole budget goes alone. A small response (a changed
ClusterLoadAssignment, a secret) never waits, so small updates are not held up behind other
streams' large ones; it is counted while it is written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import AsyncIterator

MiB = 1 << 20

#: Bytes of responses written at once, all streams together, before large ones wait.
DEFAULT_BUDGET_BYTES = 64 * MiB
#: A response up to this size never waits for the budget.
DEFAULT_SMALL_BYTES = 256 << 10


class SendBudget:
    """Bytes of responses being written (see the module's docstring); one per server, one event loop."""

    def __init__(self, limit: int = DEFAULT_BUDGET_BYTES, small: int = DEFAULT_SMALL_BYTES) -> None:
        if limit <= 0 or small < 0:
            raise ValueError(f"send budget of {limit} bytes (small: {small}); both must be positive")
        self.limit = limit
        self.small = small
        #: Bytes of the responses being written now.
        self.in_flight = 0
        #: Responses that waited for room, ever (tests and metrics read it).
        self.waited = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """Room for a response of ``size`` bytes while the block runs (the response is joined and
        written in it); released however the block ends, a cancellation included."""
        await self.acquire(size)
        try:
            yield
        finally:
            self.release(size)

    def _fits(self, size: int) -> bool:
        return self.in_flight == 0 or self.in_flight + size <= self.limit

    async def acquire(self, size: int) -> None:
        """:meth:`reserve` without the context manager (a stream's every write goes through it:
        one coroutine call, not a generator's three steps); :meth:`release` it in a ``finally``."""
        if size <= self.small or (not self._waiters and self._fits(size)):
            self.in_flight += size
            return
        self.waited += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted, then cancelled before it could be used: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((size, waiter))
                self._grant()  # it may have been what held the others back
            raise

    def release(self, size: int) -> None:
        """Give back what :meth:`acquire` took."""
        self.in_flight -= size
        self._grant()

    def _grant(self) -> None:
        """Let the waiting responses in, in order, while they fit."""
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if not self._fits(size):
                return
            self._waiters.popleft()
            self.in_flight += size
            waiter.set_result(None)

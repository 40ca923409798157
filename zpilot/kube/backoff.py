"""Retrying an API server that fails: jittered exponential backoff, and logs that stay readable.

Many watchers (every zpilot replica, every node's CNI agent) hit the same API server; when it
fails they must not come back in lock-step, so each delay is drawn at random from the upper half
of an exponentially growing bound ("equal jitter"). A server that asks for a pause (429 or 503
with ``Retry-After``) is given at least that pause.

A failing server is logged once per distinct reason, then reminded every so often rather than at
every retry, and its recovery is logged: the log says which server and why without flooding.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

from ..model.problems import clip

#: Longest pause a server's ``Retry-After`` can impose (a bad header must not stop the watch for days).
MAX_RETRY_AFTER = 300.0


@dataclass
class Backoff:
    """Delays between retries: ``initial`` doubling up to ``maximum``, each jittered into [bound/2, bound]."""

    initial: float = 0.5
    maximum: float = 30.0
    rand: Callable[[float, float], float] = random.uniform
    failures: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        """The pause before the next attempt (and count this failure)."""
        bound = min(self.maximum, self.initial * (2 ** min(self.failures, 30)))
        self.failures += 1
        delay = self.rand(bound / 2, bound)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def reset(self) -> None:
        self.failures = 0


@dataclass
class FailureLog:
    """Logs one activity's failures (e.g. "watching pods"): each new reason at once, the same reason
    again only every ``remind`` seconds (with how many attempts failed meanwhile), and the recovery."""

    logger: logging.Logger
    server: str
    remind: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _reason: str | None = None
    _logged_at: float = 0.0
    _count: int = 0

    def failed(self, what: str, reason: str, retry_in: float | None) -> None:
        reason = clip(reason, 300)
        now = self.clock()
        self._count += 1
        retry = f"; retrying in {retry_in:.2f} s" if retry_in is not None else ""
        if reason != self._reason:
            self.logger.warning("API server %s: %s: %s%s", self.server, what, reason, retry)
        elif now - self._logged_at >= self.remind:
            self.logger.warning("API server %s: %s: still failing (%d attempts): %s%s", self.server, what,
                                self._count, reason, retry)
        else:
            self.logger.debug("API server %s: %s: %s%s", self.server, what, reason, retry)
            return
        self._reason = reason
        self._logged_at = now

    def succeeded(self, what: str) -> None:
        if self._reason is not None:
            self.logger.warning("API server %s: %s: working again after %d failed attempts", self.server, what,
                                self._count)
        self._reason = None
        self._count = 0

    @property
    def failing(self) -> bool:
        return self._reason is not None

"""Fault injection: the next N matching requests fail, stall, or lose their connection.

A fault matches on verb (``list``, ``watch``, ``get``, ``create``, ``update``, ``patch``, ``delete``,
``discovery``) and resource (plural or ``plural.group``), either left None for "any". Faults are consumed in
the order they were added; each matching request takes one use of the first fault that still has some.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Fault:
    #: Answer this HTTP status (with a Status body) instead of serving the request.
    status: int | None = None
    #: Sent as ``Retry-After`` (seconds) with the status (the real server does for 429).
    retry_after: int | None = None
    #: Wait this long before answering (a slow server); alone, the request is then served normally.
    delay: float = 0.0
    #: Close the TCP connection without any response.
    reset: bool = False
    #: For a watch: serve it, but cut the connection (no clean end) after this many events.
    drop_after_events: int | None = None
    times: int = 1
    verb: str | None = None
    resource: str | None = None
    #: How many requests this fault has hit so far.
    hits: int = 0

    def matches(self, verb: str, resource_names: set[str]) -> bool:
        if self.drop_after_events is not None and verb != "watch":
            return False
        return self.times > 0 and (self.verb in (None, verb)) and (self.resource is None or self.resource in resource_names)


class FaultInjector:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, verb: str, resource_names: set[str]) -> Fault | None:
        """Consume one use of the first fault matching this request, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(verb, resource_names):
                    fault.times -= 1
                    fault.hits += 1
                    return fault
            return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return [f for f in self._faults if f.times > 0]

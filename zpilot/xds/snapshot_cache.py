"""The per-node snapshot cache: the one place the producer and the ADS streams meet.

Setting a snapshot whose versions equal the stored one is a no-op: no watcher wakes, so a node
whose resources did not change gets no push. A node of the model whose config could never be
produced is *withheld*: its streams send nothing, rather than the empty config of a node the model
lacks. All methods must be called on the event loop's
thread (the producer and the server share one asyncio loop).

The producer stores a change's snapshots in one synchronous step; their watchers are woken
together right after it, those with the most changed types first. A node whose config changed
beyond its endpoints (a pod's own node: CDS, EDS and LDS) is then answered with several
responses in a row, each written once the one before it is; woken first, its large CDS response
is being written while the other streams send their single EDS response, instead of starting
after all of them (it was the last stream sent its update at R).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Callable

from .snapshot import Snapshot

log = logging.getLogger(__name__)


class _Watch:
    """A :class:`~zpilot.xds.cache.NodeWatch` backed by an asyncio.Event, and its ``on_change``."""

    def __init__(self, cache: "SnapshotCache", node: str, on_change: Callable[[], None] | None = None) -> None:
        self.node = node
        self._cache = cache
        self._event = asyncio.Event()
        self._on_change = on_change

    async def wait(self) -> None:
        await self._event.wait()
        self._event.clear()

    def notify(self) -> None:
        self._event.set()
        if self._on_change is not None:
            self._on_change()

    def close(self) -> None:
        self._cache._drop_watch(self)


class SnapshotCache:
    """Snapshots by node name, with change notification per node."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._withheld: dict[str, str] = {}  # node -> why it has nothing to serve (never a snapshot too)
        self._watches: dict[str, set[_Watch]] = defaultdict(set)
        #: Nodes set since the last wake-up of watchers -> how many types changed (wake order).
        self._to_wake: dict[str, int] = {}

    # -- writer -----------------------------------------------------------------------------

    def set_snapshot(self, snapshot: Snapshot) -> list[str]:
        previous = self._snapshots.get(snapshot.node)
        changed = snapshot.changed_types(previous)
        if previous is not None and not changed and previous.known == snapshot.known:
            # Same content: keep the old snapshot (and its change time) so nothing looks pushed.
            return []
        self._snapshots[snapshot.node] = snapshot
        self._withheld.pop(snapshot.node, None)
        self._wake_soon(snapshot.node, len(changed))
        return changed

    def _wake_soon(self, node: str, changed: int) -> None:
        """Wake the node's watchers once the current synchronous step (the producer storing a
        change's snapshots) is over, in :meth:`_wake` order; at once when no loop runs."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._notify(node)
            return
        if not self._to_wake:
            loop.call_soon(self._wake)
        self._to_wake[node] = max(changed, self._to_wake.get(node, 0))

    def _wake(self) -> None:
        """The watchers of the nodes set since the last call, most changed types first (then in the
        order they were set): those with more responses to write in a row start first."""
        to_wake, self._to_wake = self._to_wake, {}
        for node in sorted(to_wake, key=to_wake.__getitem__, reverse=True):  # stable: set order for ties
            self._notify(node)

    def _notify(self, node: str) -> None:
        for watch in list(self._watches.get(node, ())):
            try:
                watch.notify()
            except Exception:  # one watcher's ``on_change`` failing must not lose the others' wake-up
                log.exception("a watcher of node %s failed on its change", node)

    def withhold(self, node: str, reason: str) -> None:
        if node in self._snapshots:
            return
        first = node not in self._withheld
        self._withheld[node] = reason
        if first:
            self._notify(node)  # they stop serving it as a node the model lacks

    def clear_snapshot(self, node: str) -> bool:
        withheld = self._withheld.pop(node, None) is not None
        if self._snapshots.pop(node, None) is None and not withheld:
            return False
        self._notify(node)
        return True

    def nodes(self) -> list[str]:
        return sorted(self._snapshots)

    # -- reader -----------------------------------------------------------------------------

    def get_snapshot(self, node: str) -> Snapshot | None:
        return self._snapshots.get(node)

    def withheld(self, node: str) -> str | None:
        return self._withheld.get(node)

    def watch(self, node: str, on_change: Callable[[], None] | None = None) -> _Watch:
        watch = _Watch(self, node, on_change)
        self._watches[node].add(watch)
        return watch

    def watcher_count(self, node: str | None = None) -> int:
        if node is not None:
            return len(self._watches.get(node, ()))
        return sum(len(w) for w in self._watches.values())

    def _drop_watch(self, watch: _Watch) -> None:
        watches = self._watches.get(watch.node)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.node]

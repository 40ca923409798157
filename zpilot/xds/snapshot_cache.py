"""The per-node snapshot cache: the one place the producer and the ADS streams meet.

Setting a snapshot whose versions equal the stored one is a no-op: no watcher wakes, so a node
whose resources did not change gets no push. A node of the model whose config could never be
produced is *withheld*: its streams send nothing, rather than the empty config of a node the model
lacks. All methods must be called on the event loop's
thread (the producer and the server share one asyncio loop).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from .snapshot import Snapshot

log = logging.getLogger(__name__)


class _Watch:
    """A :class:`~zpilot.xds.cache.NodeWatch` backed by an asyncio.Event."""

    def __init__(self, cache: "SnapshotCache", node: str) -> None:
        self.node = node
        self._cache = cache
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()
        self._event.clear()

    def notify(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._cache._drop_watch(self)


class SnapshotCache:
    """Snapshots by node name, with change notification per node."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._withheld: dict[str, str] = {}  # node -> why it has nothing to serve (never a snapshot too)
        self._watches: dict[str, set[_Watch]] = defaultdict(set)

    # -- writer -----------------------------------------------------------------------------

    def set_snapshot(self, snapshot: Snapshot) -> list[str]:
        previous = self._snapshots.get(snapshot.node)
        changed = snapshot.changed_types(previous)
        if previous is not None and not changed and previous.known == snapshot.known:
            # Same content: keep the old snapshot (and its change time) so nothing looks pushed.
            return []
        self._snapshots[snapshot.node] = snapshot
        self._withheld.pop(snapshot.node, None)
        for watch in list(self._watches.get(snapshot.node, ())):
            watch.notify()
        return changed

    def withhold(self, node: str, reason: str) -> None:
        if node in self._snapshots:
            return
        first = node not in self._withheld
        self._withheld[node] = reason
        if not first:
            return
        for watch in list(self._watches.get(node, ())):  # they stop serving it as a node the model lacks
            watch.notify()

    def clear_snapshot(self, node: str) -> bool:
        withheld = self._withheld.pop(node, None) is not None
        if self._snapshots.pop(node, None) is None and not withheld:
            return False
        for watch in list(self._watches.get(node, ())):
            watch.notify()
        return True

    def nodes(self) -> list[str]:
        return sorted(self._snapshots)

    # -- reader -----------------------------------------------------------------------------

    def get_snapshot(self, node: str) -> Snapshot | None:
        return self._snapshots.get(node)

    def withheld(self, node: str) -> str | None:
        return self._withheld.get(node)

    def watch(self, node: str) -> _Watch:
        watch = _Watch(self, node)
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

"""The cache interface: what the producer writes and what the ADS server reads.

Kept apart from the implementation, as go-control-plane's ``pkg/cache/v3`` keeps ``Cache``
apart from ``SnapshotCache``, so the server can be tested against any cache and depends on
nothing that builds config.
"""

from __future__ import annotations

from typing import Callable, Protocol

from .snapshot import Snapshot


class NodeWatch(Protocol):
    """A stream's subscription to one node's snapshot changes.

    Changes coalesce: however many snapshots are set while a stream is busy sending, it wakes
    once and reads the newest (Istio merges pending pushes per connection the same way).
    """

    node: str

    async def wait(self) -> None:
        """Return once the node's snapshot has changed since the last :meth:`wait` returned."""

    def close(self) -> None:
        """Stop watching; must be called when the stream ends."""


class SnapshotReader(Protocol):
    """The server's view of the cache."""

    def get_snapshot(self, node: str) -> Snapshot | None:
        """The node's current snapshot, or None when no config was produced for it."""

    def withheld(self, node: str) -> str | None:
        """Why a node of the model has no config that may be served (see
        :meth:`SnapshotWriter.withhold`), or None. Its streams send nothing and wait: an empty
        config, what a node the model lacks is served, would take the listeners of an Envoy that
        reconnects here with good config from an earlier server."""

    def watch(self, node: str, on_change: Callable[[], None] | None = None) -> NodeWatch:
        """Watch a node (known or not: a node the model gains later gets its config then).
        ``on_change`` is called on each change too, on the event loop's thread, as the watch is
        woken (a stored snapshot's right after the producer's storing step, a node withheld or
        cleared at once), not from a task: a stream then needs no task of its own waiting (a
        change wakes a hundred streams at R, one task step each less to take before any of them
        sends). An ``on_change`` that raises is logged; the change's other watchers are told."""


class SnapshotWriter(Protocol):
    """The producer's view of the cache."""

    def set_snapshot(self, snapshot: Snapshot) -> list[str]:
        """Store a node's snapshot; return the types whose version changed (watchers wake only then)."""

    def get_snapshot(self, node: str) -> Snapshot | None:
        """The node's current snapshot (the producer reads it back for gauges and the debug API)."""

    def withhold(self, node: str, reason: str) -> None:
        """The node is in the model but has no config that may be served (its first translation
        failed the consistency check): its streams wait. A later :meth:`set_snapshot` or
        :meth:`clear_snapshot` ends this. Ignored for a node with a snapshot (it keeps that one)."""

    def clear_snapshot(self, node: str) -> bool:
        """Forget a node (it left the model), withheld or not; its watchers wake and see no snapshot."""

    def nodes(self) -> list[str]:
        """Nodes with a snapshot."""

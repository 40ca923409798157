"""Versioned storage: one global resourceVersion, the history of changes, compaction, and watch subscriptions.

This is the etcd-plus-watch-cache layer. Every write takes the next resourceVersion (a decimal string on the
wire), is recorded in the history with the object's previous state, and is handed to the open subscriptions of
its resource. ``compact()`` forgets the history up to a version: a watch or an exact list from before it is
answered 410 Expired. Subscriptions live on the server's event loop while writes come from any thread (the
test's, or the server's own), so everything here runs under one re-entrant lock and wakes subscribers with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterable

from .errors import ApiError, expired

Obj = dict[str, Any]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as a datetime
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    raise ApiError(400, f"a {type(value).__name__} value is not JSON")


def plain(obj: Any) -> Any:
    """A deep copy as JSON data (what the wire carries; YAML timestamps become strings), several times faster
    than copy.deepcopy."""
    return json.loads(json.dumps(obj, default=_json_default))
ObjKey = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Change:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: str  # ResourceType.key
    namespace: str
    name: str
    obj: Obj  # the new state; for DELETED the last state, carrying the deletion's resourceVersion
    prev: Obj | None


@dataclass(eq=False)
class Subscription:
    """One open watch: the changes of a resource (in one namespace or all) waiting to be streamed."""

    resource: str
    namespace: str | None
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: list[Change] = field(default_factory=list)
    #: None while open; "end" closes the stream cleanly, "drop" cuts the connection mid-stream.
    closing: str | None = None
    #: Asks the stream for a BOOKMARK now (if the client allowed bookmarks).
    bookmark_now: bool = False
    #: Its request is in the server's log (set once the stream is open): a watch counts as open from then on
    #: (``ApiServer.watchers``), so that a test taking the log's length after waiting for watches finds each
    #: open watch's request before that point, not after it.
    recorded: bool = False

    def notify(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the server's loop is gone: nothing is listening any more
            self.closing = self.closing or "end"


class VersionedStore:
    def __init__(self, max_history: int = 100_000) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        #: History before (and at) this version is forgotten.
        self.compacted = 0
        self.max_history = max_history
        self._objects: dict[str, dict[ObjKey, Obj]] = {}
        self._history: deque[Change] = deque()
        self._subscriptions: list[Subscription] = []
        #: Called under the lock after every write, in order (controllers react here).
        self.hooks: list[Callable[[Change], None]] = []

    # -- reads ---------------------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return self._objects.get(resource, {}).get((namespace, name))

    def items(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """Current objects in etcd key order (namespace, then name)."""
        with self.lock:
            objs = self._objects.get(resource, {})
            return [objs[k] for k in sorted(objs) if namespace is None or k[0] == namespace]

    def state_at(self, resource: str, rv: int) -> list[Obj]:
        """The objects as they were at ``rv``, rebuilt by undoing later changes; 410 if compacted away."""
        with self.lock:
            if rv < self.compacted:
                raise expired(rv, self.compacted)
            state = dict(self._objects.get(resource, {}))
            for change in reversed(self._history):
                if change.rv <= rv:
                    break
                if change.resource != resource:
                    continue
                key = (change.namespace, change.name)
                if change.type == "ADDED":
                    state.pop(key, None)
                else:
                    assert change.prev is not None
                    state[key] = change.prev
            return [state[k] for k in sorted(state)]

    def changes_since(self, resource: str, namespace: str | None, rv: int) -> list[Change]:
        with self.lock:
            if rv < self.compacted:
                raise expired(rv, self.compacted)
            return [c for c in self._history if c.rv > rv and c.resource == resource
                    and (namespace is None or c.namespace == namespace)]

    # -- writes --------------------------------------------------------------------------------------------

    def write(self, kind: str, resource: str, namespace: str, name: str, obj: Obj | None) -> Change:
        """Store ``obj`` (None deletes) at the next resourceVersion, record it, and tell the watchers.

        ``obj`` is copied; its ``metadata.resourceVersion`` is set here, as only the storage layer may.
        """
        with self.lock:
            objs = self._objects.setdefault(resource, {})
            key = (namespace, name)
            prev = objs.get(key)
            self.rv += 1
            if kind == "DELETED":
                assert prev is not None
                stored = plain(prev)
                stored["metadata"]["resourceVersion"] = str(self.rv)
                del objs[key]
            else:
                stored = plain(obj)
                assert stored is not None
                stored.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
                objs[key] = stored
            change = Change(self.rv, kind, resource, namespace, name, stored, prev)
            self._history.append(change)
            while len(self._history) > self.max_history:
                self.compacted = self._history.popleft().rv
            for sub in self._subscriptions:
                if sub.resource == resource and (sub.namespace is None or sub.namespace == namespace):
                    sub.pending.append(change)
                    sub.notify()
            for hook in list(self.hooks):
                hook(change)
            return change

    def compact(self, up_to: int | None = None) -> int:
        """Forget the history up to ``up_to`` (default: everything so far); return the compacted version."""
        with self.lock:
            target = self.rv if up_to is None else min(up_to, self.rv)
            while self._history and self._history[0].rv <= target:
                self._history.popleft()
            self.compacted = max(self.compacted, target)
            return self.compacted

    # -- subscriptions -------------------------------------------------------------------------------------

    def subscribe(self, resource: str, namespace: str | None, since: int | None,
                  loop: asyncio.AbstractEventLoop) -> tuple[Subscription, list[Change], int]:
        """Open a subscription atomically with reading its starting point.

        Returns the subscription, the changes after ``since`` (none when ``since`` is None) and the current
        version, all read under the lock so no write falls between them. 410 when ``since`` is compacted.
        """
        with self.lock:
            backlog = self.changes_since(resource, namespace, since) if since is not None else []
            sub = Subscription(resource, namespace, loop)
            self._subscriptions.append(sub)
            return sub, backlog, self.rv

    def unsubscribe(self, sub: Subscription) -> None:
        with self.lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)

    def take(self, sub: Subscription) -> tuple[list[Change], int]:
        """The changes waiting for ``sub`` and the version it is now complete up to (for bookmarks)."""
        with self.lock:
            changes, sub.pending = sub.pending, []
            sub.wake.clear()
            return changes, self.rv

    def request_bookmarks(self) -> None:
        with self.lock:
            for s in self._subscriptions:
                s.bookmark_now = True
                s.notify()

    def subscriptions(self, resource: str | None = None) -> list[Subscription]:
        with self.lock:
            return [s for s in self._subscriptions if resource is None or s.resource == resource]

    def close_subscriptions(self, how: str, resources: Iterable[str] | None = None) -> int:
        """End ("end") or cut ("drop") the open watches of ``resources`` (all if None); return how many."""
        wanted = set(resources) if resources is not None else None
        with self.lock:
            subs = [s for s in self._subscriptions if wanted is None or s.resource in wanted]
            for s in subs:
                s.closing = s.closing or how
                s.notify()
            return len(subs)

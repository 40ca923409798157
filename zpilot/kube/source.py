"""The source seam: where the cluster's state comes from, as one stream of whole models.

Everything that consumes the cluster (``zpilot serve``'s runtime, the CNI agent) iterates a
:class:`ModelSource`: the first :class:`ModelEvent` is the initial, fully read model, then one
event per debounced burst of changes, each carrying the whole model and the monotonic time the
burst's first change was seen (push latency starts there). Consumers never see files, watches
or half-applied changes, so a new source plugs in without touching them.

A concrete source is a :class:`Feed`: it reads objects and hands them to an :class:`ObjectSink`
by *origin* (the unit it reads at once: a manifest file, or one API object of a watch). The
sink is the one place where

- changes are debounced (:class:`Debouncer`: a quiet period, bounded by a maximum delay; while an
  origin is known to be changing and not yet readable, the burst waits for it, up to the bound);
- an origin that cannot be read keeps its last good objects, and the failure is reported
  (never are its objects dropped, never is the whole model refused);
- objects from all origins are merged, duplicates reported (``store.merge``);

and :class:`FeedSource` turns a feed and its sink into a :class:`ModelSource`, reporting input
problems through a :class:`ProblemTracker`: each once, and "resolved" when it goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left, insort
from dataclasses import dataclass, replace
from typing import AsyncIterator, Callable, Collection, Iterable, Protocol

from ..gcpause import pause
from ..model.index import MeshIndex, between_common_ends
from ..model.objects import Cluster, EndpointSlice, Namespace, Node, Service, ServiceAccount, Workload
from ..model.policy import DEFAULT_ROOT_NAMESPACE, AuthorizationPolicy, PeerAuthentication
from ..model.problems import LOG_LEVELS, Problem, Problems
from .convert import ModelObject
from .store import Key, key_of, merge

log = logging.getLogger(__name__)
problem_log = logging.getLogger("zpilot.problems")


class SourceError(Exception):
    """The source cannot produce a model at all (e.g. its directory does not exist)."""


@dataclass(frozen=True)
class ModelEvent:
    """The whole model now, and since when the change it carries was seen."""

    index: MeshIndex
    #: Monotonic time the burst's first change was seen (for the initial model: when reading began).
    changed_at: float
    initial: bool = False


class ModelSource(Protocol):
    """Where a consumer gets the cluster from."""

    def events(self) -> AsyncIterator[ModelEvent]:
        """Start reading: yield the initial, fully read model, then one per debounced burst of
        changes. Every call starts afresh; closing the iterator stops the reading."""
        ...


# -- debouncing --------------------------------------------------------------------------------


@dataclass
class Debouncer:
    """The quiet-period / maximum-delay rule, separated from time and I/O so it can be tested.

    Fire once the input has been quiet for ``quiet`` seconds, but never later than ``max_delay``
    after the first unreported change (as istiod debounces pushes), so input that keeps changing
    is still pushed.
    """

    quiet: float = 0.1
    max_delay: float = 10.0
    first_change: float | None = None
    last_change: float | None = None

    def changed(self, now: float) -> None:
        if self.first_change is None:
            self.first_change = now
        self.last_change = now

    def due(self, now: float, *, settling: bool = False) -> float | None:
        """The first change's time if the burst should be reported at ``now`` (and reset), else None.

        ``settling``: part of the burst is still being written; wait for it (up to ``max_delay``).
        """
        if self.first_change is None or self.last_change is None:
            return None
        quiet = now - self.last_change >= self.quiet and not settling
        if quiet or now - self.first_change >= self.max_delay:
            first = self.first_change
            self.reset()
            return first
        return None

    def deadline(self, *, settling: bool = False) -> float | None:
        """When :meth:`due` fires if nothing else happens (None: no burst under way)."""
        if self.first_change is None or self.last_change is None:
            return None
        bound = self.first_change + self.max_delay
        return bound if settling else min(self.last_change + self.quiet, bound)

    def reset(self) -> None:
        self.first_change = self.last_change = None


# -- problems ----------------------------------------------------------------------------------


class ProblemTracker:
    """Logs input problems once each, and "resolved" when one goes away.

    A problem is identified by its :attr:`~zpilot.model.problems.Problem.key` (severity, object,
    reason), not by where it was read, so a document moving within its file is not news.
    """

    def __init__(self, logger: logging.Logger = problem_log) -> None:
        self.logger = logger
        self._reported: dict[tuple, Problem] = {}

    def report(self, problems: Iterable[Problem]) -> tuple[list[Problem], list[Problem]]:
        """Log what is new and what was resolved since the last call; return both."""
        current: dict[tuple, Problem] = {}
        for problem in problems:
            current.setdefault(problem.key, problem)
        new = [p for key, p in current.items() if key not in self._reported]
        resolved = [p for key, p in self._reported.items() if key not in current]
        for problem in new:
            self.logger.log(LOG_LEVELS[problem.severity], "%s", problem, extra={"object": problem.subject})
        for problem in resolved:
            self.logger.info("resolved: %s: %s", problem.subject, problem.reason, extra={"object": problem.subject})
        self._reported = current
        return new, resolved


def failure_problem(failure: Problem, kept: int | None) -> Problem:
    """An origin that cannot be read, as reported: with what is kept of it meanwhile."""
    if kept:
        objects = "object" if kept == 1 else "objects"
        tail = f"; keeping the {kept} {objects} of its last good read until it reads again"
    else:
        tail = ": nothing read from it"
    return Problem(failure.severity, failure.subject, failure.reason + tail, failure.where)


# -- the sink ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OriginContent:
    """What one origin holds: its objects (each with where it was read) and their problems."""

    objects: tuple[tuple[str, ModelObject], ...] = ()
    problems: tuple[Problem, ...] = ()


NOTHING_READ = OriginContent()
#: (origin, its last good content, its current failure): what a model is built from, per origin.
Contents = tuple[str, OriginContent, "Problem | None"]


def _origin(entry: Contents) -> str:
    return entry[0]


class ObjectSink:
    """The objects a feed has read, by origin; the debounce of their changes.

    Feeds call these methods from the event loop. An origin announced with :meth:`changing` is
    *settling* (written but not readable yet) until the feed reports it with :meth:`set`,
    :meth:`keep` or :meth:`remove`; its change counts from when it was announced.
    """

    def __init__(self, *, quiet: float, max_delay: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.debouncer = Debouncer(quiet=quiet, max_delay=max_delay)
        self.clock = clock
        self._good: dict[str, OriginContent] = {}
        self._failures: dict[str, Problem] = {}
        self._settling: set[str] = set()
        self._synced = False
        self._wake = asyncio.Event()
        #: What :meth:`contents` copies, kept sorted as origins change: an origin's entry is the same
        #: tuple until it changes, so a consumer finds what changed between two copies by identity.
        self._entries: list[Contents] = []
        #: The origins set, kept or removed since :meth:`take_touched` was last called.
        self._touched: set[str] = set()

    # what feeds call

    def changing(self, origin: str) -> None:
        """``origin`` changed and cannot be read yet (e.g. a file still being written)."""
        if origin not in self._settling:
            self._settling.add(origin)
            self._changed()

    def set(self, origin: str, content: OriginContent) -> None:
        """``origin`` now holds exactly ``content``."""
        unchanged = self._good.get(origin) == content and origin not in self._failures
        self._good[origin] = content
        self._failures.pop(origin, None)
        self._entry_changed(origin)
        self._settled(origin, changed=not unchanged)

    def keep(self, origin: str, failure: Problem) -> None:
        """``origin`` cannot be read now: its last good objects stay, ``failure`` is reported."""
        unchanged = self._failures.get(origin) == failure
        self._failures[origin] = failure
        self._entry_changed(origin)
        self._settled(origin, changed=not unchanged)

    def remove(self, origin: str) -> None:
        """``origin`` is gone, with its objects."""
        known = origin in self._good or origin in self._failures
        self._good.pop(origin, None)
        self._failures.pop(origin, None)
        self._entry_changed(origin)
        self._settled(origin, changed=known)

    def synced(self) -> None:
        """The initial read is complete: the first model may be built."""
        self._synced = True
        self._wake.set()

    def origins(self) -> list[str]:
        return sorted(set(self._good) | set(self._failures))

    # what FeedSource uses

    @property
    def settling(self) -> bool:
        return bool(self._settling)

    def _changed(self) -> None:
        self.debouncer.changed(self.clock())
        self._wake.set()

    def _settled(self, origin: str, *, changed: bool) -> None:
        if origin in self._settling:  # its change was counted when it was announced
            self._settling.discard(origin)
            self._wake.set()
        elif changed:
            self._changed()

    def contents(self) -> list[Contents]:
        """A consistent copy (origins, their last good content, their current failure), sorted
        (a copy of a list kept sorted: a burst costs what changed, not a sort of every origin)."""
        return list(self._entries)

    def take_touched(self) -> set[str]:
        """The origins set, kept or removed since the last call (every origin whose entry in
        :meth:`contents` may differ from the copy taken then): with that copy, what a
        ``ModelBuilder`` needs to find a burst's origins without looking at the others."""
        touched, self._touched = self._touched, set()
        return touched

    def _entry_changed(self, origin: str) -> None:
        self._touched.add(origin)
        entries = self._entries
        i = bisect_left(entries, origin, key=_origin)
        present = i < len(entries) and entries[i][0] == origin
        if origin not in self._good and origin not in self._failures:
            if present:
                del entries[i]
            return
        entry = (origin, self._good.get(origin, NOTHING_READ), self._failures.get(origin))
        if not present:
            entries.insert(i, entry)
        elif entries[i][1] is not entry[1] or entries[i][2] != entry[2]:
            entries[i] = entry

    async def _wait(self, feed: asyncio.Task, timeout: float | None) -> None:
        """Until woken, the timeout passes, or the feed ends (raising what ended it, if anything)."""
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter, feed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if feed.done():
            feed.result()

    async def wait_synced(self, feed: asyncio.Task) -> None:
        while not self._synced:
            self._wake.clear()
            if feed.done():
                feed.result()
                raise SourceError("the source ended before its initial read was complete")
            await self._wait(feed, None)
        self.debouncer.reset()  # what changed during the initial read is in the initial model

    async def next_burst(self, feed: asyncio.Task) -> float | None:
        """Wait for the next debounced burst of changes; return when its first change was seen.

        None: the feed has ended (a finite source) and nothing is left to report."""
        while True:
            self._wake.clear()
            now = self.clock()
            if feed.done():  # nothing more will come: report what is left at once
                first = self.debouncer.first_change
                self.debouncer.reset()
                return first
            first = self.debouncer.due(now, settling=self.settling)
            if first is not None:
                return first
            deadline = self.debouncer.deadline(settling=self.settling)
            await self._wait(feed, None if deadline is None else max(0.0, deadline - now))


def build_model(contents: Iterable[Contents], *,
                root_namespace: str = DEFAULT_ROOT_NAMESPACE, previous: MeshIndex | None = None) -> MeshIndex:
    """The model from every origin's content (pure: run in a worker thread for large clusters);
    ``root_namespace`` is Istio's: its policies without a selector apply to the whole mesh;
    ``previous``: the last model built, whose derivations of unchanged objects are reused
    (``MeshIndex.build``: the same model as without it, at the cost of what changed)."""
    cluster, problems, _ = _merged(contents)
    return MeshIndex.build(cluster, problems, root_namespace=root_namespace, previous=previous)


def _merged(contents: Iterable[Contents]) -> tuple[Cluster, Problems, bool]:
    """Every origin's objects as one cluster, with the origins' problems and the duplicates';
    and whether some key was held twice (a duplicate)."""
    problems = Problems()
    objects: list[tuple[str, ModelObject]] = []
    for _origin, content, failure in contents:
        problems.extend(list(content.problems))
        if failure is not None:
            problems.extend([failure_problem(failure, len(content.objects))])
        objects.extend(content.objects)
    cluster = merge(objects, problems)
    return cluster, problems, len(objects) != sum(len(getattr(cluster, name)) for name in _FIELDS.values())


#: Cluster's field for each kind of object.
_FIELDS: dict[type, str] = {
    Node: "nodes", Namespace: "namespaces", ServiceAccount: "service_accounts", Workload: "workloads",
    Service: "services", EndpointSlice: "endpoint_slices", AuthorizationPolicy: "authorization_policies",
    PeerAuthentication: "peer_authentications",
}


class ModelBuilder:
    """One source's models, each from the last (what ``zpilot serve``'s source does per burst).

    The same models :func:`build_model` makes from nothing. When the origins that changed hold no
    problem, no failure and no key another origin holds (and no key was held twice before), the
    cluster is the last one with their objects taken out and put in, in order, instead of all
    origins' objects merged and sorted again; the index is then built from the last one
    (``MeshIndex.build(previous=...)``). Which origins changed is found between the common ends of
    the last contents and these (by identity: ``ObjectSink.contents`` keeps an unchanged origin's
    entry), so a burst costs its origins, not a look at every origin. Not thread-safe: one build at a time.
    """

    #: Above this many origins changed, the objects are merged over again rather than patched in.
    PATCH_LIMIT = 256

    def __init__(self, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> None:
        self.root_namespace = root_namespace
        self.last: MeshIndex | None = None
        self._origins: dict[str, tuple[OriginContent, Problem | None]] = {}
        self._contents: list[Contents] = []  # the last build's, each origin once
        self._keys: dict[Key, ModelObject] | None = None  # every object by key; None: some key was held twice
        self._source_problems: tuple[Problem, ...] = ()

    def build(self, contents: Iterable[Contents], touched: Collection[str] | None = None) -> MeshIndex:
        """The model of ``contents`` (each origin once, sorted by origin). ``touched``: the origins
        whose entry may differ from the last build's contents (``ObjectSink.take_touched``, taken
        with ``contents``), when the caller knows: the others are not looked at. A list is kept as
        given, not copied (``ObjectSink.contents`` hands a copy of its own: 12,000 entries at R):
        the caller must not change it afterwards."""
        if not isinstance(contents, list):
            contents = list(contents)
        # the very list the last build kept, changed in place since (against the rule above): the
        # last contents are gone with it, and its common ends with itself would say nothing changed
        same_list = contents is self._contents and touched is None
        delta = None if same_list else self._delta(contents, touched)
        pods = None
        try:
            patched = self._patched(*delta) if delta is not None else None
        except LookupError:  # the last cluster is not what it should be: merge, never answer wrong
            log.exception("the model could not be patched; every origin's objects merged again")
            patched = None
        if patched is None:
            cluster, problems, duplicated = _merged(contents)
            self._source_problems = tuple(problems)
            self._keys = None if duplicated else _keys(cluster)
        else:
            (cluster, pods), problems = patched, Problems()
            problems.extend(self._source_problems)
        if delta is None:
            self._origins = {origin: (content, failure) for origin, content, failure in contents}
            self._contents = contents if len(self._origins) == len(contents) else []
        else:
            for origin in delta[2]:
                del self._origins[origin]
            self._origins.update(delta[0])
            self._contents = contents
        self.last = MeshIndex.build(cluster, problems, root_namespace=self.root_namespace, previous=self.last,
                                    changed_workloads=pods)
        return self.last

    def _delta(self, contents: list[Contents], touched: Collection[str] | None = None
               ) -> tuple[dict, dict, list[str]] | None:
        """What differs from the last build's contents: each origin listed where they differ (its
        content and failure now), which of those changed (the same, with what it held before), and
        the origins gone; None when some origin is listed twice. ``touched``: the only origins
        that may differ (looked up in ``contents``, sorted), else found between the common ends."""
        origins = self._origins
        now: dict[str, tuple[OriginContent, Problem | None]] = {}
        if touched is not None and self._contents and len(touched) <= self.PATCH_LIMIT:
            before = {origin: origins[origin] for origin in touched if origin in origins}
            for origin in touched:
                i = bisect_left(contents, origin, key=_origin)
                if i < len(contents) and contents[i][0] == origin:
                    if i + 1 < len(contents) and contents[i + 1][0] == origin:
                        return None  # listed twice
                    now[origin] = contents[i][1:]
        else:
            before_window, window = between_common_ends(self._contents, contents)
            before = {entry[0]: entry[1:] for entry in before_window}
            for origin, content, failure in window:
                if origin in now or (origin in origins and origin not in before):
                    return None  # listed twice (or the last build's contents were not what they seemed)
                now[origin] = (content, failure)
        changed = {origin: (entry, origins.get(origin)) for origin, entry in now.items()
                   if (was := before.get(origin)) is None or was[0] is not entry[0] or was[1] != entry[1]}
        gone = [origin for origin in before if origin not in now]
        return now, changed, gone

    def _patched(self, now: dict, changed: dict, gone: list[str]
                 ) -> tuple[Cluster, tuple[list[Workload], list[Workload]]] | None:
        """The last cluster with the changed origins' objects replaced, and the pods taken out of
        it and put in; or None (merge them all)."""
        keys, last = self._keys, self.last
        if keys is None or last is None:
            return None
        if len(changed) + len(gone) > self.PATCH_LIMIT:
            return None
        old = {origin: was for origin, (_, was) in changed.items() if was is not None}
        old.update((origin, self._origins[origin]) for origin in gone)
        current = {origin: entry for origin, (entry, _) in changed.items()}
        changed_origins = list(current)
        taken: dict[Key, ModelObject] = {}
        put: dict[Key, ModelObject] = {}
        for origin in changed_origins + gone:
            for content, failure in (v for v in (old.get(origin), current.get(origin)) if v is not None):
                if failure is not None or content.problems:
                    return None  # its problems are reported in the origins' order: merge
        for origin in changed_origins + gone:
            was = old.get(origin)
            for _where, obj in was[0].objects if was is not None else ():
                taken[key_of(obj)] = obj
        for origin in changed_origins:
            for _where, obj in current[origin][0].objects:
                key = key_of(obj)
                if key in put or (key in keys and key not in taken):
                    return None  # a duplicate: merge reports it
                put[key] = obj
        by_kind: dict[str, list[ModelObject]] = {}
        for key, obj in taken.items():
            if keys.get(key) is not obj:
                return None  # not the object the last cluster holds: merge
            objects = by_kind.setdefault(_FIELDS[type(obj)], list(getattr(last.cluster, _FIELDS[type(obj)])))
            _remove_keyed(objects, key)
        for key, obj in put.items():
            objects = by_kind.setdefault(_FIELDS[type(obj)], list(getattr(last.cluster, _FIELDS[type(obj)])))
            insort(objects, obj, key=key_of)
        for key in taken:
            del keys[key]
        keys.update(put)
        pods = ([obj for obj in taken.values() if isinstance(obj, Workload)],
                [obj for obj in put.values() if isinstance(obj, Workload)])
        return replace(last.cluster, **{name: tuple(objects) for name, objects in by_kind.items()}), pods


# -- a feed as a model source ------------------------------------------------------------------


class Feed(Protocol):
    """What a concrete source implements."""

    async def run(self, sink: ObjectSink) -> None:
        """Read everything into ``sink``, call ``sink.synced()``, then keep it current until cancelled
        (a finite feed may return: the model stream then ends after its last change).

        Raise :class:`SourceError` if the source cannot be read at all."""
        ...


def _keys(cluster: Cluster) -> dict[Key, ModelObject]:
    return {key_of(obj): obj for name in _FIELDS.values() for obj in getattr(cluster, name)}


def _remove_keyed(objects: list[ModelObject], key: Key) -> None:
    i = bisect_left(objects, key, key=key_of)
    if i >= len(objects) or key_of(objects[i]) != key:
        raise LookupError(f"{key} is not where the cluster keeps it")
    del objects[i]


class FeedSource:
    """A :class:`ModelSource` from a feed: debounced, merged, problems tracked."""

    def __init__(self, make_feed: Callable[[], Feed], *, name: str, quiet: float = 0.1,
                 max_delay: float = 10.0, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> None:
        self.make_feed = make_feed
        self.root_namespace = root_namespace
        self.name = name
        self.quiet = quiet
        self.max_delay = max_delay

    def __str__(self) -> str:
        return self.name

    async def events(self) -> AsyncIterator[ModelEvent]:
        sink = ObjectSink(quiet=self.quiet, max_delay=self.max_delay)
        tracker = ProblemTracker()
        started = time.monotonic()
        feed = asyncio.create_task(self.make_feed().run(sink), name=f"source: {self.name}")
        try:
            await sink.wait_synced(feed)
            first_seen: float | None = started
            last: MeshIndex | None = None
            builder = ModelBuilder(root_namespace=self.root_namespace)
            while first_seen is not None:
                # No cyclic garbage collection from the build until the consumer has taken the model
                # (zpilot.gcpause): the build is the first step of a change's latency, and a collection
                # its allocations call for walks what the last change left young (80-160 ms at R,
                # measured landing on a policy change's build). The consumer's own pause (the
                # producer's, then the push burst's) takes over, so it runs once the change is sent.
                end_pause = pause()
                try:
                    index = await asyncio.to_thread(builder.build, sink.contents(), sink.take_touched())
                    if last is None or _differs(index, last):
                        tracker.report(index.problems)
                        yield ModelEvent(index, first_seen, initial=last is None)
                        last = index
                finally:
                    end_pause()
                first_seen = await sink.next_burst(feed)
        finally:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed


def _differs(index: MeshIndex, last: MeshIndex) -> bool:
    """Whether a consumer has anything new to see (objects, or problems to show)."""
    return index.cluster != last.cluster or list(index.problems) != list(last.problems)


async def first_model(source: ModelSource) -> ModelEvent:
    """The source's initial model, then stop reading (for one-shot commands)."""
    events = source.events()
    try:
        return await anext(events)
    except StopAsyncIteration:
        raise SourceError(f"{source} ended before producing a model") from None
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def load_model(source: ModelSource) -> MeshIndex:
    """:func:`first_model` for synchronous callers (not from a running event loop)."""
    return asyncio.run(first_model(source)).index


"""The producer: model change -> each node's resources -> snapshot cache.

This is the only place translation results enter the cache. For a model it asks the translator
for every node's input (:class:`~zpilot.translators.inputs.NodeInput`: what that node's config
depends on), and translates only the nodes whose input changed since their current snapshot;
the others are not touched, so they are not pushed. A translated node gets its SDS secrets
(only the names its own resources reference: that is node authorization, a ztunnel never gets
a secret its config does not name) and is serialized into a
:class:`~zpilot.xds.snapshot.Snapshot` through one :class:`~zpilot.xds.resource_store.ResourceStore`,
so a resource that many nodes share (or that did not change) is serialized once and held once.
The cache compares content versions, so a node whose resources came out equal is not pushed
either.

A node whose translation fails keeps its last good snapshot: a bug or bad input for one node
never takes config away from it or from any other node. A node that never had a good one is
withheld (its streams send nothing and wait), never served an empty config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, AsyncIterator, Callable, Hashable, Iterable, Mapping, Protocol

from google.protobuf.message import Message

from ..gcpause import free_later, freeze_long_lived, pause, paused_gc
from ..model.index import MeshIndex
from ..translators import IncrementalTranslator, Translated, consistency
from ..translators.fragments import Fragment
from ..translators.inputs import config_nodes
from ..translators.resources import NodeResources, SecretRef
from .cache import SnapshotWriter
from .metrics import Metrics, observe_all
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, SECRET_TYPE, short_name
from .resource_store import ResourceStore
from .snapshot import CachedResource, Snapshot, TypeResources

if TYPE_CHECKING:
    from ..certs import IdentityCache

log = logging.getLogger(__name__)

Translate = Callable[[MeshIndex, str], NodeResources]
#: Secret messages (key material included) for a node's resources, by name.
SecretSource = Callable[[NodeResources], Mapping[str, Message]]


class NodeTranslator(Protocol):
    """What the producer needs of translation (``translators.IncrementalTranslator`` is one)."""

    def inputs(self, index: MeshIndex) -> Mapping[str, Hashable]:
        """Every node that gets config, with what its config depends on (equal: same config)."""

    def translate(self, node_input) -> Translated:  # type: ignore[no-untyped-def]
        """One node's resources from its input (``translate_parts`` is used instead where a
        translator has it: see ``IncrementalTranslator.translate_parts``).

        A translator may also have ``endpoints_only(old_input, new_input)`` and
        ``endpoints(node_input)`` (``IncrementalTranslator``'s): a node whose input changed in
        its endpoints alone then gets those made, and is not translated."""


@dataclass(frozen=True, eq=False)
class WholeModel:
    """The input of a node for a translator that reads the whole model: the model itself."""

    index: MeshIndex
    node: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeModel) and self.node == other.node and (
            self.index is other.index or self.index.cluster == other.index.cluster
        )

    def __hash__(self) -> int:
        return hash(self.node)


class EveryNode:
    """A plain ``translate(index, node)`` as a :class:`NodeTranslator`: any model change
    translates every node again (hand-made translations in tests; ``zpilot serve`` uses the
    incremental translator)."""

    def __init__(self, translate: Translate) -> None:
        self._translate = translate

    def inputs(self, index: MeshIndex) -> dict[str, WholeModel]:
        return {node: WholeModel(index, node) for node in config_nodes(index)}

    def translate(self, node_input: WholeModel) -> Translated:
        resources = self._translate(node_input.index, node_input.node)
        return Translated(resources, node_input, (), ())  # type: ignore[arg-type]


def translator_of(translate: "Translate | NodeTranslator | None") -> NodeTranslator:
    if translate is None:
        return IncrementalTranslator()
    if hasattr(translate, "inputs") and hasattr(translate, "translate"):
        return translate  # type: ignore[return-value]
    return EveryNode(translate)  # type: ignore[arg-type]


class InvalidResources(ValueError):
    """Translated resources that would make Envoy reject the response (checked before caching)."""


def certificate_secrets(identities: "IdentityCache") -> SecretSource:
    """The SDS secrets of a node from the CA: exactly the names its resources reference."""
    from ..certs import build_secrets

    def source(resources: NodeResources) -> Mapping[str, Message]:
        return build_secrets(resources.secrets.values(), identities)

    return source


def model_nodes(index: MeshIndex) -> set[str]:
    """The nodes that get config (:func:`zpilot.translators.inputs.config_nodes`)."""
    return config_nodes(index)


@dataclass
class UpdateReport:
    """What one model update did, node by node."""

    changed: dict[str, list[str]] = field(default_factory=dict)  # node -> changed types
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # node -> error
    #: Nodes translated again (their input changed); a node not listed kept its snapshot untouched.
    translated: list[str] = field(default_factory=list)
    #: Nodes whose input changed in their endpoints alone: those were made again, nothing else.
    endpoints_only: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Rest:
    """What a node's snapshot was checked with, but for its endpoints: so that when only its
    endpoints change (``NodeTranslator.endpoints_only``) they alone are made, and the node is
    checked again with its other resources' names and consistency facts as they were."""

    names: consistency.Names
    facts: tuple[consistency.Facts, ...]
    #: The shared pieces of its other resources (its endpoints' are the latest ``EndpointSets``').
    fragments: tuple[Fragment, ...]
    #: What the node's check found no fault with of its endpoints: their names and what they need.
    endpoints_checked: tuple = ()

    def checked(self, summary: tuple) -> "_Rest":
        """This with ``endpoints_checked`` = ``summary``: made for each of a change's 99 other nodes,
        without the frozen dataclass's ``__init__`` (a ``object.__setattr__`` per field)."""
        made = object.__new__(_Rest)
        made.__dict__.update(self.__dict__)
        made.__dict__["endpoints_checked"] = summary
        return made


_items = attrgetter("items")


def _held_counts(snapshot: Snapshot) -> tuple[int, ...]:
    """How many resources of each type (``PUSH_ORDER``) ``snapshot`` holds: read from its types as
    they are when it has every one (the producer's do), without a call per type (for each of the
    100 nodes a pod change stores)."""
    try:
        return tuple(map(len, map(_items, map(snapshot.types.__getitem__, PUSH_ORDER))))
    except KeyError:
        return tuple(map(len, map(_items, map(snapshot.resources, PUSH_ORDER))))


def _endpoints_summary(names: Iterable[str], facts: Iterable[consistency.Facts]) -> tuple:
    """All a node's check reads of its endpoints (they have no listener, no cluster, no secret):
    their names, and what each of them needs, when none is misfiled; () when one is."""
    facts = list(facts)
    if any(f.misfiled for f in facts):
        return ()
    return (frozenset(names), tuple(f.wanted for f in facts))  # (of a frozenset: that very one)


def _same_summary(summary: tuple, checked: tuple, composed: dict) -> bool:
    """``summary == checked``, compared once per update for all the nodes holding both (a node's
    endpoint names are thousands: compared for each of 100 nodes, that was milliseconds per change)."""
    if summary is checked:
        return True
    key = ("same summary", id(summary), id(checked))  # both held by the caller while ``composed`` lives
    same = composed.get(key)
    if same is None:
        same = composed[key] = (summary == checked, summary, checked)
    return same[0]


@dataclass
class _Built:
    """One node's new snapshot, and the shared pieces it was made of (kept alive with it)."""

    snapshot: Snapshot
    node_input: Hashable
    fragments: tuple[Fragment, ...]
    rest: _Rest | None = None


def _end_once_woken(end: Callable[[], None]) -> None:
    """Call ``end`` once the streams woken by the snapshots just stored have begun.

    The cache wakes their watchers in a callback it scheduled as they were stored
    (``SnapshotCache._wake_soon``): a server's stream, told by the cache's call, begins its push
    burst there (push_burst.py), pausing the collector until it has sent; a task waiting on a
    watch is scheduled by that callback. A callback scheduled from one scheduled now runs after
    both."""
    try:
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, end)
    except RuntimeError:  # no loop running, or it is closed: nothing to wait for
        end()


class Producer:
    """Turns a :class:`MeshIndex` into snapshots in a cache, translating only what changed."""

    def __init__(
        self,
        cache: SnapshotWriter,
        *,
        translate: "Translate | NodeTranslator | None" = None,
        secrets: SecretSource | None = None,
        metrics: Metrics | None = None,
        batch_size: int = 8,
        freeze_first_model: bool = False,
        prepare_ahead: bool = True,
    ) -> None:
        self.cache = cache
        self.batch_size = max(1, batch_size)
        #: After the first model's config is built, take what is alive out of the collector's
        #: walks (``gcpause.freeze_long_lived``): for a long-running server, not for tests.
        self.freeze_first_model = freeze_first_model
        self.translator = translator_of(translate)
        #: Between changes, pay ahead what the next change of each node translated whole would pay
        #: once (the translator's ``prepare``, if it has one): see :meth:`_prepare_ahead`.
        self.prepare_ahead = prepare_ahead and callable(getattr(self.translator, "prepare", None))
        # listeners put together from shared pieces are serialized from them (resource_store.py):
        # the translator need not make the whole messages
        self._translate = getattr(self.translator, "translate_parts", self.translator.translate)
        #: Each node's SDS resources as last made, with the references they were made for: a node
        #: translated again with the same references keeps them (certificates change only through
        #: :meth:`refresh`, which makes them again and records them here).
        self._node_secrets: dict[str, tuple[dict[str, SecretRef], TypeResources]] = {}
        self.secrets = secrets
        self.metrics = metrics if metrics is not None else Metrics()
        # a change sets 100 nodes' snapshots: their counters looked up once
        self._snapshots_changed = self.metrics.node_snapshots.labels("changed")
        self._snapshots_unchanged = self.metrics.node_snapshots.labels("unchanged")
        self.store = ResourceStore()
        self.index: MeshIndex | None = None
        #: Nodes whose latest config could not be produced (they keep their last good one, or are
        #: withheld in the cache without one), and why.
        self.failures: dict[str, str] = {}
        #: The input each node's current snapshot was translated from.
        self._inputs: dict[str, Hashable] = {}
        #: The shared pieces each node's current snapshot is made of (holding them keeps them in the memo).
        self._fragments: dict[str, tuple[Fragment, ...]] = {}
        #: What each node's current snapshot was checked with, but for its endpoints (see ``_Rest``).
        self._rest: dict[str, _Rest] = {}
        #: How many resources of each type (``PUSH_ORDER``) each node's snapshot in the cache holds.
        self._held: dict[str, tuple[int, ...]] = {}
        #: The endpoint summaries of the nodes translated whole in this update (``_built_summary``).
        self._summaries: dict[tuple, tuple] = {}
        self._lock = asyncio.Lock()
        #: Nodes translated whole whose next change may still be paid ahead (:meth:`_prepare_ahead`), in order.
        self._to_prepare: dict[str, None] = {}
        self._preparing: asyncio.Task | None = None
        #: Nodes the translator prepared something for (what tests read).
        self.prepared: set[str] = set()
        self._closed = False

    def build(self, node: str, node_input: Hashable, changed_at: float) -> _Built:
        """One node's snapshot (pure apart from the memo and the secret source; run in a worker thread)."""
        started = time.perf_counter()
        translated = self._translate(node_input)
        resources = translated.resources
        if resources.node != node:
            raise InvalidResources(f"translated node {resources.node!r} instead of {node!r}")
        types: dict[str, TypeResources] = {}
        rest_facts: list[consistency.Facts] = []  # every resource's but the endpoints'
        endpoint_facts: list[consistency.Facts] = []
        for type_url, messages in resources.by_type().items():
            into = endpoint_facts if type_url == ENDPOINT_TYPE else rest_facts
            types[type_url] = self._serialize(translated, type_url, messages, into)
        if translated.sets_apart:  # the names of its clusters and endpoints: the composed types' (its sets' kept)
            names = consistency.Names.of_names(
                self.store.names(types[CLUSTER_TYPE]), self.store.names(types[ENDPOINT_TYPE]), resources.secrets
            )
        else:
            names = consistency.Names.of(resources)
        found = consistency.join_names(names, rest_facts + endpoint_facts)
        if found:  # Envoy would refuse it, or it names what it lacks (translators/consistency.py)
            raise InvalidResources(str(consistency.InconsistentResources(node, found)))
        types[SECRET_TYPE] = self._node_secret_resources(node, resources.secrets)
        snapshot = Snapshot(
            node=node,
            types=MappingProxyType({t: types[t] for t in PUSH_ORDER}),
            known=True,
            changed_at=changed_at,
            generation_seconds=time.perf_counter() - started,
            secret_refs=MappingProxyType(dict(resources.secrets)),
        )
        endpoint_sets = {id(r.fragment) for r in translated.resource_sets if r.type_url == ENDPOINT_TYPE}
        rest = _Rest(
            names,
            tuple(rest_facts),
            tuple(f for f in translated.fragments if id(f) not in endpoint_sets),
            self._built_summary(types[ENDPOINT_TYPE], names.endpoints, endpoint_facts),
        )
        return _Built(snapshot, node_input, translated.fragments, rest)

    def _built_summary(self, endpoints: TypeResources, names: frozenset[str], facts: list[consistency.Facts]) -> tuple:
        """``_endpoints_summary(names, facts)`` of a node translated whole, the very same object
        for every node of this update whose endpoints are the same shared sets (the same
        composed resources, the same facts): the next change compares each node's summary with
        its new one, and compares it once for all of them (``_same_summary``), not once per
        node, each holding its own copy of thousands of names."""
        if endpoints.own or len(endpoints.items) != len(names):  # made of shared sets alone: their names are its items'
            return _endpoints_summary(names, facts)
        key = (id(endpoints), *map(id, facts))
        found = self._summaries.get(key)
        if found is None:  # the value holds what the key's ids are of, so they stay theirs
            found = self._summaries[key] = (_endpoints_summary(names, facts), endpoints, facts)
        return found[0]

    def with_new_endpoints(
        self, snapshot: Snapshot, node_input: Hashable, rest: _Rest, changed_at: float, composed: dict
    ) -> _Built:
        """The node's snapshot with its endpoints made for ``node_input``, the rest as it is (its
        input changed in its endpoints alone); ``composed``: the endpoint types already composed
        in this update, by their sets (nodes with the same sets get the very same one)."""
        started = time.perf_counter()
        made = self.translator.endpoints(node_input)  # type: ignore[attr-defined]
        # most nodes have the very same sets (made once per model): what they compose to, by them
        by_made = composed.get(("made", id(made)))
        if by_made is None:
            parts = [self.store.resource_set(s) for s in made.sets]
            key = tuple(map(id, parts))
            found = composed.get(key)
            if found is None:
                endpoint_facts = [self.store.set_facts(s) for s in made.sets]
                type_resources = self.store.composed(ENDPOINT_TYPE, parts, {})
                found = composed[key] = (
                    type_resources, endpoint_facts, _endpoints_summary(self.store.names(type_resources), endpoint_facts)
                )
            by_made = composed[("made", id(made))] = (made, found)  # ``made`` held: its id stays its own
        endpoints, endpoint_facts, summary = by_made[1]
        same = bool(summary) and _same_summary(summary, rest.endpoints_checked, composed)
        if not same:  # else the check reads what it passed before
            names = replace(rest.names, endpoints=self.store.names(endpoints))
            problems = consistency.join_names(names, [*rest.facts, *endpoint_facts])
            if problems:
                raise InvalidResources(str(consistency.InconsistentResources(snapshot.node, problems)))
            if rest.endpoints_checked is not summary:  # checked now: what the next change compares with
                rest = rest.checked(summary)
        # (equal: the node keeps the summary it holds, one object for the nodes that hold it, compared
        # once per change for all of them (``_same_summary``); not a new _Rest per node and change)
        remade = snapshot.with_type(endpoints, changed_at, generation_seconds=time.perf_counter() - started)
        return _Built(remade, node_input, rest.fragments + made.fragments, rest)

    @property
    def secrets(self) -> SecretSource | None:
        """Where a node's SDS secrets come from (None: it gets none)."""
        return self._secret_source

    @secrets.setter
    def secrets(self, source: SecretSource | None) -> None:
        self._secret_source = source
        self._node_secrets.clear()  # made by another source (or none): made again at each node's next build

    def _node_secret_resources(self, node: str, refs: dict[str, SecretRef]) -> TypeResources:
        """The node's SDS resources for ``refs``: those made last for the same references, else made now.
        A translated node's references rarely change (at R a pod change remakes one node, a service
        or policy change ten to a hundred): made again, a node's 101 secrets cost its build 6-9 ms at R
        (bench/scale.py's churn, docs/scale.md)."""
        made = self._node_secrets.get(node)
        if made is not None and made[0] == refs:
            return made[1]
        resources = TypeResources.of(SECRET_TYPE, self._secrets(NodeResources(node=node, secrets=refs)), self.store.resource)
        self._node_secrets[node] = (dict(refs), resources)
        return resources

    def _secrets(self, resources: NodeResources) -> dict[str, Message]:
        secrets = dict(self.secrets(resources)) if self.secrets is not None else {}
        unexpected = set(secrets) - set(resources.secrets)
        if unexpected:  # never hand a node a secret its own config does not name
            raise InvalidResources(f"secret source returned unreferenced secrets {sorted(unexpected)}")
        return secrets

    def _serialize(
        self, translated: Translated, type_url: str, messages: Mapping[str, Message], facts: list[consistency.Facts]
    ) -> TypeResources:
        """A node's resources of one type: its shared sets as they are, the rest one by one;
        appends the consistency facts of each (kept with what they describe: computed once).
        Translated with its sets apart (``Translated.sets_apart``), ``messages`` are its own alone:
        its thousands of shared names are not gone through to find them."""
        sets = [s for s in translated.resource_sets if s.type_url == type_url]
        facts.extend(self.store.set_facts(s) for s in sets)
        if translated.sets_apart:
            mine = sorted(messages)
        else:
            covered: set[str] = set().union(*(s.resources.keys() for s in sets)) if sets else set()
            mine = sorted(messages.keys() - covered)
        own: dict[str, CachedResource] = {}
        for name in mine:
            message = messages[name]
            parts = translated.listener_parts.get(name) if type_url == LISTENER_TYPE else None
            fragment = translated.shared_resource(message)
            own[name] = resource = self.store.resource(type_url, name, message, fragment, parts)
            facts.append(self.store.facts(resource, message, parts, fragment))
        return self.store.composed(type_url, [self.store.resource_set(s) for s in sets], own)

    def _build_all(self, nodes: Iterable[tuple[str, Hashable]], changed_at: float) -> dict[str, _Built | str]:
        with paused_gc():  # millions of short-lived objects, no cycles: see zpilot/gcpause.py
            return self._build_each(nodes, lambda node, node_input: self.build(node, node_input, changed_at))

    def _remake_endpoints(
        self, nodes: Iterable[tuple[str, Hashable]], held: Mapping[str, Snapshot | None], changed_at: float
    ) -> dict[str, _Built | str]:
        """Each node's ``held`` snapshot with its endpoints made again (its input changed in them alone)."""
        composed: dict = {}

        def make(node: str, node_input: Hashable) -> _Built:
            snapshot, rest = held.get(node), self._rest.get(node)
            if snapshot is None or rest is None:  # nothing to start from: translate it whole
                return self.build(node, node_input, changed_at)
            return self.with_new_endpoints(snapshot, node_input, rest, changed_at, composed)

        with paused_gc():
            return self._build_each(nodes, make)

    def _remake_then_build(
        self,
        remake: Iterable[tuple[str, Hashable]],
        held: Mapping[str, Snapshot | None],
        build: Iterable[tuple[str, Hashable]],
        changed_at: float,
    ) -> dict[str, _Built | str]:
        """:meth:`_remake_endpoints` of ``remake``, then :meth:`_build_all` of ``build``: one worker-thread call."""
        out = self._remake_endpoints(remake, held, changed_at)
        out.update(self._build_all(build, changed_at))
        return out

    def _plan_then_remake(
        self, index: MeshIndex, held: set[str], changed_at: float
    ) -> tuple[dict[str, Hashable], list[str], list[str], int, dict[str, _Built | str] | None]:
        """:meth:`_plan`, then, when some nodes' endpoints alone changed, those remade first (cheap,
        and the other nodes' endpoints are all such a change sends them) with the nodes to
        translate when they are few (a pod's own node): :meth:`_remake_then_build`, all stored at
        once, so that none is translated while the event loop sends the others theirs. One
        worker-thread call, not two: each hand-off back to the event loop waits for it, and on a
        loaded machine for a core. Returns the plan, how many of the nodes to translate were
        built, and what was made (None: nothing yet)."""
        inputs, todo, endpoints_only = self._plan(index, held)
        if not endpoints_only:
            return inputs, todo, endpoints_only, 0, None
        batch = [(node, inputs[node]) for node in endpoints_only]
        # read in this thread: the producer, the cache's only writer, is waiting for it
        snapshots = {node: self.cache.get_snapshot(node) for node in endpoints_only}
        first = len(todo) if len(todo) <= self.batch_size else 0
        now = [(node, inputs[node]) for node in todo[:first]]
        return inputs, todo, endpoints_only, first, self._remake_then_build(batch, snapshots, now, changed_at)

    def _build_each(
        self, nodes: Iterable[tuple[str, Hashable]], make: Callable[[str, Hashable], _Built]
    ) -> dict[str, _Built | str]:
        out: dict[str, _Built | str] = {}
        for node, node_input in nodes:
            try:
                out[node] = make(node, node_input)
            except InvalidResources as exc:  # caught before sending: Envoy would have refused it
                log.error("node %s: config refused before sending, it keeps its last good config (without one it is"
                          " sent nothing): %s", node, exc)
                out[node] = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # one node's failure must not stop the others
                log.exception("node %s: config could not be produced; it keeps its last good config (without one it"
                              " is sent nothing)", node,
                              extra={"node": node})
                out[node] = f"{type(exc).__name__}: {exc}"
        return out

    def _plan(self, index: MeshIndex, held: set[str]) -> tuple[dict[str, Hashable], list[str], list[str]]:
        """Every node's input, the nodes to translate (input changed, or no snapshot yet:
        ``held`` are the nodes with one), and the nodes whose endpoints alone changed. Run in a
        worker thread: at scale, this is milliseconds."""
        with paused_gc():
            inputs = dict(self.translator.inputs(index))
        only_endpoints = getattr(self.translator, "endpoints_only", None)
        todo: list[str] = []
        remake: list[str] = []
        for node in sorted(inputs):
            if node in held and self._inputs.get(node) == inputs[node]:
                continue
            if (
                only_endpoints is not None
                and node in held
                and node in self._rest
                and node not in self.failures
                and only_endpoints(self._inputs[node], inputs[node])
            ):
                remake.append(node)
            else:
                todo.append(node)
        return inputs, todo, remake

    async def update(self, index: MeshIndex | None = None, *, changed_at: float | None = None) -> UpdateReport:
        """Produce the nodes of ``index`` whose input changed, and store what changed.

        Without ``index``: every node of the last model again (a translation that changed other
        than through the model). ``changed_at`` is the monotonic time the change was first seen
        (push latency starts there). Must be awaited on the event loop that serves the cache.
        """
        async with self._producing():
            started = time.perf_counter()
            changed_at = time.monotonic() if changed_at is None else changed_at
            report = UpdateReport()
            self._summaries = {}  # (the last update's nodes hold theirs)
            if index is not None:
                same_model = self.index is not None and index.cluster == self.index.cluster
                # The model replaced is freed by the collection after the change is sent, not here
                # (at R, 1-1.4 ms of freeing before the change is even planned): held in a cycle, it
                # outlives whoever else held it, the source's last model among them.
                free_later([self.index])
                self.index = index
                self.metrics.model_updates.inc()
                if same_model and not self.failures:  # e.g. a comment edited in a manifest: no config can change
                    report.unchanged = self.cache.nodes()
                    report.seconds = time.perf_counter() - started
                    log.info("model update: the cluster state is unchanged; nothing to produce")
                    return report
            elif self.index is None:
                raise RuntimeError("Producer.update() before any model was given")
            held = set() if index is None else set(self.cache.nodes())  # no index: every node again
            inputs, todo, endpoints_only, first, results = await asyncio.to_thread(
                self._plan_then_remake, self.index, held, changed_at
            )
            report.translated = list(todo)
            report.endpoints_only = list(endpoints_only)
            if results is not None:
                self._store(results, report, replaced_later=True)
            # In batches, each stored as soon as it is built: the first nodes are pushed while the
            # rest are still being translated, and the event loop keeps serving between batches.
            # Several batches are one burst (the first model: every node): the collector is paused
            # for all of them, not let run after each (it walked all that each batch left alive).
            with paused_gc() if len(todo) - first > self.batch_size else contextlib.nullcontext():
                for start in range(first, len(todo), self.batch_size):
                    batch = [(node, inputs[node]) for node in todo[start : start + self.batch_size]]
                    results = await asyncio.to_thread(self._build_all, batch, changed_at)
                    self._store(results, report)
            translated = set(todo) | set(endpoints_only)
            for node in sorted(inputs):
                if node not in translated:
                    report.unchanged.append(node)
                    self.failures.pop(node, None)  # its snapshot is its input's: nothing is failing now
            for node in self.cache.nodes():
                if node not in inputs:
                    self.cache.clear_snapshot(node)
                    self._held.pop(node, None)
                    self._inputs.pop(node, None)
                    self._fragments.pop(node, None)
                    self._rest.pop(node, None)
                    self._to_prepare.pop(node, None)
                    self._node_secrets.pop(node, None)
                    self.prepared.discard(node)
                    report.removed.append(node)
            for node in [n for n in self.failures if n not in inputs]:
                del self.failures[node]
                self.cache.clear_snapshot(node)  # a withheld node that left the model
            report.unchanged.sort()
            self._update_gauges()
            report.seconds = time.perf_counter() - started
            self._prepare_later(report.translated)
            if self.freeze_first_model and not self.failures and freeze_long_lived():
                log.info("the first model's config is built: its objects are frozen out of the garbage collector's walks")
            log.info(
                "model update: %d nodes translated, %d changed %s, %d unchanged, %d removed, %d failed (%.1f ms)",
                len(report.translated), len(report.changed), sorted(report.changed)[:20], len(report.unchanged),
                len(report.removed), len(report.failed), report.seconds * 1000,
            )
            return report

    #: How long after a change the producer starts paying ahead for the next one: the change's
    #: streams send first (a change that comes meanwhile is produced first all the same).
    PREPARE_AFTER_SECONDS = 0.25

    def _prepare_later(self, nodes: Iterable[str]) -> None:
        """Have :meth:`_prepare_ahead` look at ``nodes`` (translated whole just now) once idle."""
        if not self.prepare_ahead or self._closed:
            return
        self._to_prepare.update(dict.fromkeys(nodes))
        if self._to_prepare and (self._preparing is None or self._preparing.done()):
            try:
                self._preparing = asyncio.get_running_loop().create_task(self._prepare_ahead())
            except RuntimeError:  # no loop running: nothing is idle to pay ahead in
                self._to_prepare.clear()

    async def prepare_pending(self) -> None:
        """Pay ahead now for every node waiting for it (what idle time does, :meth:`_prepare_ahead`,
        without waiting for it: for tests and tools that want a prepared producer at once).

        It is the idle-time task, started now: the one under way, if any, is ended first (once its
        step, if any, has), and a change produced meanwhile starts no other (:meth:`_prepare_later`).
        Two loops paying ahead would both queue on the lock, and a change that comes would wait for
        two steps, not one."""
        if self._preparing is not None and not self._preparing.done():
            self._preparing.cancel()
            await asyncio.gather(self._preparing, return_exceptions=True)
        self._preparing = asyncio.ensure_future(self._prepare_ahead(delay=0))
        await self._preparing

    async def _prepare_ahead(self, delay: float | None = None) -> None:
        """Pay ahead, node by node, what the next change of a node translated whole would pay
        once (``IncrementalTranslator.prepare``: its inbound listeners' chains found in them),
        so that a node's first change after a full build (the first model, a service added)
        costs what its next one does, and sends as soon. Each node is one small step in a
        worker thread under the producer's lock: a change that comes waits for one step at
        most (it is queued on the lock first), never for the rest; what a change makes is the
        same whether its node was prepared or not."""
        prepare = self.translator.prepare  # type: ignore[attr-defined]
        await asyncio.sleep(self.PREPARE_AFTER_SECONDS if delay is None else delay)
        while self._to_prepare:
            async with self._lock:
                if not self._to_prepare:  # (taken under the lock: a loop cancelled while waiting for it loses none)
                    break
                node = next(iter(self._to_prepare))
                del self._to_prepare[node]
                node_input = self._inputs.get(node)
                if node_input is None or node in self.failures:
                    continue
                step = asyncio.ensure_future(asyncio.to_thread(prepare, node_input))
                try:
                    if await asyncio.shield(step):
                        self.prepared.add(node)
                except asyncio.CancelledError:
                    # (closing) the thread goes on to the step's end: the lock is its until then, so
                    # no change is translated beside it
                    await asyncio.gather(step, return_exceptions=True)
                    raise
                except Exception:  # paying ahead is an optimisation: its failure costs the next change, nothing else
                    log.exception("node %s: could not prepare its next change ahead", node, extra={"node": node})

    async def close(self) -> None:
        """Pay nothing more ahead (the server stops): the idle work is cancelled, once the step in a
        worker thread, if any, has ended."""
        self._closed = True
        self._to_prepare.clear()
        if self._preparing is not None:
            self._preparing.cancel()
            await asyncio.gather(self._preparing, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _producing(self) -> AsyncIterator[None]:
        """One update at a time, and no garbage collection while it produces and stores a change:
        its objects are young and many (the collection they called for was 3-5 ms at R, run
        between the producer's steps or right after them, before any stream had sent the
        change); it runs once the streams the change woke have started (``_end_once_woken``),
        whose push burst holds it off until they have sent it."""
        async with self._lock:
            end_pause = pause()
            try:
                yield
            finally:
                _end_once_woken(end_pause)

    async def refresh(self, *, changed_at: float | None = None) -> UpdateReport:
        """Make every node's secrets again, the rest of its snapshot as it is (after a certificate
        rotation or a CA reload: translation does not depend on certificates)."""
        async with self._lock:
            started = time.perf_counter()
            changed_at = time.monotonic() if changed_at is None else changed_at
            report = UpdateReport()
            held = [snap for snap in map(self.cache.get_snapshot, self.cache.nodes()) if snap is not None and snap.known]
            fresh = await asyncio.to_thread(self._with_new_secrets, held, changed_at, report)
            changed = sum(self._set(snapshot, report) for snapshot in fresh)
            observe_all(self.metrics.generation, [snapshot.generation_seconds for snapshot in fresh])
            self._count_sets(changed, len(fresh) - changed)
            report.unchanged.sort()
            self._update_gauges()
            report.seconds = time.perf_counter() - started
            log.info("secrets made again: %d nodes changed, %d unchanged, %d failed (%.1f ms)",
                     len(report.changed), len(report.unchanged), len(report.failed), report.seconds * 1000)
            return report

    def _with_new_secrets(self, snapshots: list[Snapshot], changed_at: float, report: UpdateReport) -> list[Snapshot]:
        """Each snapshot with its secrets made again, the rest as it is (worker thread). What a node
        translated again may keep is what this makes: a node it leaves out (withheld, or its secrets
        failed) has its made at its next translation, not the ones from before the rotation."""
        self._node_secrets.clear()
        fresh = []
        for snapshot in snapshots:
            node = snapshot.node
            refs = dict(snapshot.secret_refs)
            try:
                secrets = self._secrets(NodeResources(node=node, secrets=refs))
            except Exception as exc:
                log.exception("node %s: secrets could not be made; it keeps its current ones", node)
                report.failed[node] = f"{type(exc).__name__}: {exc}"
                continue
            resources = TypeResources.of(SECRET_TYPE, secrets, self.store.resource)
            self._node_secrets[node] = (refs, resources)
            fresh.append(snapshot.with_type(resources, changed_at))
        return fresh

    def _store(self, results: dict[str, _Built | str], report: UpdateReport, *, replaced_later: bool = False) -> None:
        """Store what was made. ``replaced_later``: what each node held before is freed once the change
        is sent (``gcpause.free_later``: a change that remade the endpoints of most nodes, and
        translated one or two, replaced little but in many places); else at once (a change that
        translates the nodes in batches may replace most of the config: never held twice)."""
        changed = unchanged = 0
        replaced: list = []
        seconds: list[float] = []
        for node, result in results.items():
            if isinstance(result, str):
                report.failed[node] = result
                self.failures[node] = result
                self.metrics.producer_errors.inc()
                # Nothing good to keep yet: serve the node nothing rather than the empty config of a
                # node the model lacks (an Envoy reconnecting with good config would drop it all).
                self.cache.withhold(node, result)
                continue
            self.failures.pop(node, None)
            if replaced_later:
                replaced.append((self._inputs.get(node), self._fragments.get(node), self._rest.get(node),
                                 self.cache.get_snapshot(node)))
            self._inputs[node] = result.node_input
            self._fragments[node] = result.fragments
            if result.rest is not None:
                self._rest[node] = result.rest
            seconds.append(result.snapshot.generation_seconds)
            if self._set(result.snapshot, report):
                changed += 1
            else:
                unchanged += 1
        observe_all(self.metrics.generation, seconds)
        self._count_sets(changed, unchanged)
        free_later(replaced)

    def _set(self, snapshot: Snapshot, report: UpdateReport) -> bool:
        """Store one node's snapshot; whether it changed (the caller counts them, :meth:`_count_sets`,
        and observes their generation times, ``metrics.observe_all``: once for all of them)."""
        node = snapshot.node
        changed = self.cache.set_snapshot(snapshot)
        if changed or node not in self._held:  # (else the cache keeps the one it has: the same resources)
            self._held[node] = _held_counts(snapshot)
        if changed:
            report.changed[node] = changed
            return True
        report.unchanged.append(node)
        return False

    def _count_sets(self, changed: int, unchanged: int) -> None:
        """Count snapshots set, changed and unchanged (once for a change's 100 nodes, not node by node)."""
        if changed:
            self._snapshots_changed.inc(changed)
        if unchanged:
            self._snapshots_unchanged.inc(unchanged)

    def _update_gauges(self) -> None:
        # from what each node's snapshot was counted to hold as it was set (the producer is the cache's
        # only writer): not every node's snapshot looked into again after a change that set one or two
        totals = [sum(counts) for counts in zip(*self._held.values())] or [0] * len(PUSH_ORDER)
        for type_url, total in zip(PUSH_ORDER, totals):  # every type, so a type whose last resource went shows 0
            self.metrics.resources.labels(short_name(type_url)).set(total)

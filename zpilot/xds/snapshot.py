"""One node's resources, serialized once and versioned by content.

A :class:`Snapshot` is immutable: the producer builds a new one for every change and the cache
swaps it in, so a stream reading a snapshot never sees half an update. Each resource carries a
version that is a hash of its serialized bytes (of large pieces of them, each hashed once: a
listener joined from shared pieces, ``CachedResource.joined``; the inbound listeners, by their
chains, :func:`records_version`); a type's version is a hash of its names and resource versions. Equal content therefore means equal versions, which is how "nothing changed
for this node" is detected without comparing protobufs, and how delta xDS avoids resending
unchanged resources.
"""

from __future__ import annotations

import hashlib
import operator
import time
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate, islice, repeat
from operator import add, attrgetter, itemgetter, lt
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf import any_pb2
from google.protobuf.message import Message

from .. import protowire
from ..translators.resources import NodeResources, SecretRef
from . import wire
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, SECRET_TYPE

#: The message class of each served type, to parse cached bytes back.
_MESSAGES: dict[str, type[Message]] = {
    LISTENER_TYPE: Listener, CLUSTER_TYPE: Cluster, ENDPOINT_TYPE: ClusterLoadAssignment, SECRET_TYPE: Secret,
}

_EMPTY: Mapping[str, "CachedResource"] = MappingProxyType({})


def content_version(data: bytes | memoryview) -> str:
    """A short, stable content hash (64 bits is plenty to tell versions of one resource apart).
    SHA-256, not BLAKE2: CPUs with SHA extensions hash it about twice as fast, and a large
    node's listener is megabytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def chains_version(prefix: bytes, record_hashes: Iterable[str], suffix: bytes) -> str:
    """The version of a resource versioned by its records (:func:`records_version`): a hash of
    the hashes of the bytes before its records, of each record, and of the bytes after them.
    Made from the records' hashes, kept with them, a change of one record (a pod's chain of an
    inbound listener) hashes that record, not the hundred others again."""
    hashes = "\n".join((content_version(prefix), *record_hashes, content_version(suffix)))
    return content_version(("records\n" + hashes).encode("ascii"))


def records_version(data: bytes, number: int) -> str:
    """The version of a serialized message by its top-level fields ``number`` (a listener's
    filter chains): :func:`chains_version` of the bytes before them, each of them and the bytes
    after; without any, or with other fields between them (never so when serialized
    deterministically), :func:`content_version` of the whole. The same whether the message was
    serialized whole or joined from records kept serialized (``CachedResource.of_records``)."""
    bounds = protowire.field_bounds(data, number)
    if not bounds or any(end != start for (_, end), (start, _) in zip(bounds, bounds[1:])):
        return content_version(data)
    view = memoryview(data)
    return chains_version(view[: bounds[0][0]], (content_version(view[a:b]) for a, b in bounds), view[bounds[-1][1] :])


#: How many earlier versions of a node's resources ``TypeResources.changes_since`` keeps its answer
#: for (the streams of many nodes go from one or two of them to the same new one).
_CHANGES_KEPT = 8

#: A shared piece shorter than this is not worth keeping apart from the bytes around it.
MIN_SHARED_CHUNK = 64 << 10


@dataclass(frozen=True)
class CachedResource:
    """A resource ready to send: pre-encoded as a response entry, with the hash of its content.

    ``parts`` joined are the resource exactly as it appears in a SotW ``DiscoveryResponse.resources``
    (field tag and length, then the serialized ``Any``), so a response is one ``b"".join``. Most
    resources are one part. A resource that contains large pieces many nodes' resources contain
    too (the thousands of service chains and the destination map in every node's outbound
    listener, in the linear layout) is kept as its own bytes around those pieces, which are the
    very same objects for every node: the server holds them once, and the content hash covers
    each piece by its own hash, computed once.
    """

    name: str
    type_url: str
    version: str
    parts: tuple[bytes, ...]
    header: int  # bytes of tag and length in front of the Any, in parts[0]

    def __hash__(self) -> int:
        """By its type, name and version (equal resources have equal versions), not by its bytes:
        a new resource is a key of the store's facts (resource_store.py), and hashing its parts was
        hashing every byte of it again (two inbound listeners of 270 KB at R on each pod change)."""
        return hash((self.type_url, self.name, self.version))

    @classmethod
    def of(cls, type_url: str, name: str, message: Message) -> "CachedResource":
        """``message`` serialized."""
        # deterministic: map fields (Struct metadata) in a stable order, so equal config hashes equal
        value = message.SerializeToString(deterministic=True)
        header, head = wire.response_resource_header(type_url, len(value))
        return cls(name, type_url, content_version(value), (head + value,), header)

    @classmethod
    def joined(cls, type_url: str, name: str, pieces: Iterable[tuple[bytes, str | None]]) -> "CachedResource":
        """A resource serialized in pieces, in order: its own bytes (hash ``None``) and large byte
        strings other resources contain too, each with its content hash (computed once for all
        of them). Those are kept as the very objects given; one shorter than
        :data:`MIN_SHARED_CHUNK` is joined into the bytes around it instead. Without any kept
        apart, the resource is exactly :meth:`of` its message."""
        parts: list[bytes] = []
        hashes: list[str] = []
        own: list[bytes] = []

        def own_part() -> None:
            if own:
                data = b"".join(own)
                parts.append(data)
                hashes.append(content_version(data))
                own.clear()

        shared = 0
        for data, data_hash in pieces:
            if not data:
                continue
            if data_hash is None or len(data) < MIN_SHARED_CHUNK:
                own.append(data)
                continue
            own_part()
            parts.append(data)
            hashes.append(data_hash)
            shared += 1
        if not shared:
            value = b"".join(own)
            header, head = wire.response_resource_header(type_url, len(value))
            return cls(name, type_url, content_version(value), (head + value,), header)
        own_part()
        header, head = wire.response_resource_header(type_url, sum(map(len, parts)))
        # the version covers each part by its hash: the bytes change, the version changes
        version = content_version(("parts\n" + "\n".join(hashes)).encode("ascii"))
        return cls(name, type_url, version, (head, *parts), header)

    @classmethod
    def of_chained(cls, type_url: str, name: str, message: Message, number: int) -> "CachedResource":
        """``message`` serialized, versioned by its fields ``number`` (:func:`records_version`)."""
        value = message.SerializeToString(deterministic=True)
        header, head = wire.response_resource_header(type_url, len(value))
        return cls(name, type_url, records_version(value, number), (head + value,), header)

    @classmethod
    def of_records(
        cls, type_url: str, name: str, prefix: bytes, records: tuple[bytes, ...], hashes: tuple[str, ...], suffix: bytes
    ) -> "CachedResource":
        """A resource joined from its bytes before some records, the records (each with its hash:
        ``content_version`` of its bytes, made once with it) and its bytes after them: what
        :meth:`of_chained` gives its message, bytes and version, without hashing the records again."""
        if len(records) != len(hashes):
            raise ValueError(f"{type_url} {name!r}: {len(records)} records with {len(hashes)} hashes")
        size = len(prefix) + sum(map(len, records)) + len(suffix)
        header, head = wire.response_resource_header(type_url, size)
        entry = b"".join((head, prefix, *records, suffix))
        if records:
            version = chains_version(prefix, hashes, suffix)
        else:
            version = content_version(memoryview(entry)[len(head) :])
        return cls(name, type_url, version, (entry,), header)

    @property
    def entry(self) -> bytes:
        """The whole response entry (joined, for a resource of several parts)."""
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)

    @property
    def any_view(self) -> memoryview:
        """:attr:`any` of a resource of one part, as a view of it (nothing copied)."""
        if len(self.parts) != 1:
            raise ValueError(f"{self.type_url} {self.name!r}: {len(self.parts)} parts, not one")
        return memoryview(self.parts[0])[self.header :]

    @property
    def any(self) -> bytes:
        """The serialized ``google.protobuf.Any`` (for decoding)."""
        return self.entry[self.header :]

    @cached_property
    def delta_parts(self) -> tuple[bytes | memoryview, ...]:
        """The resource as a ``DeltaDiscoveryResponse.resources`` entry, in parts (made on first
        delta use, then kept). Only the entry's own header is new: the serialized ``Any`` is a view
        of :attr:`parts`' bytes (a copy of every resource a delta stream was sent held 38 MB at R)."""
        any_size = self.size - self.header
        prefix = wire.delta_response_resource_header(self.name, self.version, any_size)
        first = self.parts[0]
        if len(self.parts) > 1:  # the first part is the entry's header alone: a few bytes
            return (prefix + first[self.header :], *self.parts[1:])
        return (prefix, memoryview(first)[self.header :])

    @property
    def delta_entry(self) -> bytes:
        return b"".join(self.delta_parts)

    @property
    def size(self) -> int:
        return sum(map(len, self.parts))


_name, _version, _first = attrgetter("name"), attrgetter("version"), itemgetter(0)


def names_version(resources: Iterable[CachedResource]) -> str:
    """The version of a set of resources: a hash of their names and versions, order-independent."""
    resources = tuple(resources)
    items = sorted(zip(map(_name, resources), map(_version, resources)))  # thousands: no Python loop
    return content_version("\n".join(map("\t".join, items)).encode("utf-8"))


def _names_text(resources: Iterable[CachedResource]) -> tuple[str, dict[str, int]]:
    """The text :func:`names_version` hashes, and where each resource's version starts in it, by name."""
    resources = tuple(resources)
    items = sorted(zip(map(_name, resources), map(_version, resources)))
    lines = list(map("\t".join, items))
    names = list(map(_first, items))
    # each line starts one past the end of the one before; its version, one past the tab after its name
    line_starts = accumulate(map(add, map(len, lines), repeat(1)), initial=0)
    starts = dict(zip(names, map(add, line_starts, map(add, map(len, names), repeat(1)))))
    return "\n".join(lines), starts


def _dict_of(items: Mapping[str, CachedResource]) -> dict[str, CachedResource]:
    """A new dict of ``items``: of a mapping proxy (what a ``TypeResources`` holds), its dict's
    copy, made in C at once, where ``dict()`` of the proxy or ``update`` from it goes key by key
    (thousands of resources, for each set a change makes again)."""
    if type(items) is MappingProxyType or type(items) is dict:
        return items.copy()  # type: ignore[attr-defined]
    return dict(items)


@dataclass(frozen=True)
class TypeResources:
    """All resources of one type for one node.

    Made whole (:meth:`of`), or composed (:meth:`composed`) of resource sets that many nodes
    share plus the node's own resources: the sets are then kept as they are (``parts``), so a
    node's response joins a few large byte strings instead of every resource's, and the node's
    version is computed from the sets' versions, not from all their resources again.
    """

    type_url: str
    items: Mapping[str, CachedResource] = field(default_factory=lambda: _EMPTY)
    version: str = field(default="")
    #: Shared sets this one is made of, then the node's own resources (all of them in ``items`` too).
    parts: tuple["TypeResources", ...] = ()
    own: tuple[CachedResource, ...] = ()

    @classmethod
    def of(
        cls,
        type_url: str,
        messages: Mapping[str, Message],
        serialize: Callable[[str, str, Message], CachedResource] = CachedResource.of,
    ) -> "TypeResources":
        items = {name: serialize(type_url, name, msg) for name, msg in sorted(messages.items())}
        return cls.of_cached(type_url, items)

    @classmethod
    def of_cached(
        cls, type_url: str, items: Mapping[str, CachedResource], *, keep_names_text: bool = False
    ) -> "TypeResources":
        """From resources already serialized, in the given order. ``keep_names_text``: keep the
        text its version is the hash of (:func:`names_version`'s), with where each version is in
        it, for :meth:`replaced` (a set that the next change will make again from this one, one
        or two of its thousands of resources replaced: that change then never sorts them all)."""
        if not keep_names_text:
            return cls(type_url, MappingProxyType(dict(items)), names_version(items.values()))
        text, starts = _names_text(items.values())
        made = cls(type_url, MappingProxyType(dict(items)), content_version(text.encode("utf-8")))
        made.__dict__["_names_text"] = (text, starts)
        return made

    def replaced(self, changed: Mapping[str, CachedResource]) -> "TypeResources":
        """These resources (made whole: :meth:`of_cached`), those named in ``changed`` replaced by
        its (the same names), in the same order. Its version is :func:`names_version`'s, hashed from
        this one's text with the versions that changed written over theirs (a version's length never
        changes): a set many nodes share, of thousands of resources, changes in one or two of them."""
        items = _dict_of(self.items)
        items.update(changed)
        found = self.__dict__.get("_names_text")
        text, starts = found if found is not None else _names_text(self.items.values())
        edits = []
        for name, resource in changed.items():
            old, start = self.items.get(name), starts.get(name)
            if self.parts or len(starts) != len(self.items) or old is None or start is None or (
                resource.name != name or old.name != name or len(resource.version) != len(old.version)
            ):  # not what this is made for: made whole
                return TypeResources.of_cached(self.type_url, items)
            edits.append((start, resource.version))
        pieces: list[str] = []
        at = 0
        for start, version in sorted(edits):
            pieces += (text[at:start], version)
            at = start + len(version)
        pieces.append(text[at:])
        text = "".join(pieces)
        made = TypeResources(self.type_url, MappingProxyType(items), content_version(text.encode("utf-8")))
        made.__dict__["_names_text"] = (text, starts)  # for the next change (the same names: the same starts)
        if "names" in self.__dict__:  # the same names: the very same set of them (ResourceStore.names)
            made.__dict__["names"] = self.__dict__["names"]
        # What :meth:`changes_since` would find going from this one, known here: the first stream
        # to send the change (at R, ahead of a hundred others) does not go through thousands of
        # resources for it. Found in items order, which for these sets is name order (resource_store;
        # checked once, then carried like the text: the same names in the same order).
        in_name_order = self.__dict__.get("_in_name_order")
        if in_name_order is None:
            in_name_order = all(map(lt, self.items, islice(self.items, 1, None)))
        made.__dict__["_in_name_order"] = in_name_order
        since = sorted((r for name, r in changed.items()
                        if (old := self.items[name]) is not r and old.version != r.version), key=_name)
        if in_name_order or len(since) < 2:
            made.__dict__["_changes"] = {id(self): (weakref.ref(self), (since, []))}
        return made

    @classmethod
    def composed(
        cls,
        type_url: str,
        parts: Iterable["TypeResources"],
        rest: Mapping[str, CachedResource],
        *,
        merged: "TypeResources | None" = None,
    ) -> "TypeResources":
        """``parts`` (shared sets, in a stable order) followed by ``rest``; a name in both is ``rest``'s, a name
        in two parts the later one's (then served resource by resource: a set's joined entries would name it twice).
        ``merged``: these ``parts`` composed alone, held (their items are copied from it, not merged part by part
        again: the same items in the same order); kept on what is made."""
        parts = tuple(p for p in parts if p.items)
        if not parts:
            return cls.of_cached(type_url, dict(sorted(rest.items())))
        if merged is not None and len(merged.parts) == len(parts) and all(map(operator.is_, merged.parts, parts)):
            items = merged.items.copy()  # (a mapping proxy's copy is its dict's: one copy, not key by key)
            overridden = bool(rest.keys() & items.keys())  # (merged's parts share no name: it kept them apart)
        else:
            merged = None
            items = _dict_of(parts[0].items)
            for part in parts[1:]:
                items.update(_dict_of(part.items))
            # a name in two parts is the later one's: the earlier no longer holds what it says either
            overridden = len(items) != sum(len(part.items) for part in parts) or bool(rest.keys() & items.keys())
        own = {name: rest[name] for name in sorted(rest)}
        items.update(own)
        if overridden:  # a part no longer holds what it says: serve it resource by resource
            return cls.of_cached(type_url, items)
        lines = [f"set\t{p.version}\t{len(p.items)}" for p in parts] + [f"{n}\t{r.version}" for n, r in own.items()]
        version = content_version("\n".join(lines).encode("utf-8"))
        made = cls(type_url, MappingProxyType(items), version, parts, tuple(own.values()))
        if merged is not None:  # held with it: the node's next change finds it (ResourceStore.composed)
            made.__dict__["_merged"] = merged
        return made

    @cached_property
    def names(self) -> frozenset[str]:
        """The names of :attr:`items` (kept: a set made from this one by :meth:`replaced` has the
        same names, and this very set of them)."""
        return frozenset(self.items)

    @cached_property
    def _joined(self) -> bytes:
        return b"".join(part for r in self.items.values() for part in r.parts)

    @property
    def all_entries(self) -> bytes:
        """Every resource's response entry, joined: the body of a full-state (wildcard) response.

        A shared set keeps its joined bytes (once, for every node using it); a node's own
        resources and a composed whole are joined for each response, not kept: a second copy
        of every node's config would double the control plane's memory."""
        return b"".join(self.entry_chunks())

    def entry_chunks(self) -> list[bytes]:
        """:attr:`all_entries` not joined: the held byte strings that make it up, so a response
        can be joined from them in one copy (``wire.discovery_response_chunks``)."""
        if self.parts:
            return [p.shared_entries for p in self.parts] + [part for r in self.own for part in r.parts]
        return [part for r in self.items.values() for part in r.parts]

    @property
    def shared_entries(self) -> bytes:
        """:attr:`all_entries`, kept after the first use (for a set many nodes share)."""
        return self._joined

    def delta_entry_chunks(self) -> list[bytes | memoryview]:
        """Every resource as ``DeltaDiscoveryResponse.resources`` entries (a new delta stream's
        answer): as :meth:`entry_chunks`, a shared set's joined once for every node using it, so
        the response is joined from a few large byte strings, not from thousands spread in memory."""
        if self.parts:
            return [p._delta_joined for p in self.parts] + [part for r in self.own for part in r.delta_parts]
        return [part for r in self.items.values() for part in r.delta_parts]

    @cached_property
    def _delta_joined(self) -> bytes:
        return b"".join(part for r in self.items.values() for part in r.delta_parts)

    def changes_since(self, before: "TypeResources") -> tuple[list[CachedResource], list[str]]:
        """The resources here that ``before`` lacks or holds another version of, and the names
        of those it holds that are gone here: found once for every stream going from ``before``
        to these (a node's streams, and the nodes sharing both), then kept."""
        memo = self.__dict__.setdefault("_changes", {})  # id -> (weak reference, changes): never keeps ``before``
        found = memo.get(id(before))
        if found is not None and found[0]() is before:
            return found[1]
        told = self._told_changes(before)
        if told is not None:
            changed, removed = told
        else:
            held = before.items
            changed = [
                r for name, r in self.items.items()
                if (old := held.get(name)) is not r and (old is None or old.version != r.version)
            ]
            removed = [name for name in held if name not in self.items]
        if len(memo) >= _CHANGES_KEPT:
            memo.clear()
        memo[id(before)] = (weakref.ref(before), (changed, removed))
        return changed, removed

    def _told_changes(self, before: "TypeResources") -> tuple[list[CachedResource], list[str]] | None:
        """:meth:`changes_since` without looking through every resource, when both are composed of
        shared sets, set for set either the same or made from it by :meth:`replaced` (which told
        what it changed), and of the node's own few: a node's endpoints after a pod change, at R
        2,100 assignments of which one to three changed; a pod's own node's clusters, 2,100 shared
        ones and a few of its own, one of them new (a new identity's), which the first stream of a
        change (that node's) would otherwise go through before any other stream sends anything.
        None when that is not so (then they are looked through)."""
        parts, before_parts = self.parts, before.parts
        if not parts or len(parts) != len(before_parts):
            return None
        changed: list[CachedResource] = []
        for part, old in zip(parts, before_parts):
            if part is old:
                continue
            found = part.__dict__.get("_changes", {}).get(id(old))
            if found is None or found[0]() is not old or found[1][1]:
                return None  # not made from it by replaced() (which keeps the names: nothing removed)
            changed += found[1][0]
        # a name in two sets (or in a set and the node's own) is the later one's (composed): then a
        # set's changes may not be the whole's
        if len(self.items) != sum(len(part.items) for part in parts) + len(self.own) or (
            len(before.items) != sum(len(part.items) for part in before_parts) + len(before.own)
        ):
            return None
        # the sets hold the same names as before's (replaced() keeps them): the node's own are the rest
        held = before.items
        changed += [r for r in self.own
                    if (old := held.get(r.name)) is not r and (old is None or old.version != r.version)]
        return changed, [r.name for r in before.own if r.name not in self.items]

    def select(self, names: Iterable[str] | None) -> list[CachedResource]:
        """The resources with these names that exist (all of them for ``None``), sorted by name."""
        if names is None:
            return list(self.items.values())
        return [self.items[n] for n in sorted(set(names)) if n in self.items]

    @property
    def size(self) -> int:
        return sum(r.size for r in self.items.values())


def _with_type_refused(fields: Mapping[str, object], mine: Mapping[str, object]) -> str:
    """Why :meth:`Snapshot.with_type` refuses these ``fields``."""
    unknown = sorted(n for n in fields if n not in mine)
    reasons = [f"Snapshot has no fields {unknown}"] if unknown else []
    if "types" in fields:
        reasons.append("Snapshot.with_type sets types itself (its resources argument), not among its other fields")
    return "; ".join(reasons)


@dataclass(frozen=True)
class Snapshot:
    """Everything one node is served, by type URL, plus what the debug API shows about it.

    Only the serialized form is kept (no second copy as protobuf objects): :meth:`decode` rebuilds
    the NodeResources and Secrets from the very bytes that are served, so ``/debug/config_dump``
    shows exactly what Envoy was sent. ``secret_refs`` says which identity each secret carries.
    ``changed_at`` is the monotonic time of the model change this snapshot answers, so the server
    can measure push latency from change to send. ``known`` is False for a node the model does
    not have: it is served an empty config.
    """

    node: str
    types: Mapping[str, TypeResources]
    known: bool = True
    changed_at: float = field(default_factory=time.monotonic)
    generation_seconds: float = 0.0
    secret_refs: Mapping[str, SecretRef] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls,
        node: str,
        messages: Mapping[str, Mapping[str, Message]],
        *,
        known: bool = True,
        changed_at: float | None = None,
        generation_seconds: float = 0.0,
        secret_refs: Mapping[str, SecretRef] | None = None,
    ) -> "Snapshot":
        """Serialize and version ``messages`` (type URL -> name -> message); missing types are empty."""
        unknown = set(messages) - set(PUSH_ORDER)
        if unknown:
            raise ValueError(f"snapshot for node {node!r} has types this server does not serve: {sorted(unknown)}")
        types = {t: TypeResources.of(t, messages.get(t, {})) for t in PUSH_ORDER}
        return cls(
            node=node,
            types=MappingProxyType(types),
            known=known,
            changed_at=time.monotonic() if changed_at is None else changed_at,
            generation_seconds=generation_seconds,
            secret_refs=MappingProxyType(dict(secret_refs or {})),
        )

    @classmethod
    def empty(cls, node: str, *, known: bool = False) -> "Snapshot":
        return cls.build(node, {}, known=known)

    def with_type(self, resources: TypeResources, changed_at: float, **fields: float) -> "Snapshot":
        """This snapshot with one type's resources replaced (new secrets after a rotation, new
        endpoints), and any other ``fields`` given (one ``replace``). ``types`` is not among them:
        given, it would silently replace every type (``changed_at`` given twice, Python refuses)."""
        mine = self.__dict__
        for name in fields:  # (one or none: no set made for each of a change's 100 nodes)
            if name not in mine or name == "types":
                raise TypeError(_with_type_refused(fields, mine))
        # (a mapping proxy's copy is its dict's: dict() of the proxy goes key by key)
        types = self.types.copy() if isinstance(self.types, (MappingProxyType, dict)) else dict(self.types)
        types[resources.type_url] = resources
        # as ``replace`` does, but without calling __init__ (a few times faster: a pod change remakes
        # 100 nodes' endpoints); a Snapshot keeps nothing but its fields in __dict__
        made = object.__new__(Snapshot)
        fresh = made.__dict__
        fresh.update(mine)
        fresh["types"] = MappingProxyType(types)
        fresh["changed_at"] = changed_at
        if fields:
            fresh.update(fields)
        return made

    def resources(self, type_url: str) -> TypeResources:
        return self.types.get(type_url) or TypeResources(type_url)

    def version(self, type_url: str) -> str:
        return self.resources(type_url).version

    def versions(self) -> dict[str, str]:
        return {t: r.version for t, r in self.types.items()}

    def decode(self) -> tuple[NodeResources, dict[str, Secret]]:
        """The node's resources and secrets, parsed back from the cached bytes."""
        out = NodeResources(node=self.node, secrets=dict(self.secret_refs))
        targets: dict[str, dict[str, Message]] = {
            LISTENER_TYPE: out.listeners, CLUSTER_TYPE: out.clusters, ENDPOINT_TYPE: out.endpoints,
        }
        secrets: dict[str, Secret] = {}
        for type_url, resources in self.types.items():
            target = targets.get(type_url, secrets)
            for name, cached in resources.items.items():
                target[name] = _MESSAGES[type_url].FromString(any_pb2.Any.FromString(cached.any).value)
        return out, secrets

    def changed_types(self, previous: "Snapshot | None") -> list[str]:
        """Types whose version differs from ``previous`` (all types when there is none), in push order."""
        if previous is None:
            return list(PUSH_ORDER)
        mine, theirs = self.types, previous.types
        changed = []
        for t in PUSH_ORDER:  # (for each node of every change: the very same resources are not looked into)
            a, b = mine.get(t), theirs.get(t)
            if a is not b and (a.version if a is not None else "") != (b.version if b is not None else ""):
                changed.append(t)
        return changed

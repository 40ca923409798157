"""One copy of each distinct serialized resource, however many nodes are served it.

Most of a large cluster's config is the same on every node (a service's cluster and endpoints,
in the linear layout) or the same as before the last change. The store makes sure such a
resource is serialized once and that every snapshot holding it holds the very same bytes:

- a resource the translators built as a shared piece (a fragment: the same message object for
  every node, see ``translators/fragments.py``) is serialized the first time and the result kept
  on the fragment, so no other node serializes it again;
- a shared set of resources becomes one :class:`~zpilot.xds.snapshot.TypeResources` kept on its
  fragment, which each node's snapshot takes as a part;
- a listener put together from shared pieces (``ListenerParts``: the linear layout's outbound
  listener, every node's holding the same thousands of chains and the same destination map) is
  written from its parts: its own part serialized, the pieces' bytes (made once for all nodes)
  joined to it, its content hash made from theirs; the whole listener is never built, serialized
  or hashed for each node;
- anything else is serialized and then *interned* by content (type, name, content hash): when a
  snapshot already holds equal bytes, the new copy is dropped for the held one.

The intern table holds resources weakly: a resource lives while a snapshot (or a fragment)
holds it, so the store never keeps config no node is served. Called from the producer's worker
thread, one at a time.
"""

from __future__ import annotations

import weakref
from itertools import islice
from typing import Iterable

from envoy.config.listener.v3.listener_pb2 import Listener
from google.protobuf import any_pb2
from google.protobuf.message import Message

from .. import contract, protowire

from ..translators import consistency
from ..translators.context import SERIALIZED_BYTES, ListenerParts, ResourceSet, SerializedChains
from ..translators.fragments import Fragment, FragmentGroup
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE
from . import snapshot
from .snapshot import CachedResource, TypeResources, content_version

#: The keys under which the serialized form and the consistency facts are kept on a fragment (``Fragment.derived``).
SERIALIZED = "xds.serialized"
FACTS = "xds.facts"
CHUNK = "xds.chunk"
RECORDS = "xds.records"
#: On a group serialized from an earlier one: (that group, weakly; the names of the members that differ, None
#: when the two do not hold the same names).
BASE = "xds.base"
_FILTER_CHAINS = Listener.DESCRIPTOR.fields_by_name["filter_chains"].number
#: The listeners versioned by their filter chains (``snapshot.records_version``), however they were
#: made: the inbound listeners, a chain per local pod, whose pod's change changes one chain; kept
#: serialized with their hashes (``SerializedChains``), the hundred others are not hashed again.
BY_CHAINS = frozenset({contract.INBOUND_LISTENER, contract.INBOUND_PLAINTEXT_LISTENER})
_ANY_VALUE = any_pb2.Any.DESCRIPTOR.fields_by_name["value"].number
#: The consistency check's name for each type it looks at.
CHECKED = {LISTENER_TYPE: consistency.LISTENER, CLUSTER_TYPE: consistency.CLUSTER, ENDPOINT_TYPE: consistency.ENDPOINTS}


class ResourceStore:
    """Serializes resources, once per distinct content (see the module's docstring)."""

    def __init__(self) -> None:
        self._interned: weakref.WeakValueDictionary[tuple[str, str, str], CachedResource] = (
            weakref.WeakValueDictionary()
        )
        #: Resources serialized (not found already serialized): what tests count.
        self.serialized = 0
        #: The consistency facts of each held resource (they depend on its content alone).
        self._facts: weakref.WeakKeyDictionary[CachedResource, consistency.Facts] = weakref.WeakKeyDictionary()
        #: Types of nodes made of shared sets alone, by their sets (see :meth:`composed`).
        self._composed: weakref.WeakValueDictionary[tuple, TypeResources] = weakref.WeakValueDictionary()
        #: The last group of fragments serialized, by type and builder: the next one's base (see :meth:`resource_set`).
        self._lineage: dict[tuple, weakref.ref[Fragment]] = {}
        #: The names of types made of several shared sets, by the ids of their sets' names (see :meth:`names`).
        self._names: dict[tuple[int, ...], tuple[frozenset[str], list[frozenset[str]]]] = {}

    def intern(self, resource: CachedResource) -> CachedResource:
        """The held resource equal to ``resource`` if there is one, else ``resource`` (now held)."""
        key = (resource.type_url, resource.name, resource.version)
        held = self._interned.get(key)
        if held is not None and held.parts == resource.parts:
            return held
        self._interned[key] = resource
        return resource

    def resource(
        self,
        type_url: str,
        name: str,
        message: Message,
        fragment: Fragment | None = None,
        parts: ListenerParts | None = None,
    ) -> CachedResource:
        """``message`` serialized; once for all nodes when it is a shared ``fragment``. A listener
        put together from shared pieces (``parts``) is serialized from them, ``message`` unread:
        its own part's bytes joined with the pieces' (serialized once for all nodes and kept
        as those objects), never the whole listener serialized and hashed for each node."""
        if fragment is not None:
            done = fragment.derived.get((SERIALIZED, type_url))
            if done is not None:
                return done
        self.serialized += 1
        by_chains = type_url == LISTENER_TYPE and name in BY_CHAINS
        if parts is not None:
            if by_chains:
                made = CachedResource.of_records(type_url, name, *listener_records(name, parts))
            else:
                made = CachedResource.joined(type_url, name, listener_pieces(name, parts))
        elif by_chains:
            made = CachedResource.of_chained(type_url, name, message, _FILTER_CHAINS)
        else:
            made = CachedResource.of(type_url, name, message)
        resource = self.intern(made)
        if by_chains and parts is None and fragment is not None:
            # what the node's first pod change cuts its chains from (translators/inbound.py): the listener's bytes,
            # the value of the served entry's Any (a view: nothing copied, nothing more held); of the resource
            # interned, not of ``made``, which a held equal one replaces (a view of it would keep a second copy)
            fragment.derived[SERIALIZED_BYTES] = next(protowire.length_delimited(resource.any_view, _ANY_VALUE))
        if fragment is not None:
            fragment.derived[(SERIALIZED, type_url)] = resource
        return resource

    def resource_set(self, shared: ResourceSet) -> TypeResources:
        """A shared set serialized, once for every node that has it.

        A group of fragments is serialized from the last group the same builder made
        (:meth:`_from_base`): after a pod change, a service endpoint group of 2,000 members
        differs from the last one in a member or two, and only those are looked at again."""
        key = (SERIALIZED, shared.type_url)
        done = shared.fragment.derived.get(key)
        if done is None:
            type_url = shared.type_url
            group = shared.fragment.value
            lineage = (type_url, _builder(shared.fragment)) if isinstance(group, FragmentGroup) else None
            base = self._lineage.get(lineage) if lineage is not None else None
            base = base() if base is not None else None
            done = self._from_base(shared, base) if base is not None and base is not shared.fragment else None
            if done is None:
                done = TypeResources.of_cached(
                    type_url,
                    {
                        name: self.resource(type_url, name, message, shared.member(name))
                        for name, message in sorted(shared.resources.items())
                    },
                    keep_names_text=lineage is not None,  # the next group of its builder is made from it
                )
            shared.fragment.derived[key] = done
            if lineage is not None:
                self._lineage[lineage] = weakref.ref(shared.fragment)
        return done

    def _from_base(self, shared: ResourceSet, base: Fragment) -> TypeResources | None:
        """The group ``shared`` serialized from ``base`` (an earlier group of the same builder):
        the members both hold (the very same fragments) are the base's resources as they are,
        which is what serializing them would give (a member's resource is kept on it); None when
        the base was not serialized. Notes on ``shared`` which members differ, and the base
        (weakly), so that :meth:`set_facts` can do the same."""
        type_url = shared.type_url
        held = base.derived.get((SERIALIZED, type_url))
        if held is None:
            return None
        members, before = shared.fragment.value.members, base.value.members
        noted = shared.fragment.value.based_on()
        if noted is not None and noted[0] is base.value:  # made from it: only the members it names may differ
            changed = [name for name in noted[1] if before.get(name) is not members[name]]
            shared.fragment.derived[(BASE, type_url)] = (weakref.ref(base), tuple(changed))
            return held.replaced({name: self.resource(type_url, name, members[name].value, members[name])
                                  for name in changed})
        same_names = members.keys() == before.keys()
        if same_names:  # those that differ serialized, in held's order (name order)
            changed = [name for name, member in members.items() if before.get(name) is not member]
            shared.fragment.derived[(BASE, type_url)] = (weakref.ref(base), tuple(changed))
            return held.replaced({name: self.resource(type_url, name, members[name].value, members[name])
                                  for name in changed})
        items: dict[str, CachedResource] = {}
        for name in sorted(members):  # held's are in name order
            member = members[name]
            if before.get(name) is member:
                items[name] = held.items[name]
            else:
                items[name] = self.resource(type_url, name, member.value, member)
        shared.fragment.derived[(BASE, type_url)] = (weakref.ref(base), None)
        return TypeResources.of_cached(type_url, items, keep_names_text=True)

    def composed(self, type_url: str, parts: list[TypeResources], own: dict[str, CachedResource]) -> TypeResources:
        """A node's resources of one type made of shared sets (and its own): the very same object
        for every node made of the same sets alone (its joined bytes, and what a stream derives
        from it, ``TypeResources.changes_since``, are then made once for all of them). With its own,
        made from that of the sets alone (the same object for every node, and for the node's next
        change): their thousands of resources copied as one dict, not merged set by set again."""
        if own:
            return TypeResources.composed(type_url, parts, own, merged=self.composed(type_url, parts, {}))
        key = (type_url, *map(id, parts))  # the value holds its parts: their ids stay theirs while it lives
        found = self._composed.get(key)
        if found is None:
            found = self._composed[key] = TypeResources.composed(type_url, parts, own)
        return found

    #: How many unions of sets' names :meth:`names` keeps (a change makes one; the last few are enough).
    NAMES_KEPT = 16

    def names(self, resources: TypeResources) -> frozenset[str]:
        """``frozenset(resources.items)``, kept. Of a type made of shared sets and a node's own few
        (its clusters), its sets' names and its own, not its thousands of names put in a set again.
        Of a type made of shared sets alone (a node's endpoints),
        the union of its sets' names (``TypeResources.names``), kept by theirs: a change remakes
        a set or two, one member replaced, whose names are then the very same set
        (``TypeResources.replaced``), and the union of 2,000 names is not made again (nor compared
        again: ``push._same_summary`` finds the same object)."""
        parts = resources.parts
        if not parts:
            return resources.names
        if resources.own:  # composed with its own (ResourceStore.composed): its sets' names and its own few
            merged = resources.__dict__.get("_merged")
            if merged is None:
                return resources.names
            found_own = resources.__dict__.get("_names_with_own")
            if found_own is None:  # (its own are its items' last: none of them its sets')
                found_own = self.names(merged).union(islice(reversed(resources.items), len(resources.own)))
                resources.__dict__["_names_with_own"] = found_own
            return found_own
        sets = [part.names for part in parts]
        if len(sets) == 1:
            return sets[0]
        key = tuple(map(id, sets))  # the value holds the sets: their ids stay theirs while it is kept
        found = self._names.get(key)
        if found is None:
            if len(self._names) >= self.NAMES_KEPT:
                self._names.clear()
            found = self._names[key] = (frozenset().union(*sets), sets)
        return found[0]

    def facts(
        self,
        resource: CachedResource,
        message: Message,
        parts: ListenerParts | None = None,
        fragment: Fragment | None = None,
    ) -> consistency.Facts:
        """The consistency facts of a serialized resource (``message`` is what it was serialized
        from; ``parts``: how a listener was put together from shared pieces, which makes its
        facts cheaper to derive). A whole listener's are kept on its ``fragment`` too, where
        the facts of its chains are read from when a node's chains are derived from it
        (``consistency.chains_of``)."""
        found = self._facts.get(resource)
        if found is None:
            if parts is not None:
                found = consistency.listener_facts_of_parts(resource.name, parts)
            else:
                found = consistency.resource_facts(CHECKED[resource.type_url], resource.name, message)
            self._facts[resource] = found
        if fragment is not None and parts is None and resource.type_url == LISTENER_TYPE:
            fragment.derived[consistency.LISTENER_FACTS] = found
        return found

    def set_facts(self, shared: ResourceSet) -> consistency.Facts:
        """The consistency facts of a shared set, once for every node that has it."""
        key = (FACTS, shared.type_url)
        found = shared.fragment.derived.get(key)
        if found is None:
            serialized = self.resource_set(shared)
            found = self._facts_from_base(shared, serialized)
            if found is None:
                found = consistency.combined(
                    self.facts(serialized.items[name], message) for name, message in sorted(shared.resources.items())
                )
            shared.fragment.derived[key] = found
        return found

    def _facts_from_base(self, shared: ResourceSet, serialized: TypeResources) -> consistency.Facts | None:
        """The base's facts (:meth:`_from_base`) when the set has its names and each member that
        differs has the facts the base's had (what config needs rarely changes with an endpoint):
        the facts of the set, each member's in order, are then equal to the base's."""
        type_url = shared.type_url
        noted = shared.fragment.derived.get((BASE, type_url))
        if noted is None or noted[1] is None:
            return None
        base = noted[0]()
        if base is None:
            return None
        facts = base.derived.get((FACTS, type_url))
        held = base.derived.get((SERIALIZED, type_url))
        if facts is None or held is None:
            return None
        values = shared.fragment.value.values
        for name in noted[1]:
            before = self._facts.get(held.items[name])
            if before is None or self.facts(serialized.items[name], values[name]) != before:
                return None
        return facts

    def held(self) -> list[CachedResource]:
        """Every distinct resource some snapshot or fragment still holds."""
        return list(self._interned.values())

    def held_bytes(self) -> int:
        """The bytes of every distinct resource held (a part shared by several counted once)."""
        return total_bytes(self.held())


def _builder(fragment: Fragment):
    """What built a fragment (``Fragments.get``'s key is the builder and its arguments)."""
    key = fragment.key
    return key[0] if isinstance(key, tuple) and key else key


def listener_pieces(name: str, parts: ListenerParts) -> list[tuple[bytes, str | None]]:
    """The serialized listener that ``parts`` describe, as pieces in order: its own bytes (hash
    ``None``) and each shared piece's bytes with its content hash (both made once per piece).

    Serialized deterministically, a message's fields come in field-number order: the shared
    chains (field 3) go right after the listener's own, before its next field; each shared
    matcher piece replaces the empty ``on_match`` at its path, the lengths of the fields around
    it rewritten (``protowire.spliced``). Joined, the pieces are the whole listener's
    deterministic serialization, byte for byte (tests/xds/test_listener_bytes.py)."""
    _check_parts(name, parts)
    own = parts.own.SerializeToString(deterministic=True)
    at = protowire.insertion_point(own, _FILTER_CHAINS)
    pieces: list[tuple[bytes, str | None]] = [(own[:at], None)]
    pieces.extend(
        _own_chunk(f) if isinstance(f.value, SerializedChains) else _chunk(f, _chains_bytes) for f in parts.chains
    )
    matches = [_chunk(f, bytes) for f in parts.matches]
    for piece in protowire.spliced(own[at:], list(parts.match_paths), [len(data) for data, _ in matches]):
        pieces.append((piece, None) if isinstance(piece, bytes) else matches[piece])
    return pieces


def listener_records(name: str, parts: ListenerParts) -> tuple[bytes, tuple[bytes, ...], tuple[str, ...], bytes]:
    """The serialized listener that ``parts`` describe (:func:`listener_pieces`' bytes) as its bytes
    before its filter chains, each chain's record and its content hash (kept: a node's own chains'
    with them, ``SerializedChains``; a shared piece's on it), and its bytes after them: what
    ``CachedResource.of_records`` versions by the chains' hashes."""
    _check_parts(name, parts)
    own = parts.own.SerializeToString(deterministic=True)
    at = protowire.insertion_point(own, _FILTER_CHAINS)
    records: list[bytes] = []
    hashes: list[str] = []
    for fragment in parts.chains:
        value = fragment.value
        if isinstance(value, SerializedChains):
            records.extend(value.records)
            hashes.extend(value.hashes)
        else:
            piece_records, piece_hashes = _records(fragment)
            records.extend(piece_records)
            hashes.extend(piece_hashes)
    matches = [_chunk(f, bytes)[0] for f in parts.matches]
    suffix = b"".join(
        piece if isinstance(piece, bytes) else matches[piece]
        for piece in protowire.spliced(own[at:], list(parts.match_paths), [len(data) for data in matches])
    )
    return own[:at], tuple(records), tuple(hashes), suffix


def _records(fragment: Fragment) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    """A shared piece of filter chains as records and their hashes (made once, kept on it)."""
    done = fragment.derived.get(RECORDS)
    if done is None:
        records = tuple(protowire.field_bytes(_FILTER_CHAINS, c.SerializeToString(deterministic=True)) for c in fragment.value)
        done = fragment.derived[RECORDS] = (records, tuple(map(content_version, records)))
    return done


def _check_parts(name: str, parts: ListenerParts) -> None:
    if len(parts.match_paths) != len(parts.matches):
        raise ValueError(f"listener {name!r}: {len(parts.matches)} matcher pieces, {len(parts.match_paths)} places for them")
    if any(not path or path[0] <= _FILTER_CHAINS for path in parts.match_paths):
        raise ValueError(f"listener {name!r}: a matcher piece's place is not after its filter chains")


def _chains_bytes(chains) -> bytes:
    return b"".join(protowire.field_bytes(_FILTER_CHAINS, c.SerializeToString(deterministic=True)) for c in chains)


def _own_chunk(fragment: Fragment) -> tuple[bytes, None]:
    """A node's own chains kept serialized (``SerializedChains``), joined: bytes of the node's
    alone, so joined into its own part (hash ``None``), whose version is then the whole
    listener's content hash, as if it had been serialized whole. Not kept: the listener they
    are joined into is (on its own fragment: ``Translated.shared_resource``)."""
    return b"".join(fragment.value.records), None


def _chunk(fragment: Fragment, serialize) -> tuple[bytes, str | None]:
    """A shared piece's bytes and their content hash, both made once; the hash only once the piece
    is large enough to be kept apart (``snapshot.MIN_SHARED_CHUNK``): a smaller one is joined into
    the bytes around it and hashed with them (``CachedResource.joined``), so it goes without (None),
    as the node's own bytes do (a node's maps of its pods, new on each of its pod changes)."""
    done = fragment.derived.get(CHUNK)
    if done is None:
        done = fragment.derived[CHUNK] = (serialize(fragment.value), None)
    data, data_hash = done
    if data_hash is None and len(data) >= snapshot.MIN_SHARED_CHUNK:
        done = fragment.derived[CHUNK] = (data, content_version(data))
    return done


def total_bytes(resources: Iterable[CachedResource]) -> int:
    """The size of distinct resources (each bytes object counted once)."""
    seen: dict[int, int] = {}
    for r in resources:
        for part in r.parts:
            seen[id(part)] = len(part)
    return sum(seen.values())

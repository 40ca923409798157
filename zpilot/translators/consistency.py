"""Is one node's config whole? Checked before it is cached, so Envoy is never sent what it refuses.

Envoy refuses a listener update outright when two filter chains share a name, when a matcher
names a chain the listener lacks, or when two chains match the same connections; and it rejects
the whole LDS response with it, so one bad Service took the outbound listener from every node.
References that do not resolve are no better: a cluster whose endpoints never come stays
warming, a listener whose secret never comes never listens, a tcp_proxy to a missing cluster
resets every connection. Like go-control-plane's ``Snapshot.Consistent``, this looks at the
resources alone (no model, no I/O): it is the net under every translator, present and future.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import threading
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from operator import attrgetter, itemgetter
from socket import AF_INET, inet_ntop, inet_pton
from typing import Callable, Iterable, Iterator, Mapping

from google.protobuf.message import Message

from google.protobuf import wrappers_pb2
from xds.type.matcher.v3 import ip_pb2, matcher_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from .. import protowire
from ..model.problems import clip
from .context import ListenerParts, SerializedChains
from .fragments import Fragment
from .matcher import SerializedMap
from .pod_select import TLV_CLUSTER
from .resources import NodeResources, SecretRef

#: How many findings one error message lists (the rest are counted).
SHOWN = 5

_TCP_PROXY = tcp_proxy_pb2.TcpProxy.DESCRIPTOR.full_name
_HCM = http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name
_TLS_CONTEXTS = {
    tls_pb2.DownstreamTlsContext.DESCRIPTOR.full_name: tls_pb2.DownstreamTlsContext,
    tls_pb2.UpstreamTlsContext.DESCRIPTOR.full_name: tls_pb2.UpstreamTlsContext,
}
_INTERNAL_UPSTREAM = internal_upstream_pb2.InternalUpstreamTransport.DESCRIPTOR.full_name
_IP_MATCHER = ip_pb2.IPMatcher.DESCRIPTOR.full_name


class InconsistentResources(ValueError):
    """The node's config would be refused by Envoy, or names something it does not contain."""

    def __init__(self, node: str, findings: list[str]) -> None:
        self.node = node
        self.findings = findings
        shown = "; ".join(findings[:SHOWN])
        more = f" (and {len(findings) - SHOWN} more)" if len(findings) > SHOWN else ""
        super().__init__(f"node {node}: {shown}{more}")


def check(resources: NodeResources) -> None:
    """Raise :class:`InconsistentResources` listing every finding of :func:`findings`."""
    found = findings(resources)
    if found:
        raise InconsistentResources(resources.node, found)


def findings(resources: NodeResources) -> list[str]:
    """Everything wrong with ``resources``, each naming the resource (empty when consistent)."""
    facts = [resource_facts(LISTENER, name, lis) for name, lis in resources.listeners.items()]
    facts += [resource_facts(CLUSTER, name, cluster) for name, cluster in resources.clusters.items()]
    facts += [resource_facts(ENDPOINTS, name, cla) for name, cla in resources.endpoints.items()]
    return join(resources, facts)


# -- facts: what each resource says and needs, so that a node's check is a join --------------------
#
# A resource's facts depend on it alone, so a caller that sees the same resource again (the same
# content on another node, or unchanged since the last model) can keep them: the producer keeps
# them with the serialized resource, and a shared set's with the set, so checking a node of a
# large cluster is a join of sets, not a walk through every resource it has. Findings are
# written only when there is one to report.

LISTENER, CLUSTER, ENDPOINTS = "listener", "cluster", "endpoints"
#: A need: (what kind of resource, its name, who needs it: a key of _WHERE and a name or two).
Need = tuple[str, str, tuple[str, ...]]

_WHERE = {
    "chain": lambda listener, chain: f"listener {_q(listener)} chain {_q(chain)}" if chain else f"listener {_q(listener)}",
    "cluster": lambda name: f"cluster {_q(name)}",
    "cluster-assignment": lambda name: f"cluster {_q(name)} names",
    "endpoints": lambda name: f"endpoints {_q(name)} name",
}
_FINDING = {
    "cluster": lambda where, name: f"{where} sends to cluster {_q(name)}, which does not exist",
    "secret": lambda where, name: f"{where} uses secret {_q(name)}, which is not served",
    "endpoints": lambda where, name: f"{where} has no endpoints resource (it would stay warming)",
    "internal listener": lambda where, name: f"{where} internal listener {_q(name)}, which does not exist",
}


def _finding(need: Need) -> str:
    kind, name, (subject, *names) = need
    return _FINDING[kind](_WHERE[subject](*names), name)


def _wanted(needs: Iterable[Need]) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {}
    # each (kind, name) once (a node's hundred chains need the same cluster a hundred times)
    for kind, name in set(map(_KIND_NAME, needs)):
        wanted.setdefault(kind, set()).add(name)
    return wanted


_KIND_NAME = itemgetter(0, 1)


def _wanted_entries(needs: Iterable[tuple[str, str, object]]) -> tuple[tuple[str, frozenset[str]], ...]:
    """:func:`_wanted` as (kind, names) entries, by kind."""
    return tuple((kind, frozenset(names)) for kind, names in sorted(_wanted(needs).items()))


@dataclass(frozen=True)
class _ChainFacts:
    """What a listener's chains are and need, whatever the listener (kept by content)."""

    names: Counter
    #: (kind, name, chain name) of what each chain sends to and presents, in chain order.
    needs: tuple[tuple[str, str, str], ...]
    #: Every name in ``needs``, by kind: (kind, names) entries (a kind may have several: a
    #: listener's own chains' and its shared pieces', each made once).
    wanted: tuple[tuple[str, frozenset[str]], ...]


@dataclass(frozen=True)
class ListenerFacts:
    name: str
    bind: tuple[str, int] | None
    local: tuple[str, ...]  # wrong within the listener alone (its chains, its matcher)
    chains: _ChainFacts

    def needs(self) -> Iterator[Need]:
        return ((kind, name, ("chain", self.name, chain)) for kind, name, chain in self.chains.needs)


@dataclass(frozen=True)
class Facts:
    """What some resources of a node (one, or a shared set of them) are and need, in resource
    order. ``wanted`` holds every needed name by kind, so that a node having them all is
    told by set inclusion, without going through the needs one by one."""

    misfiled: tuple[str, ...] = ()
    listeners: tuple[ListenerFacts, ...] = ()
    internal: frozenset[str] = frozenset()  # internal listeners among them
    needs: tuple[Need, ...] = ()  # a cluster's endpoints and secrets
    late_needs: tuple[Need, ...] = ()  # the internal listeners endpoints name (checked after every cluster)
    #: (kind, names) entries, by kind (a kind may have several: a listener's shared pieces' are
    #: their own frozensets, not copied into one for each node).
    wanted: tuple[tuple[str, frozenset[str]], ...] = ()

    @classmethod
    def make(cls, misfiled=(), listeners=(), internal=frozenset(), needs=(), late_needs=()) -> "Facts":
        needs, late_needs = tuple(needs), tuple(late_needs)
        wanted = [(kind, frozenset(names)) for kind, names in _wanted(needs + late_needs).items()]
        for lis in listeners:
            wanted.extend(lis.chains.wanted)
        wanted.sort(key=itemgetter(0))
        return cls(tuple(misfiled), tuple(listeners), frozenset(internal), needs, late_needs, tuple(wanted))

    def wanted_names(self) -> dict[str, frozenset[str]]:
        """Every needed name by kind: ``wanted``'s entries of each kind joined."""
        joined: dict[str, set[str]] = {}
        for kind, names in self.wanted:
            joined.setdefault(kind, set()).update(names)
        return {kind: frozenset(names) for kind, names in joined.items()}


def combined(parts: Iterable[Facts]) -> Facts:
    """The facts of a set of resources, from each one's, in order: what they need is what each
    needs (``wanted`` joined, not derived from every need again: a shared set holds thousands)."""
    parts = list(parts)
    wanted: dict[str, set[str]] = {}
    for part in parts:
        for kind, names in part.wanted:
            found = wanted.get(kind)
            if found is None:
                wanted[kind] = set(names)
            else:
                found |= names
    return Facts(
        tuple(chain.from_iterable(p.misfiled for p in parts)),
        tuple(chain.from_iterable(p.listeners for p in parts)),
        frozenset().union(*(p.internal for p in parts)),
        tuple(chain.from_iterable(p.needs for p in parts)),
        tuple(chain.from_iterable(p.late_needs for p in parts)),
        tuple((kind, frozenset(names)) for kind, names in sorted(wanted.items())),
    )


def resource_facts(kind: str, name: str, message: Message) -> Facts:
    """The facts of one resource stored as ``name`` (``kind``: LISTENER, CLUSTER or ENDPOINTS)."""
    if kind == LISTENER:
        return _listener_facts(name, message)  # type: ignore[arg-type]
    if kind == CLUSTER:
        return _cluster_facts(name, message)  # type: ignore[arg-type]
    if kind == ENDPOINTS:
        actual = message.cluster_name  # type: ignore[attr-defined]
        misfiled = [] if name and actual == name else [f"endpoints stored as {_q(name)} is named {_q(actual)}"]
        return Facts.make(misfiled=misfiled, late_needs=_internal_needs(("endpoints", name), message))
    raise ValueError(f"no facts for a {kind}")


@dataclass(frozen=True)
class Names:
    """The names a node's resources have, by kind (what :func:`join` looks needs up in), and
    what is wrong with its secret references (their names alone tell)."""

    clusters: frozenset[str]
    endpoints: frozenset[str]
    secrets: frozenset[str]
    secret_findings: tuple[str, ...] = ()

    @classmethod
    def of(cls, resources: NodeResources) -> "Names":
        return cls.of_names(frozenset(resources.clusters), frozenset(resources.endpoints), resources.secrets)

    @classmethod
    def of_names(cls, clusters: frozenset[str], endpoints: frozenset[str], secrets: Mapping[str, SecretRef]) -> "Names":
        """From the names of a node's clusters and endpoints (as the producer keeps them: not copied
        from its thousands of resources for each check) and its secret references."""
        return cls(
            clusters,
            endpoints,
            frozenset(secrets),
            tuple(
                f"secret stored as {_q(key)} is named {_q(ref.name)}"
                for key, ref in secrets.items()
                if not key or ref.name != key
            ),
        )


def join(resources: NodeResources, facts: Iterable[Facts]) -> list[str]:
    """Everything wrong with a node whose resources have these ``facts`` (every listener's,
    cluster's and endpoints' once, in the order they are listed): each resource alone, then
    what each needs that the node lacks. ``resources`` gives the names the node has."""
    return join_names(Names.of(resources), facts)


def join_names(names: Names, facts: Iterable[Facts]) -> list[str]:
    """:func:`join`, for a node whose resources have these ``names`` (a node whose endpoints
    alone changed is checked with its other resources' names and facts as they were)."""
    facts = list(facts)
    out = [m for f in facts for m in f.misfiled]
    out.extend(names.secret_findings)
    has = {
        "cluster": names.clusters,
        "endpoints": names.endpoints,
        "secret": names.secrets,
        "internal listener": frozenset().union(*(f.internal for f in facts)),
    }
    complete = [all(names <= has[kind] for kind, names in f.wanted) for f in facts]

    def unmet(needs: Iterable[Need]) -> list[str]:
        return [_finding(need) for need in needs if need[1] not in has[need[0]]]

    addresses: dict[tuple[str, int], str] = {}
    for f, ok in zip(facts, complete):
        for lis in f.listeners:
            if lis.bind is not None:
                other = addresses.setdefault(lis.bind, lis.name)
                if other != lis.name:
                    address, port = lis.bind
                    out.append(f"listener {_q(lis.name)} binds {address}:{port} like listener {_q(other)}")
            out.extend(lis.local)
            if not ok:
                out.extend(unmet(lis.needs()))
    for needs in ("needs", "late_needs"):
        for f, ok in zip(facts, complete):
            if not ok:
                out.extend(unmet(getattr(f, needs)))
    return out


def _q(name: str) -> str:
    return repr(clip(name, 200))


def _listener_facts(name: str, listener: listener_pb2.Listener, pieces: "_Pieces | None" = None) -> Facts:
    """A listener's facts; ``pieces``: chains appended to it that are not in ``listener``, and
    chains its matcher selects that ``listener``'s matcher does not show (:func:`_pieces`)."""
    where = f"listener {_q(name)}"
    misfiled = [] if name and listener.name == name else [f"listener stored as {_q(name)} is named {_q(listener.name)}"]
    bind = None
    if listener.HasField("address") and listener.address.HasField("socket_address"):
        sa = listener.address.socket_address
        bind = (sa.address, sa.port_value)
    own = _chains_of(listener)
    pieces = pieces or _NO_PIECES
    counts = pieces.counts
    duplicated = {chain for chain, count in own.names.items() if count > 1 or chain in counts}
    duplicated |= pieces.duplicated
    local = []
    for chain in sorted(duplicated):
        local.append(f"{where} has {own.names.get(chain, 0) + counts.get(chain, 0)} filter chains named {_q(chain)}")
    if listener.HasField("filter_chain_matcher"):
        missing = {t for t in _matcher_targets(listener.filter_chain_matcher) if t not in own.names and t not in counts}
        missing.update(t for t in pieces.unselected if t not in own.names)
        for target in sorted(missing):
            local.append(f"{where}'s filter chain matcher selects chain {_q(target)}, which does not exist")
    else:
        matches = Counter(_match_key(c.filter_chain_match) for c in listener.filter_chains)
        if pieces.parts:
            matches.update(pieces.match_keys)
        for key, count in matches.items():
            if count > 1:
                local.append(f"{where} has {count} filter chains matching the same connections ({_described(key)[:120]})")
    chain_facts = own
    if pieces.parts:  # the pieces' needs and wanted names as they are: made once for every listener of them
        chain_facts = _ChainFacts(own.names, own.needs + pieces.needs, own.wanted + pieces.wanted)
    internal = {name} if listener.HasField("internal_listener") else set()
    return Facts.make(
        misfiled=misfiled, listeners=[ListenerFacts(name, bind, tuple(local), chain_facts)], internal=internal
    )


def listener_facts_of_parts(name: str, parts: ListenerParts) -> Facts:
    """The facts of a listener put together from shared pieces (``ListenerParts``): its own
    part's, walked, and its pieces', derived once for every listener made of them (each piece's
    once, kept on it; all of them together once, kept on the first)."""
    return _listener_facts(name, parts.own, _pieces(parts.chains, parts.matches))


@dataclass(frozen=True)
class _Piece:
    """The facts of a piece of filter chains listeners append (a fragment's value: a tuple of
    chains many listeners share, or one node's own chains kept serialized)."""

    names: Counter
    duplicated: frozenset[str]
    chains: _ChainFacts
    chains_list: tuple = ()
    #: What each chain matches (``_match_key``), when known without ``chains_list``.
    keys: tuple[bytes, ...] | None = None

    @cached_property
    def match_keys(self) -> tuple[bytes, ...]:
        """What each chain matches: read only for a listener without a chain matcher."""
        if self.keys is not None:
            return self.keys
        return tuple(_match_key(c.filter_chain_match) for c in self.chains_list)


def _piece(fragment: Fragment) -> _Piece:
    found = fragment.derived.get("consistency.chains")
    if found is None:
        value = fragment.value
        if isinstance(value, SerializedChains):  # each chain's facts were kept with its bytes
            names = Counter(filter(None, map(_NAME, value.facts)))
            needs = tuple(chain.from_iterable(map(_NEEDS, value.facts)))
            chains = _ChainFacts(names, needs, _wanted_entries(needs))
            keys: tuple[bytes, ...] | None = tuple(map(_MATCH_KEY, value.facts))
            chains_list: tuple = ()
        else:
            chains = _chain_list_facts(listener_pb2.Listener(filter_chains=value))
            keys, chains_list = None, tuple(value)
        duplicated = frozenset(name for name, count in chains.names.items() if count > 1)
        found = fragment.derived["consistency.chains"] = _Piece(chains.names, duplicated, chains, chains_list, keys)
    return found


_NAME, _NEEDS, _MATCH_KEY = attrgetter("name"), attrgetter("needs"), attrgetter("match_key")


# -- one chain's facts: kept with its bytes (context.SerializedChains) -------------------------

#: Where a whole listener's facts are kept on the fragment it is (by whoever derived them:
#: xds/resource_store.py), so that its chains' facts can be read from them later (:func:`chains_of`).
LISTENER_FACTS = "consistency.listener"


@dataclass(frozen=True)
class ChainFacts:
    """What the check needs of one filter chain: its name, what it matches, what it needs
    ((kind, name, chain name), in order), whatever listener holds it."""

    name: str
    match_key: bytes
    needs: tuple[tuple[str, str, str], ...]


def chain_facts(chain: listener_components_pb2.FilterChain) -> ChainFacts:
    needs = _chain_list_facts(listener_pb2.Listener(filter_chains=[chain])).needs
    return ChainFacts(chain.name, _match_key(chain.filter_chain_match), needs)


def chains_of(listener: listener_pb2.Listener, count: int, facts: Facts | None) -> tuple[ChainFacts, ...]:
    """The facts of the first ``count`` filter chains of ``listener``. Taken from ``facts`` (the
    whole listener's, :data:`LISTENER_FACTS`) when given and its chains' names (the default
    chain's too) tell apart whose each need is, the chains not walked again; else walked."""
    chains = listener.filter_chains
    if facts is not None and len(facts.listeners) == 1:
        names = [c.name for c in chains]
        if listener.HasField("default_filter_chain"):
            names.append(listener.default_filter_chain.name)
        if len(set(names)) == len(names):
            by_chain: dict[str, list[tuple[str, str, str]]] = {}
            for need in facts.listeners[0].chains.needs:
                by_chain.setdefault(need[2], []).append(need)
            return tuple(
                ChainFacts(c.name, _match_key(c.filter_chain_match), tuple(by_chain.get(c.name, ())))
                for c in chains[:count]
            )
    return tuple(chain_facts(c) for c in chains[:count])


def _piece_targets(fragment: Fragment) -> frozenset[str]:
    found = fragment.derived.get("consistency.targets")
    if found is None:
        value = fragment.value
        found = _map_targets(value) if isinstance(value, SerializedMap) else _on_match_targets(value)
        fragment.derived["consistency.targets"] = found
    return found


def prepare_map(value: SerializedMap) -> None:
    """Find ahead (in idle time) what each entry of ``value`` selects, as :func:`_map_targets`
    would: the next change of a map built whole so far (a node's plaintext map of its pods, on its
    first change) then finds its entries' known."""
    _map_targets(value)


def _map_targets(value: SerializedMap) -> frozenset[str]:
    """What an exact map written from its entries selects: each entry's targets, found once per
    entry (the same bytes objects in every map holding it) by parsing it alone. A node's map of
    its hundred pods is then not parsed and walked again for each change of one pod; what it
    selects is still read from the very bytes it is served as (``bytes(value)`` is their join)."""
    found: set[str] = set()
    for entry in value.entries:
        targets = _entry_targets.get(entry)
        if targets is None:
            if len(_entry_targets) >= _ENTRIES_KEPT:
                _entry_targets.clear()
            targets = _entry_targets[entry] = _entry_outcome_targets(entry)
        found |= targets
    return frozenset(found)


def _entry_outcome_targets(entry: bytes) -> frozenset[str]:
    """What one map entry (a ``MatchMap.map`` field: key, then its ``OnMatch``) selects: its
    ``OnMatch`` walked once per distinct outcome (a node's hundred pods lead to a few chains each)."""
    outcome = _single_outcome(entry)
    outcomes = [outcome] if outcome is not None else [
        bytes(value) for item in protowire.length_delimited(entry, _MAP_ENTRY) for value in protowire.length_delimited(item, 2)
    ]
    if len(outcomes) != 1:  # not one entry with its outcome: walked whole
        tree = matcher_pb2.Matcher()
        tree.matcher_tree.exact_match_map.MergeFromString(entry)
        return _matcher_targets(tree)
    found = _outcome_targets.get(outcomes[0])
    if found is None:
        if len(_outcome_targets) >= _ENTRIES_KEPT:
            _outcome_targets.clear()
        found = _outcome_targets[outcomes[0]] = _on_match_targets(outcomes[0])
    return found


_MAP_ENTRY = matcher_pb2.Matcher.MatcherTree.MatchMap.DESCRIPTOR.fields_by_name["map"].number
_MAP_ENTRY_TAG = _MAP_ENTRY << 3 | protowire.LENGTH_DELIMITED
_KEY_TAG, _VALUE_TAG = 1 << 3 | protowire.LENGTH_DELIMITED, 2 << 3 | protowire.LENGTH_DELIMITED


def _single_outcome(entry: bytes) -> bytes | None:
    """The outcome of a map entry written as ``matcher._exact_entry`` writes it (the map field, in it
    the key if not empty, then the value, nothing else), read by index: what the walk by fields
    (``protowire.length_delimited``) finds of it, without its generators (a cold generation at R
    reads 30,000 entries). None for any other shape, or a length over two bytes: walked by fields."""
    end = len(entry)
    if end < 2 or entry[0] != _MAP_ENTRY_TAG:
        return None
    size, at = _short_varint(entry, 1)
    if at + size != end:
        return None
    if at < end and entry[at] == _KEY_TAG:
        size, at = _short_varint(entry, at + 1)
        at += size
    if at >= end or entry[at] != _VALUE_TAG:
        return None
    size, at = _short_varint(entry, at + 1)
    return entry[at:end] if at + size == end else None


def _short_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint of one or two bytes at ``at`` and where it ends; (-1, len) when it is not one (or
    runs past the end): never an outcome's length, so the caller walks the entry by fields."""
    if at < len(data):
        first = data[at]
        if first < 0x80:
            return first, at + 1
        if at + 1 < len(data) and data[at + 1] < 0x80:
            return (first & 0x7F) | data[at + 1] << 7, at + 2
    return -1, len(data)
_outcome_targets: dict[bytes, frozenset[str]] = {}


#: Each map entry's targets (``_map_targets``), by its bytes: a node's pods' entries, a few per pod.
_ENTRIES_KEPT = 1 << 16
_entry_targets: dict[bytes, frozenset[str]] = {}


@dataclass(frozen=True)
class _Pieces:
    """The facts of all the shared pieces of a listener (``ListenerParts``) together: what is
    the same for every node's listener made of them, so that each node's is only its own part's
    joined to these (the chains of the pieces are thousands: their names, needs and what the
    matcher pieces select are not gone through again for each node)."""

    #: Every chain name of the pieces, with how many of their chains have it.
    counts: Counter
    #: The names more than one chain of the pieces has.
    duplicated: frozenset[str]
    needs: tuple[tuple[str, str, str], ...]
    wanted: tuple[tuple[str, frozenset[str]], ...]
    #: What the matcher pieces select that no chain of the pieces is named.
    unselected: frozenset[str]
    #: Each chain piece's facts, in order.
    parts: tuple[_Piece, ...]

    @cached_property
    def match_keys(self) -> Counter:
        """What the chains match, each how many times (for a listener without a matcher, whose
        chains must not match alike)."""
        keys: Counter = Counter()
        for part in self.parts:
            keys.update(part.match_keys)
        return keys


_NO_PIECES = _Pieces(Counter(), frozenset(), (), (), frozenset(), ())
#: How many combinations of pieces the first of them keeps the facts of (nodes capturing other
#: VIP:ports have other service chains, so mostly one).
_PIECES_KEPT = 8


def _pieces(chains: tuple[Fragment, ...], matches: tuple[Fragment, ...]) -> _Pieces:
    """:class:`_Pieces` of these, kept on the first of them (holding the others weakly: a
    combination is found again only while each of its pieces is the very one it was made of)."""
    every = chains + matches
    if not every:
        return _NO_PIECES
    kept = every[0].derived.setdefault("consistency.pieces", {})
    key = tuple(map(id, every[1:]))
    found = kept.get((len(chains), key))
    if found is not None and all(ref() is f for ref, f in zip(found[0], every[1:])):
        return found[1]
    made = _joined_pieces(tuple(map(_piece, chains)), matches)
    if len(kept) >= _PIECES_KEPT:
        kept.clear()
    kept[(len(chains), key)] = (tuple(weakref.ref(f) for f in every[1:]), made)
    return made


def _joined_pieces(parts: tuple[_Piece, ...], matches: tuple[Fragment, ...]) -> _Pieces:
    counts: Counter = Counter()
    duplicated: set[str] = set()
    needs: list[tuple[str, str, str]] = []
    wanted: dict[str, set[str]] = {}
    for part in parts:
        duplicated |= part.duplicated
        duplicated.update(counts.keys() & part.names.keys())
        counts.update(part.names)
        needs.extend(part.chains.needs)
        for kind, names in part.chains.wanted:
            wanted.setdefault(kind, set()).update(names)
    targets = frozenset().union(*(_piece_targets(match) for match in matches))
    return _Pieces(
        counts,
        frozenset(duplicated),
        tuple(needs),
        tuple((kind, frozenset(names)) for kind, names in sorted(wanted.items())),
        frozenset(t for t in targets if t not in counts),
        parts,
    )


def _cluster_facts(name: str, cluster: cluster_pb2.Cluster) -> Facts:
    needs: list[Need] = []
    if cluster.type == cluster_pb2.Cluster.EDS:
        needs.append(("endpoints", name, ("cluster", name)))
    needs.extend(("secret", secret, ("cluster", name)) for secret in _cluster_secrets(cluster))
    misfiled = [] if name and cluster.name == name else [f"cluster stored as {_q(name)} is named {_q(cluster.name)}"]
    return Facts.make(misfiled=misfiled, needs=needs, late_needs=_internal_needs(("cluster-assignment", name), cluster.load_assignment))


def _internal_needs(subject: tuple[str, ...], assignment) -> list[Need]:
    """Each internal listener the assignment's endpoints name, once (in order): a finding per
    endpoint would say the same thing hundreds of times, and an endpoint coming or going would
    change the assignment's facts (a shared set's are then made again, not kept: resource_store.py)."""
    needs: dict[Need, None] = {}
    for group in assignment.endpoints:
        lbs = group.lb_endpoints
        # each endpoint's listener name read as it is (an address of another kind reads as ""): a
        # group of internal endpoints, the commonest (tens of thousands at R), is not asked which kind
        # each is; a group with an empty name, of another kind or not, is looked at endpoint by endpoint
        listeners = dict.fromkeys(lb.endpoint.address.envoy_internal_address.server_listener_name for lb in lbs)
        if "" in listeners:
            listeners = dict.fromkeys(
                lb.endpoint.address.envoy_internal_address.server_listener_name
                for lb in lbs
                if lb.endpoint.address.HasField("envoy_internal_address")
            )
        for listener in listeners:
            needs[("internal listener", listener, subject)] = None
    return list(needs)


def _chain_list_facts(listener: listener_pb2.Listener) -> _ChainFacts:
    chains = list(listener.filter_chains)
    names = Counter(c.name for c in chains if c.name)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    needs: list[tuple[str, str, str]] = []
    for chain in chains:
        name = chain.name
        needs.extend([("cluster", cluster, name) for cluster in _chain_clusters(chain)])
        if chain.HasField("transport_socket"):
            needs.extend([("secret", secret, name) for secret in _socket_secrets(chain.transport_socket)])
    return _ChainFacts(names, tuple(needs), _wanted_entries(needs))


#: Content-keyed results for large listener parts (a few entries: what many nodes' listeners share).
_SEEN_LIMIT = 64
#: A chain list this long is looked up by content before being walked.
_LARGE = 128
_seen_chains: OrderedDict[bytes, _ChainFacts] = OrderedDict()
_seen_targets: OrderedDict[bytes, frozenset[str]] = OrderedDict()
_seen_lock = threading.Lock()


def _remembered(cache: OrderedDict, key: bytes, compute: Callable[[], object]):
    with _seen_lock:
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
    value = compute()
    with _seen_lock:
        cache[key] = value
        while len(cache) > _SEEN_LIMIT:
            cache.popitem(last=False)
    return value


def _chains_of(listener: listener_pb2.Listener) -> _ChainFacts:
    """The facts of a listener's chains. A long list (the same service chains on every node of a
    cluster) is walked once per distinct content."""
    if len(listener.filter_chains) < _LARGE:
        return _chain_list_facts(listener)
    holder = listener_pb2.Listener(filter_chains=listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        holder.default_filter_chain.CopyFrom(listener.default_filter_chain)
    key = hashlib.sha256(holder.SerializeToString(deterministic=True)).digest()
    return _remembered(_seen_chains, key, lambda: _chain_list_facts(holder))


def _matcher_targets(root: matcher_pb2.Matcher) -> frozenset[str]:
    """The chain names a filter_chain_matcher's actions select (iteratively: trees can be large).

    What an IP range matcher leads to is read from its serialized form and walked once per
    distinct content when large: the map of every destination of a cluster, which every node's
    gate leads to, is walked once, not once per node."""
    actions: set[bytes] = set()  # the serialized StringValue of each action (most are repeated)
    found: set[str] = set()
    stack = [root]
    while stack:
        matcher = stack.pop()
        on_matches: list[matcher_pb2.Matcher.OnMatch] = []
        if matcher.HasField("on_no_match"):
            on_matches.append(matcher.on_no_match)
        kind = matcher.WhichOneof("matcher_type")
        if kind == "matcher_tree":
            tree = matcher.matcher_tree
            tree_kind = tree.WhichOneof("tree_type")
            if tree_kind in ("exact_match_map", "prefix_match_map"):
                on_matches.extend(getattr(tree, tree_kind).map.values())
            elif tree_kind == "custom_match" and tree.custom_match.typed_config.type_url.endswith("/" + _IP_MATCHER):
                value = tree.custom_match.typed_config.value
                if len(value) < _LARGE_BYTES:  # parsed whole (a node's own gate: its pods' ranges, read in C)
                    on_matches.extend(m.on_match for m in ip_pb2.IPMatcher.FromString(value).range_matchers)
                else:
                    found |= _large_range_targets(value, on_matches)
        elif kind == "matcher_list":
            on_matches.extend(m.on_match for m in matcher.matcher_list.matchers)
        for on_match in on_matches:
            which = on_match.WhichOneof("on_match")
            if which == "matcher":
                stack.append(on_match.matcher)
            elif which == "action":
                actions.add(on_match.action.typed_config.value)
    return frozenset(found | {wrappers_pb2.StringValue.FromString(value).value for value in actions})


def _large_range_targets(value: bytes, on_matches: list) -> frozenset[str]:
    """What a large IP matcher's range matchers lead to: each small ``on_match`` parsed into
    ``on_matches``, each large one's targets looked up by content (walked once)."""
    found: set[str] = set()
    for range_matcher in protowire.length_delimited(value, _RANGE_MATCHERS):
        for on_match in protowire.length_delimited(range_matcher, _ON_MATCH):
            if len(on_match) < _LARGE_BYTES:
                on_matches.append(matcher_pb2.Matcher.OnMatch.FromString(on_match))
                continue
            key = hashlib.sha256(on_match).digest()
            found |= _remembered(_seen_targets, key, lambda b=bytes(on_match): _on_match_targets(b))
    return frozenset(found)


def _on_match_targets(serialized: bytes) -> frozenset[str]:
    root = matcher_pb2.Matcher()
    root.on_no_match.MergeFromString(serialized)
    return _matcher_targets(root)


_RANGE_MATCHERS = ip_pb2.IPMatcher.DESCRIPTOR.fields_by_name["range_matchers"].number
_ON_MATCH = ip_pb2.IPMatcher.IPRangeMatcher.DESCRIPTOR.fields_by_name["on_match"].number
#: A serialized on_match this large is looked up by content before being walked.
_LARGE_BYTES = 64 << 10


def _match_key(match: listener_components_pb2.FilterChainMatch) -> bytes:
    """What a chain matches, with CIDRs in canonical form (10.0.0.1/24 and 10.0.0.0/24 are one range)."""
    for field, value in match.ListFields():  # the fields set: read in C, not each looked at
        if field.number in _CIDR_FIELDS:
            for cidr in value:
                length = cidr.prefix_len.value
                canonical = _canonical(cidr.address_prefix, length if cidr.HasField("prefix_len") else None)
                if canonical is not None and canonical != (cidr.address_prefix, length):
                    return _canonical_key(match)
    return match.SerializeToString(deterministic=True)  # already canonical (an inbound chain's pod IP): no copy


_CIDR_FIELDS = frozenset(
    listener_components_pb2.FilterChainMatch.DESCRIPTOR.fields_by_name[name].number
    for name in ("prefix_ranges", "source_prefix_ranges", "direct_source_prefix_ranges")
)


def _canonical_key(match: listener_components_pb2.FilterChainMatch) -> bytes:
    key = listener_components_pb2.FilterChainMatch()
    key.CopyFrom(match)
    for ranges in (key.prefix_ranges, key.source_prefix_ranges, key.direct_source_prefix_ranges):
        for cidr in ranges:
            canonical = _canonical(cidr.address_prefix, cidr.prefix_len.value if cidr.HasField("prefix_len") else None)
            if canonical is not None:  # else Envoy reports the invalid range itself
                cidr.address_prefix, cidr.prefix_len.value = canonical
    return key.SerializeToString(deterministic=True)


@functools.lru_cache(maxsize=1 << 14)
def _canonical(prefix: str, length: int | None) -> tuple[str, int] | None:
    """The network ``prefix/length`` is (``length`` None: the address alone), as ``ipaddress``
    writes it; None when it is none. An IPv4 address written as ``ipaddress`` writes it (every
    pod's, in a chain match) is read without it, at a tenth of the cost."""
    if length is not None and 0 <= length <= 32:
        try:
            packed = inet_pton(AF_INET, prefix)
        except (OSError, ValueError):
            packed = None
        if packed is not None and inet_ntop(AF_INET, packed) == prefix:  # canonical dotted quad
            address = int.from_bytes(packed, "big")
            network = address & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
            return (prefix if network == address else inet_ntop(AF_INET, network.to_bytes(4, "big"))), length
    try:
        network = ipaddress.ip_network(prefix if length is None else f"{prefix}/{length}", strict=False)
    except ValueError:
        return None
    return str(network.network_address), network.prefixlen


def _described(key: bytes) -> str:
    """A match key as the finding shows it."""
    return str(listener_components_pb2.FilterChainMatch.FromString(key)).replace("\n", " ").strip() or "any"


def _chain_clusters(chain: listener_components_pb2.FilterChain) -> list[str]:
    found: list[str] = []
    for network_filter in chain.filters:
        config = network_filter.typed_config
        type_name = config.type_url.rpartition("/")[2]
        if type_name == _TCP_PROXY:
            value = config.value
            if len(value) > _SMALL:
                found.extend(_proxy_clusters(value))
                continue
            known = _small_proxies.get(value)  # the same few on thousands of chains (every pod's plaintext one)
            if known is None:
                if len(_small_proxies) >= _SMALL_KEPT:
                    _small_proxies.clear()
                known = _small_proxies[value] = tuple(_proxy_clusters(value))
            found.extend(known)
        elif type_name == _HCM:
            manager = http_connection_manager_pb2.HttpConnectionManager.FromString(config.value)
            for host in manager.route_config.virtual_hosts:
                for route in host.routes:
                    action = route.route
                    if action.cluster:
                        found.append(action.cluster)
                    if action.HasField("weighted_clusters"):
                        found.extend(w.name for w in action.weighted_clusters.clusters)
    return found


#: A tcp_proxy config this short is looked up by content (the clusters it names) before being read.
_SMALL = 512
_SMALL_KEPT = 4096
_small_proxies: dict[bytes, tuple[str, ...]] = {}


def _proxy_clusters(value: bytes) -> Iterator[str]:
    proxy = tcp_proxy_pb2.TcpProxy.FromString(value)
    if proxy.cluster:
        yield proxy.cluster
    yield from (w.name for w in proxy.weighted_clusters.clusters)
    # the cluster the linear layout's pod-select listener sends the connection to (pod_select.py)
    yield from (t.format_string.text_format_source.inline_string for t in proxy.proxy_protocol_tlvs if t.type == TLV_CLUSTER)


def _socket_secrets(socket: base_pb2.TransportSocket) -> list[str]:
    """SDS names a transport socket uses, looking through internal_upstream's wrapped socket."""
    config = socket.typed_config
    type_name = config.type_url.rpartition("/")[2]
    context_type = _TLS_CONTEXTS.get(type_name)
    if context_type is not None:
        common = context_type.FromString(config.value).common_tls_context
        found = [s.name for s in common.tls_certificate_sds_secret_configs]
        if common.HasField("validation_context_sds_secret_config"):
            found.append(common.validation_context_sds_secret_config.name)
        if common.HasField("combined_validation_context"):
            combined = common.combined_validation_context
            if combined.HasField("validation_context_sds_secret_config"):
                found.append(combined.validation_context_sds_secret_config.name)
        return found
    if type_name == _INTERNAL_UPSTREAM:
        inner = internal_upstream_pb2.InternalUpstreamTransport.FromString(config.value)
        if inner.HasField("transport_socket"):
            return _socket_secrets(inner.transport_socket)
    return []


def _cluster_secrets(cluster: cluster_pb2.Cluster) -> Iterable[str]:
    sockets = [m.transport_socket for m in cluster.transport_socket_matches]
    if cluster.HasField("transport_socket"):
        sockets.append(cluster.transport_socket)
    return [secret for socket in sockets for secret in _socket_secrets(socket)]

"""What one node's config depends on, as a value: the input of incremental generation.

A node's config is a function of a small part of the model: the meshed pods on the node, and
what those pods can reach (service VIPs with their endpoints, the meshed pods of the cluster and
the nodes' pod CIDRs they are found by),
plus the translation options. :class:`NodeInput` is exactly that, and the translators read
nothing else (:class:`~zpilot.translators.context.NodeView` is built from it alone). So when a
model change leaves a node's input equal, its config cannot have changed and is not rebuilt.

The reachable part, :class:`MeshInput`, is one value per model, shared by every node's input;
the producer keeps the previous one when a new model's is equal, so comparing node inputs
usually stops at an identity check. Made from the previous model's values, each part that did not
change is the previous object (a service port whose endpoints are the same, a node whose pods and
policies are the same), so a change costs what it touches and comparing stops at identity there
too. Each service port is a :class:`ServicePortInput`, which compares and hashes by the facts its
config depends on (not by the pods behind its endpoints), so that it can key the memo of the
resources built from it cheaply (fragments.py).
"""

from __future__ import annotations

import socket
import weakref
from collections import defaultdict
from dataclasses import dataclass, field, fields
from functools import cached_property
from itertools import compress, count, islice
from operator import attrgetter, is_not, itemgetter
from typing import Callable, Iterable, Iterator, Mapping

from ..model.addresses import ipv4_networks
from ..model.index import UNKNOWN_CHANGES, Endpoint, MeshIndex, ServiceTarget, seen_from
from ..model.objects import Service, ServicePort, Workload
from ..model.policy import WorkloadPolicies
from .options import TranslateOptions


_ips, _node_name = attrgetter("ips"), attrgetter("node_name")
_namespace, _service_account, _first = attrgetter("namespace"), attrgetter("service_account"), itemgetter(0)


def _endpoint_facts(endpoint: Endpoint) -> tuple:
    """Everything config reads of an endpoint: of its pod, only the identity (what a tunnel pins)."""
    pod = endpoint.workload
    return (
        endpoint.address,
        endpoint.port,
        endpoint.meshed,
        endpoint.node_name,
        endpoint.locality.region,
        endpoint.locality.zone,
        endpoint.ready,
        endpoint.serving,
        endpoint.terminating,
        (pod.namespace, pod.service_account) if pod is not None else None,
    )


@dataclass(frozen=True, eq=False)
class ServicePortInput:
    """One service port with a VIP: its VIPs and every endpoint it has (readiness included)."""

    service: Service
    port: ServicePort
    vips: tuple[str, ...]
    candidates: tuple[Endpoint, ...]
    _facts: tuple = field(init=False, repr=False)
    _hash: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        facts = (
            self.service.namespace,
            self.service.name,
            self.service.node_local,
            self.port.port,
            self.port.name,
            self.port.target_port,
            self.port.protocol,
            self.vips,
            tuple(_endpoint_facts(e) for e in self.candidates),
        )
        object.__setattr__(self, "_facts", facts)
        object.__setattr__(self, "_hash", hash(facts))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ServicePortInput):
            return NotImplemented
        return self._hash == other._hash and self._facts == other._facts

    def __hash__(self) -> int:
        return self._hash

    @property
    def target(self) -> ServiceTarget:
        return ServiceTarget(self.service, self.port)

    @cached_property
    def cluster_endpoints(self) -> tuple[Endpoint, ...]:
        """Where new connections go, seen from no node in particular (see :meth:`endpoints`)."""
        return tuple(seen_from(self.candidates, self.service, None))

    @cached_property
    def shape(self) -> tuple:
        """What config other than its endpoints reads of the port (layout.LateEndpoints): the
        port itself, whether it has somewhere to go (it is captured only then), and the identity
        of its pods when they all share one (its cluster names it). An ``internalTrafficPolicy:
        Local`` port is captured by the nodes its endpoints are on: all its facts, then."""
        if self.service.node_local:
            return self._facts
        meshed = [e.workload for e in self.cluster_endpoints if e.meshed]
        if any(w is None for w in meshed):  # config fails on it (no identity to pin): every fact counts
            return self._facts
        identities = {(w.namespace, w.service_account) for w in meshed}  # type: ignore[union-attr]
        return (*self._facts[:-1], bool(self.cluster_endpoints), identities.pop() if len(identities) == 1 else None)

    def endpoints(self, node: str | None = None) -> tuple[Endpoint, ...]:
        """Where a new connection from ``node`` goes (``MeshIndex.endpoints``): the same for
        every node, except for an ``internalTrafficPolicy: Local`` service."""
        if node is None or not self.service.node_local:
            return self.cluster_endpoints
        return tuple(seen_from(self.candidates, self.service, node))


_port_hash, _port_shape = attrgetter("_hash"), attrgetter("shape")


def _hashes(ports: tuple[ServicePortInput, ...]) -> tuple[int, ...]:
    """Each port's hash, read as they keep it: thousands of ``__hash__`` calls in Python were most of
    what hashing a mesh's ports cost."""
    return tuple(map(_port_hash, ports))


def _hashes_at(hashes: tuple[int, ...], ports: tuple[ServicePortInput, ...], at: Iterable[int]) -> tuple[int, ...]:
    """``_hashes(ports)`` from ``hashes``, those of ports that differ at the positions ``at`` alone."""
    made = list(hashes)
    for i in at:
        made[i] = ports[i]._hash
    return tuple(made)


def _sum_at(total: int, before: tuple[int, ...], after: tuple[int, ...], at: Iterable[int]) -> int:
    """``sum(after)`` from ``total`` (``sum(before)``), the two differing at the positions ``at`` alone
    (each counted once: a position named twice moved the sum twice, and a mesh or served ports hashed
    unlike their equals then compare unequal to them, ``__eq__`` asking the hashes first)."""
    for i in dict.fromkeys(at):
        total += after[i] - before[i]
    return total


def _facts_of(meshed: tuple[Workload, ...]) -> tuple[tuple, ...]:
    """(w.ip, w.node_name, w.namespace, w.service_account) of each, without a Python loop."""
    return tuple(zip(map(_first, map(_ips, meshed)), map(_node_name, meshed), map(_namespace, meshed),
                     map(_service_account, meshed)))


def _with_ip(workloads: list[Workload]) -> tuple[Workload, ...]:
    """Those of ``workloads`` with an IP (``w.ip``), in order, without a Python loop where each has one."""
    kept = tuple(compress(workloads, map(_ips, workloads)))
    if all(map(_first, map(_ips, kept))):
        return kept
    return tuple(w for w in kept if w.ip)


#: How many items :func:`_common_ends` compares at once.
_BLOCK = 512


def _common_ends(a: tuple, b: tuple) -> tuple[int, int]:
    """How many first and how many last items of ``a`` and ``b`` are the same (the two never
    overlapping): what lies between is what differs. At C speed, no pod looked into.

    Compared a block at a time with ``==``, which for the very same objects (most of them: the
    index hands unchanged pods over as they were) is an identity check in C: ten thousand pods in
    tens of microseconds, where one call per pod took over half a millisecond. An equal pod that
    is another object counts as the same here: its facts are equal (what :func:`_meshed_from`
    keeps of it). In the block where the two differ, the first differing item is found by identity."""
    shortest = min(len(a), len(b))
    start = _same_run(a, b, 0, 0, shortest, 1)
    tail = shortest - start
    end = _same_run(a, b, len(a), len(b), tail, -1)
    return start, end


def _same_run(a: tuple, b: tuple, i: int, j: int, limit: int, step: int) -> int:
    """How many items of ``a`` from ``i`` and of ``b`` from ``j`` are the same, up to ``limit``,
    going forward (``step`` 1) or back from those ends (``step`` -1)."""
    done = 0
    while done < limit:
        size = min(_BLOCK, limit - done)
        if step > 0:
            x, y = a[i + done : i + done + size], b[j + done : j + done + size]
        else:
            x, y = a[i - done - size : i - done], b[j - done - size : j - done]
        if x != y:
            return done + next(compress(count(), map(is_not, x[::step], y[::step])), size)
        done += size
    return done


def _meshed_from(
    listed: tuple[Workload, ...], previous: "MeshInput"
) -> tuple[tuple[Workload, ...], tuple[tuple, ...], int, int]:
    """The meshed pods with an IP of ``listed`` (the index's meshed pods) and their facts, made from
    ``previous``'s: the pods between the common start and end of the two (a pod or two came or
    went) are the only ones looked into. Also that window's bounds (start, end)."""
    old, kept = previous.meshed, previous.meshed_facts
    start, end = _common_ends(listed, old)
    n, m = len(listed), len(old)
    if start == n == m:
        return old, kept, start, end
    window = listed[start : n - end]
    if len(_with_ip(window)) == len(window):  # every pod outside it had one: it was in ``previous``
        return listed, kept[:start] + _facts_of(window) + kept[m - end :], start, end
    meshed = _with_ip(listed)  # a pod without one (never the index's): the whole list filtered
    start, end = _common_ends(meshed, old)
    return meshed, kept[:start] + _facts_of(meshed[start : len(meshed) - end]) + kept[m - end :], start, end


@dataclass(frozen=True, eq=False)
class MeshInput:
    """What every node can reach: the service ports with a VIP, and the meshed pods (with an IP).

    Compares by what config reads of it: a pod relabelled without changing any service's
    endpoints leaves it equal, so no other node is translated again."""

    cluster_domain: str
    service_ports: tuple[ServicePortInput, ...]
    #: (VIP, index into service_ports) in the model's VIP order (``MeshIndex.vips``).
    vip_order: tuple[tuple[str, int], ...]
    #: Config reads only the address, the node and the identity of these (:attr:`meshed_facts`).
    meshed: tuple[Workload, ...]
    #: (node, its IPv4 pod CIDRs) of each node with one, by name: where the linear layout finds pod IPs.
    node_cidrs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: (IP, node, namespace, service account) of each of ``meshed``: made from them when not given.
    meshed_facts: tuple[tuple, ...] = field(default=None, repr=False)  # type: ignore[assignment]
    #: The generation of the index this was made from (``MeshIndex.changes_since`` tells the next one what changed).
    index_generation: int | None = field(default=None, repr=False)
    #: The hash of each of ``service_ports``: made from them when not given.
    port_hashes: tuple[int, ...] = field(default=None, repr=False)  # type: ignore[assignment]
    #: What :attr:`_hash` is made of (:meth:`_hash_parts`), when the last model's mesh knows them.
    hash_parts: tuple[int, int, int] | None = field(default=None, repr=False)
    _hash: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.meshed_facts is None:
            object.__setattr__(self, "meshed_facts", _facts_of(self.meshed))
        if self.port_hashes is None:
            object.__setattr__(self, "port_hashes", _hashes(self.service_ports))
        if self.hash_parts is None:
            object.__setattr__(
                self, "hash_parts", (sum(self.port_hashes), hash(self.vip_order), hash(self.node_cidrs))
            )
        # the meshed pods' facts are compared, not hashed: thousands of tuples hashed again per change
        # for a hash that their count and the rest tell apart well enough; the ports by the sum of
        # their hashes, the VIPs and CIDRs by theirs, each kept from the last model's mesh while
        # it holds (:meth:`of`): thousands of ports and VIPs were hashed again per change
        object.__setattr__(self, "_hash", hash((self.cluster_domain, *self.hash_parts, len(self.meshed_facts))))

    @classmethod
    def of(cls, index: MeshIndex, previous: "MeshInput | None" = None) -> "MeshInput":
        """The model's; ``previous``: the last model's, whose equal parts are reused: when the index
        says what changed since (``MeshIndex.changes_since``), only that is looked at again (and
        what ``previous`` derived of its service ports is kept, but for the ports that changed)."""
        changes = index.changes_since(previous.index_generation) if previous is not None else UNKNOWN_CHANGES
        carried: dict = {}
        hashes = None
        if previous is not None and changes.service_ports is not None:
            ports, changed_at = previous._with_candidates(index, changes.service_ports)
            order = previous.vip_order
            carried = previous._carried(ports, changed_at)
            hashes = _hashes_at(previous.port_hashes, ports, changed_at)
        else:
            ports, order, position = cls._ports(index, previous)
            carried["_position"] = position  # made with them: the next change's look-up costs nothing to make
        if previous is None:
            meshed, facts = _with_ip(index.meshed_workloads()), None
        else:
            meshed, facts, start, end = _meshed_from(tuple(index.meshed_workloads()), previous)
        cidrs = tuple((name, node.pod_cidrs) for name, node in sorted(index.nodes.items()) if node.pod_cidrs)
        if previous is not None and previous.node_cidrs == cidrs:
            cidrs = previous.node_cidrs
        parts = None
        if hashes is not None and order is previous.vip_order and cidrs is previous.node_cidrs:  # (previous: not None)
            ports_sum, vips_hash, cidrs_hash = previous.hash_parts  # type: ignore[union-attr,misc]
            parts = (_sum_at(ports_sum, previous.port_hashes, hashes, changed_at), vips_hash, cidrs_hash)  # type: ignore[union-attr]
        mesh = cls(index.cluster_domain, ports, order, meshed, cidrs, facts, index.generation, hashes, parts)
        mesh.__dict__.update(carried)
        if previous is not None and "pod_routes" in previous.__dict__ and meshed is previous.meshed and (
            cidrs is previous.node_cidrs
        ):  # what they are made of is the very same (a policy or service change): so are they
            mesh.__dict__["pod_routes"] = previous.pod_routes
        elif previous is not None and "pod_routes" in previous.__dict__:  # each unchanged node's part is kept
            changed = None
            if changes.nodes is not None and meshed is not previous.meshed:  # only those nodes' pods are looked at
                changed = {node: _facts_of(_with_ip(index.meshed_workloads_on(node))) for node in changes.nodes}
                # and the pods on no node (no node of changes_since names them), all strays: the last
                # ones but those that went, and those that came (all between the common ends)
                gone = previous.meshed_facts[start : len(previous.meshed_facts) - end]
                came = mesh.meshed_facts[start : len(mesh.meshed_facts) - end]
                for no_node in (None, ""):
                    before = previous.pod_routes._sources.get((_OTHER, no_node), ((),))[0]
                    went = {f for f in gone if f[1] == no_node}  # a pod's facts name its IP: no two alike
                    changed[no_node] = tuple(f for f in before if f not in went) + tuple(
                        f for f in came if f[1] == no_node
                    )
            mesh.__dict__["pod_routes"] = PodRoutes.of(mesh.meshed_facts, cidrs, previous.pod_routes, changed=changed)
        return mesh

    def _with_candidates(
        self, index: MeshIndex, changed: frozenset[tuple[str, str, int]]
    ) -> tuple[tuple[ServicePortInput, ...], tuple[int, ...]]:
        """These service ports, those in ``changed`` with the index's candidates (services, their
        VIPs and EndpointSlices unchanged: the index says so), and the positions of those that differ."""
        ports = list(self.service_ports)
        at = []
        for key in changed:
            i = self._position.get(key)
            if i is None:
                continue
            old = ports[i]
            candidates = tuple(index.candidates(old.service, old.port))
            if candidates != old.candidates:
                ports[i] = ServicePortInput(old.service, old.port, old.vips, candidates)
                at.append(i)
        return tuple(ports), tuple(sorted(at))

    def _carried(self, ports: tuple[ServicePortInput, ...], changed_at: tuple[int, ...]) -> dict:
        """What this mesh derived of its service ports that holds for ``ports`` (the same services,
        VIPs and order; those at ``changed_at`` have other candidates): its positions, and the ports
        every node captures when none of those changed whether it is captured (with their names)."""
        carried: dict = {}
        for name in ("_position", "has_node_local"):  # they read the services alone
            if name in self.__dict__:
                carried[name] = self.__dict__[name]
        shapes = self.__dict__.get("port_shapes")
        if shapes is not None:  # thousands of ports, one or two changed
            shapes = list(shapes)
            for i in changed_at:
                shapes[i] = ports[i].shape
            carried["port_shapes"] = tuple(shapes)
        served = self.__dict__.get("_served_ports", {}).get(None)
        if served is not None:
            moved = served.moved(self.service_ports, ports, changed_at)
            if moved is not None:
                carried["_served_ports"] = {None: moved}
        return carried

    @cached_property
    def port_shapes(self) -> tuple[tuple, ...]:
        """Each service port's :attr:`ServicePortInput.shape`, in order (what a layout's config
        but its endpoints reads of them: ``layout.LateEndpoints.shape``)."""
        return tuple(map(_port_shape, self.service_ports))

    @cached_property
    def _position(self) -> dict[tuple[str, str, int], int]:
        return {(p.service.namespace, p.service.name, p.port.port): i for i, p in enumerate(self.service_ports)}

    @classmethod
    def _ports(
        cls, index: MeshIndex, previous: "MeshInput | None"
    ) -> tuple[tuple[ServicePortInput, ...], tuple[tuple[str, int], ...], dict[tuple[str, str, int], int]]:
        """Every service port with a VIP, the VIPs in order, and the position of each port by its
        key (:attr:`_position`), looked at one by one (the equal ones reused)."""
        by_port: dict[tuple[str, str, int], int] = {}
        targets: list[ServiceTarget] = []
        vips: dict[int, list[str]] = {}
        order: list[tuple[str, int]] = []
        for vip, target in index.vips():
            key = (target.service.namespace, target.service.name, target.port.port)
            if key not in by_port:
                by_port[key] = len(targets)
                targets.append(target)
            i = by_port[key]
            vips.setdefault(i, []).append(vip)
            order.append((vip, i))
        before = previous._by_key if previous is not None else {}
        ports = []
        for i, t in enumerate(targets):
            key = (t.service.namespace, t.service.name, t.port.port)
            vip_list, candidates = tuple(vips[i]), tuple(index.candidates(t.service, t.port))
            old = before.get(key)
            if (
                old is not None
                and old.service is t.service
                and old.port == t.port
                and old.vips == vip_list
                and old.candidates == candidates
            ):
                ports.append(old)  # its facts and hash are not computed again
            else:
                ports.append(ServicePortInput(t.service, t.port, vip_list, candidates))
        return tuple(ports), tuple(order), by_port

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, MeshInput):
            return NotImplemented
        return (
            self._hash == other._hash
            and self.cluster_domain == other.cluster_domain
            and self.vip_order == other.vip_order
            and self.meshed_facts == other.meshed_facts
            and self.node_cidrs == other.node_cidrs
            and self.service_ports == other.service_ports
        )

    def __hash__(self) -> int:
        return self._hash

    # -- what MeshIndex answers, for the part of the mesh a node's config may read ---------------

    def vips(self) -> Iterator[tuple[str, ServiceTarget]]:
        """(VIP, target) pairs in the model's order, as ``MeshIndex.vips``."""
        for vip, i in self.vip_order:
            yield vip, self.service_ports[i].target

    def vip_ports(self) -> Iterator[tuple[str, ServicePortInput]]:
        """(VIP, service port) pairs in the model's order."""
        for vip, i in self.vip_order:
            yield vip, self.service_ports[i]

    @cached_property
    def _by_key(self) -> dict[tuple[str, str, int], ServicePortInput]:
        return {(p.service.namespace, p.service.name, p.port.port): p for p in self.service_ports}

    def service_port(self, service: Service, port: ServicePort) -> ServicePortInput | None:
        return self._by_key.get((service.namespace, service.name, port.port))

    def endpoints(self, service: Service, port: ServicePort, node: str | None = None) -> list[Endpoint]:
        """As ``MeshIndex.endpoints``, for a service port with a VIP."""
        found = self.service_port(service, port)
        return list(found.endpoints(node)) if found is not None else []

    def meshed_workloads(self) -> list[Workload]:
        return list(self.meshed)

    @cached_property
    def pod_routes(self) -> "PodRoutes":
        """The meshed pods by where a pod-IP destination finds them: its node's pod CIDR, or not."""
        return PodRoutes.of(self.meshed_facts, self.node_cidrs)

    @cached_property
    def has_node_local(self) -> bool:
        """Whether some service port is ``internalTrafficPolicy: Local`` (then what a node captures depends on the node)."""
        return any(p.service.node_local for p in self.service_ports)

    def served_key(self, node: str) -> str | None:
        """What :meth:`served` depends on of the node: ``node``, or None when every node captures the same."""
        return node if self.has_node_local else None

    def served_ports(self, node: str | None) -> "ServedPorts":
        """The service ports ``node`` captures (:meth:`served`), each once, as one value that many
        nodes share (``node``: a :meth:`served_key`), kept for this model."""
        cache = self.__dict__.setdefault("_served_ports", {})
        found = cache.get(node)
        if found is None:
            ports: dict[ServicePortInput, None] = {}
            for _vip, port, _endpoints in self.served(node):
                ports.setdefault(port, None)
            found = cache[node] = ServedPorts(tuple(ports))
        return found

    def served(self, node: str | None) -> list[tuple[str, ServicePortInput, tuple[Endpoint, ...]]]:
        """(VIP, service port, endpoints) of the VIP:ports ``node`` captures: those with an endpoint
        for it, in VIP order (``NodeView.served_vips`` says why the others are not captured)."""
        out = []
        for vip, port in self.vip_ports():
            endpoints = port.endpoints(node)
            if endpoints:
                out.append((vip, port, endpoints))
        return out


@dataclass(frozen=True, eq=False)
class ServedPorts:
    """Service ports a node captures, each once (dual-stack: one per port, however many VIPs):
    a memo key of the pieces built for all of them, hashed once."""

    ports: tuple[ServicePortInput, ...]
    #: The hash of each of ``ports``: made from them when not given.
    port_hashes: tuple[int, ...] = field(default=None, repr=False)  # type: ignore[assignment]
    #: ``sum(port_hashes)``: made from them when not given (:meth:`moved` knows it from the last one's).
    hashes_sum: int | None = field(default=None, repr=False)
    _hash: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.port_hashes is None:
            object.__setattr__(self, "port_hashes", _hashes(self.ports))
        if self.hashes_sum is None:
            object.__setattr__(self, "hashes_sum", sum(self.port_hashes))
        # the sum of the ports' hashes, not the hash of them all: a change replaces one or two of
        # thousands, and the sum is made from the last one's (ports compare one by one anyway)
        object.__setattr__(self, "_hash", hash((len(self.ports), self.hashes_sum)))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ServedPorts):
            return NotImplemented
        return self._hash == other._hash and self.ports == other.ports

    def __hash__(self) -> int:
        return self._hash

    def moved(
        self, before: tuple[ServicePortInput, ...], after: tuple[ServicePortInput, ...], changed_at: tuple[int, ...]
    ) -> "ServedPorts | None":
        """These ports (every node's: captured from no node in particular) for a mesh whose service
        ports are ``after`` instead of ``before``, the same services in the same order, those at
        ``changed_at`` with other candidates: each of those replaced where it was (with the names
        of the ports kept: they read the service and the port alone); None when one of them
        changed whether it is captured (its endpoints came or all went)."""
        at = self._at
        ports = list(self.ports)
        replaced: list[tuple[int, ServicePortInput, ServicePortInput]] = []  # (position, port there before, new port)
        for i in changed_at:
            old, new = before[i], after[i]
            if bool(old.endpoints(None)) != bool(new.endpoints(None)):
                return None
            j = at.get(id(old))
            if j is not None:
                ports[j] = new
                replaced.append((j, old, new))
        at_replaced = [j for j, _old, _new in replaced]
        hashes = _hashes_at(self.port_hashes, ports, at_replaced)  # type: ignore[arg-type]
        moved = ServedPorts(tuple(ports), hashes, _sum_at(self.hashes_sum, self.port_hashes, hashes, at_replaced))  # type: ignore[arg-type]
        if "_names" in self.__dict__:
            moved.__dict__["_names"] = dict(self.__dict__["_names"])
        # what was derived of these ports, but for those replaced (thousands of ports, one or two replaced)
        moved_at = dict(at)
        for _j, old, _new in replaced:
            del moved_at[id(old)]
        for j, _old, new in replaced:
            moved_at[id(new)] = j
        moved.__dict__["_at"] = moved_at
        if "shape" in self.__dict__:
            moved.__dict__["shape"] = self.shape.moved(moved, [(j, new) for j, _old, new in replaced])
        # weakly: a chain of every earlier model's ports must not stay alive through the latest
        moved.__dict__["_moved_from"] = (weakref.ref(self), tuple(sorted(at[id(before[i])] for i in changed_at
                                                                         if id(before[i]) in at)))
        return moved

    def moved_from(self) -> "tuple[ServedPorts, tuple[int, ...]] | None":
        """The ports these were :meth:`moved` from, while they are alive, and the positions that
        differ from them (every other position holds the very same port): what is built for each
        port can then be taken from what was built for those, but for these positions."""
        found = self.__dict__.get("_moved_from")
        if found is None:
            return None
        before = found[0]()
        return (before, found[1]) if before is not None else None

    @cached_property
    def _at(self) -> dict[int, int]:
        """Each port's position, by the port (held by :attr:`ports`: ids stay theirs)."""
        return {id(p): j for j, p in enumerate(self.ports)}

    def names(self, name: Callable[[ServicePortInput, str], str], domain: str) -> tuple[str, ...]:
        """``name(port, domain)`` of each port (kept: a layout names each port's pieces once per model)."""
        cache = self.__dict__.setdefault("_names", {})
        found = cache.get((name, domain))
        if found is None:
            found = cache[(name, domain)] = tuple(name(port, domain) for port in self.ports)
        return found

    @cached_property
    def shape(self) -> "ServedShape":
        """These ports as a memo key that compares by their shapes (:attr:`ServicePortInput.shape`)."""
        return ServedShape(self)


@dataclass(frozen=True, eq=False)
class ServedShape:
    """The service ports a node captures, compared by what config other than their endpoints
    reads of them (:attr:`ServicePortInput.shape`): the key of the pieces built from that alone
    (the destination map, the ports' clusters), which an endpoint coming or going leaves as they
    were. What is built from it must read nothing of the ports their shape does not hold."""

    served: ServedPorts
    _shapes: tuple = field(init=False, repr=False)
    _hash: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        shapes = tuple(p.shape for p in self.served.ports)
        object.__setattr__(self, "_shapes", shapes)
        object.__setattr__(self, "_hash", hash(shapes))

    @classmethod
    def _made(cls, served: ServedPorts, shapes: tuple, shapes_hash: int) -> "ServedShape":
        made = object.__new__(cls)
        for name, value in (("served", served), ("_shapes", shapes), ("_hash", shapes_hash)):
            object.__setattr__(made, name, value)
        return made

    def moved(self, served: ServedPorts, replaced: list[tuple[int, ServicePortInput]]) -> "ServedShape":
        """The shape of ``served``: these ports with those at the positions ``replaced`` replaced
        (``ServedPorts.moved``), their shapes not looked at again but for those (an endpoint
        coming or going rarely changes one: the same shapes, the same hash, then)."""
        shapes = list(self._shapes)
        for j, port in replaced:
            shapes[j] = port.shape
        if all(shapes[j] == self._shapes[j] for j, _port in replaced):
            return self._made(served, self._shapes, self._hash)
        return self._made(served, tuple(shapes), hash(tuple(shapes)))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ServedShape):
            return NotImplemented
        return self._hash == other._hash and self._shapes == other._shapes

    def __hash__(self) -> int:
        return self._hash

    @property
    def ports(self) -> tuple[ServicePortInput, ...]:
        return self.served.ports

    def names(self, name: Callable[[ServicePortInput, str], str], domain: str) -> tuple[str, ...]:
        return self.served.names(name, domain)


#: A meshed pod as pod-IP destinations read it: (IP, namespace, service account).
PodFact = tuple[str, str, str]


def _ipv4_int(ip: str) -> int | None:
    try:
        return int.from_bytes(socket.inet_aton(ip), "big") if ip.count(".") == 3 else None
    except OSError:
        return None


@dataclass(frozen=True, eq=False)
class NodePods:
    """One node's pod CIDRs and its meshed pods inside them (by IP): what its ClusterLoadAssignment
    of the linear layout is built from, and all it is keyed by (fragments.py), so that a pod
    added on another node leaves it, and the resource built from it, the very same object."""

    node: str
    cidrs: tuple[str, ...]
    pods: tuple[PodFact, ...]
    _hash: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.node, self.cidrs, self.pods)))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, NodePods):
            return NotImplemented
        return self._hash == other._hash and (self.node, self.cidrs, self.pods) == (other.node, other.cidrs, other.pods)

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, eq=False)
class PodRoutes:
    """Where the linear layout finds each meshed pod's IP: by its node's pod CIDR (``nodes``: every
    node with a usable CIDR, with or without meshed pods, so a node's first pod changes no listener),
    or, for the "strays" (a pod outside its node's CIDRs, or on a node with none or without a Node
    object), by its own address. A CIDR that overlaps another node's is not used: a destination in
    it could not say which node's pods to look among (the pods of both nodes are strays then).

    ``shape``: the part every listener and cluster depends on (the CIDRs and the strays), never
    the in-CIDR pods."""

    nodes: tuple[NodePods, ...]
    strays: tuple[PodFact, ...]
    #: What the node's own part was split from: its CIDRs and every meshed pod on it (to reuse it when equal).
    _sources: dict = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def shape(self) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], tuple[PodFact, ...]]:
        return tuple((n.node, n.cidrs) for n in self.nodes), self.strays

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, PodRoutes):
            return NotImplemented
        return (self.nodes, self.strays) == (other.nodes, other.strays)

    def __hash__(self) -> int:
        found = self.__dict__.get("_hash_value")  # (a memo key: a hundred node parts hashed once)
        if found is None:
            found = self.__dict__["_hash_value"] = hash((self.nodes, self.strays))
        return found

    def moved_from(self) -> "tuple[PodRoutes, frozenset[str]] | None":
        """The routes these were made from by the nodes whose pods changed (:meth:`of` with
        ``changed``), while they are alive, and those nodes: every other node's part is the very
        same object. None when made whole."""
        found = self.__dict__.get("_moved_from")
        if found is None:
            return None
        before = found[0]()
        return (before, found[1]) if before is not None else None

    @classmethod
    def of(
        cls,
        meshed_facts: Iterable[tuple],
        node_cidrs: tuple[tuple[str, tuple[str, ...]], ...],
        previous: "PodRoutes | None" = None,
        *,
        changed: Mapping[str, Iterable[tuple]] | None = None,
    ) -> "PodRoutes":
        """``meshed_facts``: (IP, node, namespace, service account) of each meshed pod
        (:attr:`MeshInput.meshed_facts`); ``previous``: the last model's, whose node parts are
        kept where the node's CIDRs and meshed pods are the same. ``changed``: the facts of the
        meshed pods of each node whose pods may differ from ``previous``'s, when no other node's
        do (``MeshIndex.changes_since``) and the CIDRs are ``previous``'s: then only those nodes
        are looked at (``meshed_facts`` is not read)."""
        moved = None
        if previous is not None and changed is not None and previous._sources.get(_CIDRS) == node_cidrs:
            moved = previous  # the same nodes in the same order, those not in ``changed`` with the same parts
            usable, sources = previous._sources[_USABLE], dict(previous._sources)
            for node, facts in changed.items():
                sources.pop(node, None)
                sources.pop((_OTHER, node), None)
                cls._split(node, tuple(facts), usable, previous._sources, sources)
        else:
            usable = _disjoint(node_cidrs)
            by_node: defaultdict[str, list[tuple]] = defaultdict(list)
            for fact in meshed_facts:  # the facts themselves, not new tuples: most nodes' are kept below
                by_node[fact[1]].append(fact)
            old = previous._sources if previous is not None else {}
            sources = {_CIDRS: node_cidrs, _USABLE: usable}
            for node in usable.keys() | by_node.keys():
                cls._split(node, tuple(by_node.get(node, ())), usable, old, sources)
        nodes = tuple(sources[node][1] for node in sorted(usable))
        strays = [fact for key, value in sources.items() if key not in (_CIDRS, _USABLE) for fact in value[2]]
        routes = cls(nodes, tuple(sorted(strays)))
        routes._sources.update(sources)
        if moved is not None:  # weakly: a chain of every earlier model's routes must not stay alive
            routes.__dict__["_moved_from"] = (weakref.ref(moved), frozenset(changed or ()))
        return routes

    @staticmethod
    def _split(node: str, facts: tuple, usable: Mapping[str, list], old: Mapping, sources: dict) -> None:
        """Node ``node``'s record in ``sources``: its meshed pods' ``facts`` split into its part
        (inside its CIDRs) and its strays; ``old``'s when its CIDRs and pods are the same."""
        networks = usable.get(node)
        if networks is None:  # no usable CIDR: every pod of it is a stray
            if facts:
                sources[(_OTHER, node)] = (facts, None, tuple((ip, ns, sa) for ip, _n, ns, sa in facts))
            return
        cidrs = tuple(str(n) for n in networks)
        source = (cidrs, facts)
        kept = old.get(node)
        if kept is not None and kept[0] == source:
            sources[node] = kept
            return
        ranges = [(int(n.network_address), int(n.netmask)) for n in networks]
        inside, outside = [], []
        if len(ranges) == 1:  # (most nodes have one: no generator per pod)
            (net, mask), = ranges
            for ip, _node, namespace, account in facts:
                value = _ipv4_int(ip)
                (inside if value is not None and value & mask == net else outside).append((ip, namespace, account))
        else:
            for ip, _node, namespace, account in facts:
                value = _ipv4_int(ip)
                inside_cidr = value is not None and any(value & mask == net for net, mask in ranges)
                (inside if inside_cidr else outside).append((ip, namespace, account))
        sources[node] = (source, NodePods(node, cidrs, tuple(sorted(inside))), tuple(outside))


#: Keys of ``PodRoutes._sources`` besides the nodes: the CIDRs it was made for, their usable part, a node without one.
_CIDRS, _USABLE, _OTHER = ("cidrs",), ("usable",), "other"


def _disjoint(node_cidrs: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, list]:
    """Each node's IPv4 pod CIDRs (as networks), leaving out every node whose CIDRs overlap another node's."""
    networks: dict[str, list] = {}
    for node, cidrs in node_cidrs:
        found = ipv4_networks(cidrs)
        if found:
            networks[node] = found
    spans = sorted(
        (int(n.network_address), int(n.broadcast_address), node) for node, nets in networks.items() for n in nets
    )
    clash: set[str] = set()
    reach, owner = -1, None
    for start, end, node in spans:
        if start <= reach and node != owner:
            clash.update((node, owner))
        if end > reach:
            reach, owner = end, node
    return {node: nets for node, nets in networks.items() if node not in clash}


@dataclass(frozen=True)
class NodeInput:
    """Everything one node's config is translated from. Equal inputs, equal config."""

    node: str
    options: TranslateOptions
    #: The node's meshed pods that have an IP, in the model's order (namespace, name).
    local_pods: tuple[Workload, ...]
    mesh: MeshInput
    #: What decides who may connect to each of ``local_pods`` (its AuthorizationPolicies and
    #: mTLS mode), in the same order: a node's config carries the policies of its own pods only.
    policies: tuple[WorkloadPolicies, ...] = ()


#: The fields of :class:`NodeInput`, in order (read from the class: a field added there is carried by
#: :func:`_with_mesh` too).
_NODE_INPUT_FIELDS = tuple(f.name for f in fields(NodeInput))


def _with_mesh(node_input: NodeInput, mesh: MeshInput) -> NodeInput:
    """``replace(node_input, mesh=mesh)``, without calling ``__init__`` (made for each of a pod
    change's hundred nodes): its fields alone, nothing derived from the old one is carried."""
    made = object.__new__(NodeInput)
    held = node_input.__dict__
    made.__dict__.update({name: held[name] for name in _NODE_INPUT_FIELDS})
    made.__dict__["mesh"] = mesh
    return made


def config_nodes(index: MeshIndex) -> set[str]:
    """The nodes that get config: every Node object, and every node a pod is scheduled on (manifests
    often carry pods without their Node objects; those ztunnels must not be starved)."""
    return set(index.nodes) | index.scheduled_nodes()


class NodeInputs(dict[str, NodeInput]):
    """Node inputs, and the model they were made from (its ``MeshIndex.generation``): the next
    model knows what changed since that one (``MeshIndex.changes_since``)."""

    def __init__(self, generation: int | None = None) -> None:
        super().__init__()
        self.generation = generation


def node_inputs(
    index: MeshIndex,
    nodes: Iterable[str],
    options: TranslateOptions,
    mesh: MeshInput | None = None,
    previous: Mapping[str, NodeInput] | None = None,
) -> NodeInputs:
    """The input of each of ``nodes`` (``mesh``: the model's MeshInput, when already made;
    ``previous``: the last model's inputs, each kept when equal, so that comparing them is an identity check).

    When ``previous`` was made from a model this one was built from (``MeshIndex.build(previous=...)``),
    a node whose meshed pods and their policies did not change (``MeshIndex.changes_since``) keeps
    them from its previous input, its pods not walked: a pod change costs its own node, not the cluster's pods."""
    mesh = mesh if mesh is not None else MeshInput.of(index)
    previous = previous or {}
    changed = index.changes_since(previous.generation if isinstance(previous, NodeInputs) else None).nodes
    out = NodeInputs(index.generation)
    for node in nodes:
        old = previous.get(node)
        if old is not None and changed is not None and node not in changed:
            if old.options is not options and old.options != options:
                out[node] = NodeInput(node, options, old.local_pods, mesh, old.policies)
            elif old.mesh is mesh:
                out[node] = old
            else:  # (most nodes of a change: the frozen dataclass's __init__ was a setattr per field)
                out[node] = _with_mesh(old, mesh)
            continue
        pods = tuple(w for w in index.meshed_workloads_on(node) if w.ip)
        policies = tuple(index.policies_for(w) for w in pods)
        old = previous.get(node)
        if (
            old is not None
            and old.mesh is mesh
            and old.options == options
            and old.local_pods == pods
            and old.policies == policies
        ):
            out[node] = old
        else:
            out[node] = NodeInput(node, options, pods, mesh, policies)
    return out

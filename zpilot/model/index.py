"""The mesh index: membership rules and the lookups every consumer of the model needs.

Built once per model change from an immutable :class:`~zpilot.model.objects.Cluster`; all
questions (which pods are on node N, who is behind VIP:port, which pod owns this IP) are then
dictionary lookups. A build given the previous index (``MeshIndex.build(..., previous=...)``)
reuses what it derived from each object that is still there, unchanged (the same instance: a
source hands unchanged objects over as they were), so a pod added costs that pod and the
endpoints of the services selecting it, a service added or removed that service, a policy changed
the pods it selects, not the cluster; the result, problems included and in their order, is the
one a build from nothing gives.

Every rule about who is in the mesh lives here and nowhere else, so the
xDS translators and the CNI agent can never disagree about it (the 2022 code did: istiod used a
pod label, the CNI a namespace label). That includes the address family: the mesh is IPv4-only, so
the index holds each pod, service and node with its IPv4 addresses alone, and reports what it dropped.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, insort
from collections import defaultdict
from dataclasses import dataclass, field, replace
from itertools import chain, count, islice
from operator import attrgetter, is_, is_not
from typing import Iterable, Mapping, Sequence

from .addresses import is_ipv4_network, split_mesh_family
from .objects import (
    NO_LOCALITY,
    SERVICE_NAME_LABEL,
    Cluster,
    EndpointSlice,
    Locality,
    Namespace,
    Node,
    ObjectRef,
    Service,
    ServicePort,
    Workload,
)
from .policy import DEFAULT_ROOT_NAMESPACE, WorkloadPolicies
from .policy_index import PolicyIndex
from .problems import Problem, Problems, brief

log = logging.getLogger(__name__)

#: Pods with this label in the ztunnel namespace are the node's ztunnels (as the 2022 CNI agent chose them).
ZTUNNEL_LABEL = ("app", "ztunnel")
#: Why an address was dropped; docs/config-reference.md explains the limit.
IPV4_ONLY = "(the mesh is IPv4-only)"


def _listed(items: Sequence[str], limit: int = 4) -> str:
    """A few addresses (or names) for a message: an object's list is the client's, and messages stay bounded."""
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Endpoint:
    """One address behind one service port, target port resolved, with the conditions an
    EndpointSlice would give it (what kube-proxy decides on; see :func:`in_use`).

    ``meshed`` endpoints are reached through an HBONE tunnel to the pod's ztunnel; the others
    (pods outside the mesh, hostNetwork pods, addresses that are no pod, such as the API
    server's) are dialled directly.
    """

    address: str
    port: int
    meshed: bool
    node_name: str | None = None
    locality: Locality = NO_LOCALITY
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    workload: Workload | None = None  # the pod behind the address, when it is a pod zpilot knows

    @property
    def authority(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def usable(self) -> bool:
        """Ever used for a new connection: ready, or serving while terminating (the fallback)."""
        return self.ready or (self.serving and self.terminating)


def in_use(candidates: Iterable[Endpoint]) -> list[Endpoint]:
    """The endpoints new connections go to, as kube-proxy picks them (KEP-1669): the ready ones;
    only when there are none, those still serving while they terminate. Established connections
    to an endpoint that is left out are not cut (Envoy keeps them when a host leaves EDS)."""
    candidates = list(candidates)
    return [e for e in candidates if e.ready] or [e for e in candidates if e.serving and e.terminating]


def seen_from(candidates: Iterable[Endpoint], svc: Service, node: str | None) -> list[Endpoint]:
    """The endpoints of ``svc`` a new connection from ``node`` may use (:meth:`MeshIndex.endpoints`)."""
    if node is not None and svc.node_local:
        candidates = [e for e in candidates if e.node_name == node]
    return in_use(candidates)


@dataclass(frozen=True)
class ServiceTarget:
    service: Service
    port: ServicePort


def _remove_sorted(sequence: list[Workload], w: Workload) -> None:
    """Remove ``w`` (that very object) from a list sorted by namespace and name."""
    i = bisect_left(sequence, _by_name(w), key=_by_name)
    if i >= len(sequence) or sequence[i] is not w:
        raise LookupError(f"{w.ref} is not where the index keeps it")  # a bug: the patch would be wrong
    del sequence[i]


def _readiness(endpoint: Endpoint) -> tuple[bool, bool, bool]:
    return endpoint.ready, endpoint.serving, not endpoint.terminating


def _distinct(endpoints: list[Endpoint]) -> list[Endpoint]:
    """One endpoint per address:port, as kube-proxy keeps them: an address listed twice (in two
    slices while the controller moves it, or two hostNetwork pods of one node) is one endpoint,
    the readier entry (the first of equals), in the order of first appearance."""
    best: dict[tuple[str, int], Endpoint] = {}
    for endpoint in endpoints:
        key = (endpoint.address, endpoint.port)
        if key not in best or _readiness(endpoint) > _readiness(best[key]):
            best[key] = endpoint
    return list(best.values())


#: The order of pods (and of anything namespaced) in the index: by namespace, then name.
_by_name = attrgetter("namespace", "name")
#: A selector label no backend carries.
_NO_POSTING: tuple[Workload, ...] = ()
#: A service port: (namespace, service name, port).
PortKey = tuple[str, str, int]
_generations = count(1)


def _same(a: Sequence, b: Sequence) -> bool:
    """Whether two sequences hold the very same objects, in order (a source hands unchanged objects over as they were)."""
    return a is b or (len(a) == len(b) and all(map(is_, a, b)))


def between_common_ends(old: Sequence, new: Sequence) -> tuple[Sequence, Sequence]:
    """What differs between two sequences of mostly the same objects: the parts of each between
    their common prefix and their common suffix (by identity). A pod put in or taken out of the
    cluster's sorted tuple, or added at its end, leaves a window of that pod alone; found at C
    speed, without hashing ten thousand pods (the kube source finds its changed origins so too):
    the identity tests as bytes, searched for the first 1 (a third fewer instructions than
    counting them out with ``compress``: no integer made per object)."""
    if old is new:
        return (), ()
    shortest = min(len(old), len(new))
    start = bytes(map(is_not, old, new)).find(1)
    start = shortest if start < 0 else start
    tail = shortest - start
    end = bytes(islice(map(is_not, reversed(old), reversed(new)), tail)).find(1) if tail else -1
    end = tail if end < 0 else end
    return old[start:len(old) - end], new[start:len(new) - end]


@dataclass(frozen=True)
class ModelChanges:
    """What may differ between two indexes of one lineage (each built with ``previous=`` the one
    before): each field a superset of what changed, or None when that is not known (anything may
    have). What a consumer needs to redo only what a change touched, without comparing the models."""

    #: The nodes whose meshed pods, or the policies of those, may differ.
    nodes: frozenset[str] | None = None
    #: The service ports whose candidates (``MeshIndex.candidates``) may differ; None as well
    #: when services, their VIPs or EndpointSlices changed.
    service_ports: frozenset[PortKey] | None = None

    def __or__(self, other: "ModelChanges") -> "ModelChanges":
        def union(a, b):
            return None if a is None or b is None else a | b

        return ModelChanges(union(self.nodes, other.nodes), union(self.service_ports, other.service_ports))


#: Nothing known of what changed.
UNKNOWN_CHANGES = ModelChanges()
NO_CHANGES = ModelChanges(frozenset(), frozenset())


@dataclass(frozen=True, eq=False)
class _ServiceEntry:
    """One service as the services stage indexed it, and the problems it made reported, split so
    that a patch recomputes only what depends on the pods (its ports' endpoints)."""

    source: Service  # the service as the cluster holds it
    view: Service | None  # its IPv4 view; None: skipped (no VIP of the mesh's family)
    head: tuple[Problem, ...]  # what its VIPs' family made reported
    #: Each port: (port, its endpoints' problems, the rest (protocol, VIP taken), TCP: has endpoints).
    ports: tuple[tuple[ServicePort, tuple[Problem, ...], tuple[Problem, ...], bool], ...] = ()
    tail: tuple[Problem, ...] = ()  # the internalTrafficPolicy note (it names its endpoints' nodes)

    @property
    def key(self) -> tuple[str, str]:
        return self.source.namespace, self.source.name

    @property
    def captured(self) -> bool:
        """Whether the service is one of the index's (it has a TCP port)."""
        return any(tcp for *_, tcp in self.ports)

    @property
    def vip_ports(self) -> list[tuple[str, int]]:
        """The VIP:ports it claims or claimed in vain (its TCP ports on its VIPs, unless headless)."""
        view = self.view
        if view is None or view.headless:
            return []
        return [(vip, port.port) for port, *_, tcp in self.ports if tcp for vip in view.cluster_ips]

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(chain(self.head, *(found + fixed for _, found, fixed, _ in self.ports), self.tail))


@dataclass
class _Derived:
    """What one build derived from each object, kept for the next build (keyed by ``id``, with the
    object itself held so the id stays its own): reused only for the very same instance."""

    #: Settings, nodes and namespaces the service entries were derived under (they read localities
    #: and namespace enrollment): those entries are reused only while these are equal.
    context: tuple = ()
    #: Pod -> (pod, what it is: "host", "skip" or "candidate", its IPv4 view, its problems).
    workloads: dict[int, tuple[Workload, str, Workload | None, tuple[Problem, ...]]] = field(default_factory=dict)
    #: The backends by (namespace, label key, label value), as tuples: an equal posting is the previous object.
    postings: dict[tuple[str, str, str], tuple[Workload, ...]] = field(default_factory=dict)
    #: Service with a selector -> (service, the postings of its selector labels, its ports' candidates
    #: and the problems making them reported).
    selected: dict[int, tuple[Service, tuple, dict[int, tuple[list[Endpoint], tuple[Problem, ...]]]]] = field(
        default_factory=dict
    )


class MeshIndex:
    """Lookups over one cluster state. Construct with :meth:`build`."""

    def __init__(
        self,
        cluster: Cluster,
        problems: Problems,
        *,
        cluster_domain: str = "cluster.local",
        ztunnel_namespace: str = "istio-system",
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> None:
        self.cluster = cluster  # as given; the lookups answer with its IPv4 view (see _mesh_family)
        self.problems = problems
        self.cluster_domain = cluster_domain
        self.ztunnel_namespace = ztunnel_namespace
        self.root_namespace = root_namespace  # Istio's: its policies without a selector are mesh-wide
        self.policies = PolicyIndex(root_namespace, problems)
        self.nodes: dict[str, Node] = {}
        self.namespaces: dict[str, Namespace] = {n.name: n for n in cluster.namespaces}
        #: The backends by (namespace, label key, label value), in backend order: a selector is
        #: checked against the pods carrying one of its labels, not against every pod of the cluster.
        self._by_label: dict[tuple[str, str, str], list[Workload]] = defaultdict(list)
        self._meshed: dict[tuple[str, str], None] = {}  # (namespace, name) of the meshed pods (a dict copies fast)
        self._meshed_list: list[Workload] = []  # the meshed pods, in (namespace, name) order
        self._by_ip: dict[str, Workload] = {}
        self._by_node: dict[str, list[Workload]] = defaultdict(list)
        self._meshed_by_node: dict[str, list[Workload]] = defaultdict(list)  # the meshed ones of _by_node
        self._endpoints: dict[tuple[str, str, int], list[Endpoint]] = {}
        self._vips: dict[tuple[str, int], ServiceTarget] = {}
        self.services: list[Service] = []
        self._derived = _Derived()
        self._previous = _Derived()  # the last build's, while building
        self._before: MeshIndex | None = None  # the last index, while building, when its context is this one's
        self._hint: tuple[Sequence[Workload], Sequence[Workload]] | None = None  # the pods changed, while building
        #: What the pods gave of problems (in order), how many pods claim each IP, how many pods
        #: have each (namespace, name): what a build from this one needs to patch it. The counts are
        #: kept where they differ from what ``_by_ip`` and ``_meshed`` say (an IP of a usable pod: one
        #: claim; a meshed pod's name: one pod; else none): a patch of plain pods changes neither
        #: (see :meth:`_claims_of`), so a patched index shares them instead of copying 10,000 entries.
        self._workload_problems: tuple[Problem, ...] = ()
        self._other_claims: dict[str, int] = {}
        self._other_names: dict[tuple[str, str], int] = {}
        #: The usable pods added and removed since the previous index, when patched from it (else None).
        self._workload_changes: tuple[list[Workload], list[Workload]] | None = None
        #: Whether each pod of the cluster is another object (what a patch needs of the last index).
        self._distinct_workloads = False
        #: Whether ``_derived.workloads`` is this index's to patch: a patch takes the dict over from
        #: the index it patches, changed in place (a copy of 10,000 entries per pod change cost more
        #: than the rest of it), and that one is then rebuilt from, not patched. Its entries hold the
        #: pod they were derived from, each alone, so a build from it still reuses them, checked.
        self._owns_entries = False
        #: How many pods (of any kind) are scheduled on each node.
        self._pod_nodes: dict[str, int] = {}
        self._node_problems: tuple[Problem, ...] = ()
        #: The services stage: EndpointSlices by service and their problems, each service's entry
        #: (in the order indexed), where each is, and which entries a pod can change (by selector
        #: label; by address, for the slices of services without a selector).
        self._slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        self._slice_problems: tuple[Problem, ...] = ()
        self._service_entries: list[_ServiceEntry] = []
        self._service_problems: tuple[Problem, ...] = ()
        self._selecting: dict[tuple[str, str, str], list[int]] = {}
        self._slice_addresses: dict[str, list[int]] = {}
        #: How many services claim each VIP:port (the first in name order has it, the others are told).
        self._vip_claims: dict[tuple[str, int], int] = {}
        #: This index's token, and what changed since the indexes it was built from (the last few).
        self.generation = next(_generations)
        self._since: dict[int, ModelChanges] = {}

    @classmethod
    def build(
        cls,
        cluster: Cluster,
        problems: Problems | None = None,
        *,
        cluster_domain: str = "cluster.local",
        ztunnel_namespace: str = "istio-system",
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        previous: "MeshIndex | None" = None,
        changed_workloads: tuple[Sequence[Workload], Sequence[Workload]] | None = None,
    ) -> "MeshIndex":
        """The index of ``cluster``. ``previous``: the index of the cluster before a change, whose
        derivations of the objects still there are reused (the result is the same without it).
        ``changed_workloads``: the pods taken out of ``previous``'s cluster and put in (by identity:
        every other pod of ``cluster`` is one of ``previous``'s), when the caller knows (a source
        that patched its cluster): they are not looked for among every pod."""
        index = cls(
            cluster,
            problems if problems is not None else Problems(),
            cluster_domain=cluster_domain,
            ztunnel_namespace=ztunnel_namespace,
            root_namespace=root_namespace,
        )
        index._derived.context = (cluster_domain, ztunnel_namespace, cluster.nodes, cluster.namespaces)
        if previous is not None and previous._derived.context == index._derived.context:
            index._previous = previous._derived
            index._before = previous
        elif previous is not None:  # what is derived of each pod alone still holds
            index._previous = _Derived(workloads=previous._derived.workloads, postings=previous._derived.postings)
        index._hint = changed_workloads if previous is not None else None
        index._index_nodes()
        index._index_workloads()
        changed_ports = index._index_services()
        index.policies = PolicyIndex.build(
            cluster.authorization_policies,
            cluster.peer_authentications,
            index._meshed_list,
            root_namespace=root_namespace,
            problems=index.problems,
            previous=previous.policies if previous is not None else None,
            changes=index._workload_changes,
            selected=index._meshed_selected,
        )
        if previous is not None:
            index._record_lineage(previous, ModelChanges(index._changed_nodes(previous), changed_ports))
        index._previous = _Derived()  # not kept: one build's derivations at a time
        index._before = index._hint = None
        return index

    #: How many earlier indexes an index knows what changed since.
    LINEAGE = 8

    def _record_lineage(self, previous: "MeshIndex", changes: ModelChanges) -> None:
        self._since[previous.generation] = changes
        for generation, earlier in islice(previous._since.items(), self.LINEAGE - 1):
            self._since[generation] = earlier | changes

    def changes_since(self, generation: int | None) -> ModelChanges:
        """What may differ from the index whose :attr:`generation` is ``generation``, when this
        one was built from it, or from one built from it, within the last :attr:`LINEAGE` builds
        (else: unknown). The same answers as comparing the two models, at the cost of the changes."""
        if generation == self.generation:
            return NO_CHANGES
        return self._since.get(generation, UNKNOWN_CHANGES) if generation is not None else UNKNOWN_CHANGES

    def _changed_nodes(self, previous: "MeshIndex") -> frozenset[str] | None:
        """The nodes whose meshed pods (or their policies) may differ from ``previous``'s."""
        changed_policies = self.policies.changed
        if changed_policies is None:
            return None
        if self._workload_changes is not None:
            added, removed = self._workload_changes
            nodes = {w.node_name for w in chain(added, removed)}
        else:  # built over again: the meshed pods of each node compared (the same objects, mostly)
            mine, theirs = self._meshed_by_node, previous._meshed_by_node
            nodes = {n for n in mine.keys() | theirs.keys() if mine.get(n) != theirs.get(n)}
        nodes.update(w.node_name for w in changed_policies)
        nodes.discard(None)
        return frozenset(nodes)  # type: ignore[arg-type]

    # -- address families ---------------------------------------------------------------------

    def _mesh_family(
        self, ref: ObjectRef, addresses: tuple[str, ...], what: str, if_none: str, problems: Problems | None = None
    ) -> tuple[str, ...]:
        """``addresses`` of the mesh's family (IPv4); a warning names the object and what was dropped
        (to ``problems``, by default the index's).

        A dual-stack object keeps its IPv4 addresses, whichever family Kubernetes lists first; an
        object with IPv6 addresses only is reported with ``if_none`` (the caller leaves it out).
        """
        problems = self.problems if problems is None else problems
        kept, dropped = split_mesh_family(addresses)
        if dropped and not kept:
            problems.warning(ref, f"IPv6-only ({_listed(dropped)}): {if_none} {IPV4_ONLY}")
        elif dropped:
            if len(dropped) > 1:
                what += "es" if what.endswith("s") else "s"
            problems.warning(ref, f"IPv6 {what} {_listed(dropped)} dropped {IPV4_ONLY}")
        return kept

    def _index_nodes(self) -> None:
        before = self._before
        if before is not None:  # the same nodes (its context is this one's): the same answers
            self.nodes, self._node_problems = before.nodes, before._node_problems
        else:
            stage = Problems()
            for node in self.cluster.nodes:
                ips = self._mesh_family(node.ref, node.internal_ips, "InternalIP", "it has no InternalIP in the mesh",
                                        stage)
                cidrs = tuple(c for c in node.pod_cidrs if is_ipv4_network(c))  # the other family's: no problem
                if (ips, cidrs) != (node.internal_ips, node.pod_cidrs):
                    node = replace(node, internal_ips=ips, pod_cidrs=cidrs)
                self.nodes[node.name] = node
            self._node_problems = tuple(stage)
        self.problems.extend(self._node_problems)

    # -- membership -------------------------------------------------------------------------

    def _classify(self, w: Workload) -> tuple[str, Workload | None, tuple[Problem, ...]]:
        """What the pod is on its own (``host``: a running hostNetwork pod with an IPv4 address, a plain
        endpoint at its node's address; ``candidate``: running, not host-network, with an IPv4 address;
        ``skip``: neither), its IPv4 view, and the problems that says. Depends on the pod alone."""
        problems = Problems()
        kind, kept = "skip", None
        if w.host_network:
            problems.info(w.ref, "hostNetwork pod: not meshed")
            ips, _ = split_mesh_family(w.ips)  # never meshed, so not reported for its family
            if w.phase == "Running" and ips:  # the node's address: a plain endpoint of its services
                kind, kept = "host", replace(w, ips=ips) if ips != w.ips else w
        elif w.phase != "Running":
            problems.info(w.ref, f"phase {w.phase}: not meshed")
        elif not w.ips:
            problems.warning(w.ref, "running pod has no IP: skipped")
        else:
            ips = self._mesh_family(w.ref, w.ips, "address", "not meshed", problems)
            if ips:
                kind, kept = "candidate", replace(w, ips=ips) if ips != w.ips else w
        return kind, kept, tuple(problems)

    def _index_workloads(self) -> None:
        stage = Problems()  # this stage's problems apart, so that a patched index replays them in place
        try:
            patched = self._patch_workloads()
        except LookupError:  # the previous index is not what it should be: build, never answer wrong
            log.exception("the pods' index could not be patched; built over again")
            patched = False
        if not patched:
            self._index_all_workloads(stage)
            self._workload_problems = tuple(stage)
        self.problems.extend(self._workload_problems)

    def _index_all_workloads(self, stage: Problems) -> None:
        claimants: dict[str, list[Workload]] = defaultdict(list)
        reported_namespaces: set[str] = set()
        candidates: list[Workload] = []  # running, not host-network, with an IPv4 address
        host_network: list[Workload] = []  # running hostNetwork pods: plain endpoints at their node's address
        previous, derived = self._previous.workloads, self._derived.workloads
        names: dict[tuple[str, str], int] = {}
        pod_nodes = self._pod_nodes
        for w in sorted(self.cluster.workloads, key=_by_name):
            entry = previous.get(id(w))
            if entry is None or entry[0] is not w:
                entry = (w, *self._classify(w))
            derived[id(w)] = entry
            key = (w.namespace, w.name)
            names[key] = names.get(key, 0) + 1
            if w.node_name:
                pod_nodes[w.node_name] = pod_nodes.get(w.node_name, 0) + 1
            _, kind, kept, problems = entry
            if problems:
                stage.extend(problems)
            if kind == "candidate":
                candidates.append(kept)  # type: ignore[arg-type]
                for ip in kept.ips:  # type: ignore[union-attr]
                    claimants[ip].append(kept)  # type: ignore[arg-type]
            elif kind == "host":
                host_network.append(kept)  # type: ignore[arg-type]
        duplicated: set[tuple[str, str]] = set()
        for ip, owners in claimants.items():
            if len(owners) > 1:
                claimed = ", ".join(str(o.ref) for o in owners)
                stage.error(f"IP {ip}", f"claimed by {claimed}: all of them skipped")
                duplicated.update((o.namespace, o.name) for o in owners)
        enrolled = {name: namespace.enrolled for name, namespace in self.namespaces.items()}
        usable: list[Workload] = []  # running, addressed, not host-network, not sharing an IP
        by_ip, by_node, meshed = self._by_ip, self._by_node, self._meshed
        for w in candidates:
            key = (w.namespace, w.name)
            if duplicated and key in duplicated:
                continue
            usable.append(w)
            for ip in w.ips:
                by_ip[ip] = w
            if w.node_name:
                by_node[w.node_name].append(w)
            else:
                stage.warning(w.ref, "running pod has no node: it is no node's source")
            if not enrolled.get(w.namespace):
                if w.namespace not in reported_namespaces:
                    reported_namespaces.add(w.namespace)
                    why = "not given" if w.namespace not in enrolled else "not labelled istio.io/dataplane-mode=ambient"
                    stage.info(f"Namespace {w.namespace}", f"{why}: its pods are not meshed")
                continue
            if w.labels and w.opted_out:
                stage.info(w.ref, "opted out of the mesh by label")
                continue
            meshed[key] = None
            self._meshed_list.append(w)
            if w.node_name:
                self._meshed_by_node[w.node_name].append(w)
        # what a selector can pick: the usable pods and running hostNetwork ones (by_label keeps them; a
        # patch keeps by_label alone, not these lists: copying 10,000 pods per change cost more than the rest)
        backends = sorted(usable + host_network, key=_by_name) if host_network else usable
        for w in backends:
            for key, value in w.labels.items():
                self._by_label[(w.namespace, key, value)].append(w)
        previous, postings = self._previous.postings, self._derived.postings
        for key, backends in self._by_label.items():
            posting = tuple(backends)
            before = previous.get(key)
            postings[key] = before if before is not None and before == posting else posting
        self._distinct_workloads = len(derived) == len(self.cluster.workloads)
        self._owns_entries = True
        self._other_claims = {ip: len(owners) for ip, owners in claimants.items()
                              if len(owners) != 1 or by_ip.get(ip) is not owners[0]}
        self._other_names = {key: n for key, n in names.items() if n != 1 or key not in meshed}

    def _claims_of(self, ip: str) -> int:
        """How many running pods of the mesh's family (usable or not) claim ``ip``."""
        return self._other_claims.get(ip, 1 if ip in self._by_ip else 0)

    def _pods_named(self, key: tuple[str, str]) -> int:
        """How many pods of the cluster (of any kind) have ``key``, (namespace, name)."""
        return self._other_names.get(key, 1 if key in self._meshed else 0)

    #: Above this many pods changed, the index is built over again rather than patched.
    PATCH_LIMIT = 256

    def _patch_workloads(self) -> bool:
        """The pods' part of the index as the previous index's, patched with the pods added and
        removed, when each of them is a plain meshed pod (running, one IPv4 address no other pod
        claims, on a node, in an enrolled namespace, not opted out, its name its own): then no pod's
        problems change and the patch is what a build from nothing gives. False (nothing done): build."""
        before = self._before
        if before is None or not before._distinct_workloads or not before._owns_entries:
            return False
        old_entries = before._derived.workloads
        current = self.cluster.workloads
        if current is before.cluster.workloads:
            self._share_workloads(before)
            return True
        old_window, new_window = (self._hint if self._hint is not None
                                  else between_common_ends(before.cluster.workloads, current))
        old_ids, new_ids = set(map(id, old_window)), set(map(id, new_window))
        removed_ids = {id(w): None for w in old_window if id(w) not in new_ids}
        added_by_id = {id(w): w for w in new_window if id(w) not in old_ids}
        if len(added_by_id) + len(removed_ids) > self.PATCH_LIMIT:
            return False
        if not added_by_id and not removed_ids and len(current) == len(before.cluster.workloads):
            self._share_workloads(before)  # the same pods, moved: the index is in name order
            return True
        enrolled = {name: namespace.enrolled for name, namespace in self.namespaces.items()}
        meshed = before._meshed
        # the counts as the pods taken out and put in so far leave them (before's shared, not copied)
        claims: dict[str, int] = {}
        names: dict[tuple[str, str], int] = {}

        def plain(kind: str, kept: Workload | None, problems: tuple) -> bool:
            return (
                kind == "candidate" and not problems and kept is not None and bool(kept.node_name)
                and bool(enrolled.get(kept.namespace)) and not (kept.labels and kept.opted_out)
            )

        removed: list[Workload] = []
        for i in removed_ids:
            w, kind, kept, problems = old_entries[i]
            key = (w.namespace, w.name)
            if not plain(kind, kept, problems) or key not in meshed or names.get(key, before._pods_named(key)) != 1:
                return False
            if any(claims.get(ip, before._claims_of(ip)) != 1 for ip in kept.ips):  # type: ignore[union-attr]
                return False
            for ip in kept.ips:  # type: ignore[union-attr]
                claims[ip] = 0
            names[key] = 0
            removed.append(kept)  # type: ignore[arg-type]
        added_entries = []
        for i, w in added_by_id.items():
            if i in old_entries and i not in removed_ids:
                return False  # the same object twice in the cluster: a build reports it
            entry = (w, *self._classify(w))
            _, kind, kept, problems = entry
            key = (w.namespace, w.name)
            if not plain(kind, kept, problems) or names.get(key, before._pods_named(key)):
                return False
            for ip in kept.ips:  # type: ignore[union-attr]
                if claims.get(ip, before._claims_of(ip)):
                    return False
                claims[ip] = 1
            names[key] = 1
            added_entries.append(entry)
        added = [entry[2] for entry in added_entries]

        meshed_list = list(before._meshed_list)
        by_ip, meshed, pod_nodes = before._by_ip.copy(), meshed.copy(), before._pod_nodes.copy()
        by_node: dict[str, list[Workload]] = defaultdict(list, before._by_node)
        meshed_by_node: dict[str, list[Workload]] = defaultdict(list, before._meshed_by_node)
        touched_meshed_nodes: set[str] = set()
        by_label: dict[tuple[str, str, str], list[Workload]] = defaultdict(list, before._by_label)
        touched_nodes: set[str] = set()
        touched_labels: set[tuple[str, str, str]] = set()

        def own(table: dict, key, touched: set) -> list[Workload]:
            if key not in touched:
                touched.add(key)
                table[key] = list(table.get(key, ()))
            return table[key]

        for w in removed:
            for sequence in (meshed_list, own(by_node, w.node_name, touched_nodes),
                             own(meshed_by_node, w.node_name, touched_meshed_nodes),
                             *(own(by_label, (w.namespace, k, v), touched_labels) for k, v in w.labels.items())):
                _remove_sorted(sequence, w)
            for ip in w.ips:
                del by_ip[ip]
            del meshed[(w.namespace, w.name)]
            pod_nodes[w.node_name] -= 1  # type: ignore[index]
            if not pod_nodes[w.node_name]:  # type: ignore[index]
                del pod_nodes[w.node_name]  # type: ignore[arg-type]
        for w in added:
            for sequence in (meshed_list, own(by_node, w.node_name, touched_nodes),
                             own(meshed_by_node, w.node_name, touched_meshed_nodes),
                             *(own(by_label, (w.namespace, k, v), touched_labels) for k, v in w.labels.items())):
                insort(sequence, w, key=_by_name)
            for ip in w.ips:
                by_ip[ip] = w
            meshed[(w.namespace, w.name)] = None
            pod_nodes[w.node_name] = pod_nodes.get(w.node_name, 0) + 1  # type: ignore[index]
        for table, touched in ((by_node, touched_nodes), (meshed_by_node, touched_meshed_nodes)):
            for node in touched:
                if not table[node]:
                    del table[node]
        postings = before._derived.postings.copy()
        for key in touched_labels:
            if by_label[key]:
                postings[key] = tuple(by_label[key])
            else:
                del by_label[key]
                postings.pop(key, None)
        if len(old_entries) - len(removed_ids) + len(added_entries) != len(current):
            raise LookupError("the pods' window does not add up")  # a bug: the patch would be wrong
        derived = old_entries  # taken over (see _owns_entries): nothing fails from here on
        for i in removed_ids:
            del derived[i]
        for entry in added_entries:
            derived[id(entry[0])] = entry
        before._owns_entries, self._owns_entries = False, True

        self._meshed_list = meshed_list
        self._by_ip, self._meshed, self._by_node, self._by_label = by_ip, meshed, by_node, by_label
        self._meshed_by_node, self._pod_nodes = meshed_by_node, pod_nodes
        # a plain pod's IP is claimed once (by_ip has it) or not at all, its name is one meshed pod's
        # or none's: the counts kept apart are the same
        self._other_claims, self._other_names = before._other_claims, before._other_names
        self._derived.workloads, self._derived.postings = derived, postings
        self._workload_problems = before._workload_problems
        self._workload_changes = (added, removed)
        self._distinct_workloads = True
        return True

    def _share_workloads(self, before: "MeshIndex") -> None:
        """The pods' part of ``before`` as this one's: the same pods (no index changes what it built)."""
        self._meshed_list = before._meshed_list
        self._by_ip, self._meshed, self._by_node, self._by_label = before._by_ip, before._meshed, before._by_node, before._by_label
        self._meshed_by_node, self._pod_nodes = before._meshed_by_node, before._pod_nodes
        self._other_claims, self._other_names = before._other_claims, before._other_names
        self._derived.workloads, self._derived.postings = before._derived.workloads, before._derived.postings
        self._workload_problems = before._workload_problems
        self._workload_changes = ([], [])
        self._distinct_workloads = True
        before._owns_entries, self._owns_entries = False, before._owns_entries

    def is_meshed(self, workload: Workload) -> bool:
        return (workload.namespace, workload.name) in self._meshed

    def _meshed_selected(self, namespace: str, selector: Mapping[str, str]) -> list[Workload]:
        """The meshed pods of ``namespace`` carrying every label of ``selector`` (not empty), in
        (namespace, name) order: those among the pods carrying its rarest label (a policy changed
        decides for them alone)."""
        postings = [self._by_label.get((namespace, k, v), ()) for k, v in selector.items()]
        meshed = self._meshed
        return [  # a backend is a meshed pod but for hostNetwork ones and those opted out (by name: two may share one)
            w for w in min(postings, key=len)
            if not w.host_network and not w.opted_out and (w.namespace, w.name) in meshed
            and all(w.labels.get(k) == v for k, v in selector.items())
        ]

    # -- services ---------------------------------------------------------------------------

    def _index_services(self) -> frozenset[PortKey] | None:
        """The services' part of the index; the service ports whose candidates may differ from the
        last index's (None: not known). Patched from the last index when only plain pods and
        services changed (their slices, the nodes and namespaces are the same): then only the
        services added, and those selecting (or listing the address of) a pod added or removed,
        are indexed (a service taken out or put in must claim no VIP:port another one claims)."""
        before = self._before
        changed: frozenset[PortKey] | None = None
        if (
            before is not None
            and self._workload_changes is not None
            and _same(self.cluster.endpoint_slices, before.cluster.endpoint_slices)
        ):
            if _same(self.cluster.services, before.cluster.services):
                changed = self._patch_services(before)
            elif self._patch_services(before, between_common_ends(before.cluster.services, self.cluster.services)) is None:
                self._index_all_services()
        else:
            self._index_all_services()
        self.problems.extend(self._service_problems)
        return changed

    def _index_all_services(self) -> None:
        stage = Problems()
        self._slices = slices = self._slices_by_service(stage)
        self._slice_problems = tuple(stage)
        # from nothing (a patch given up may have left the last index's, or copies of them, here)
        self.services, self._vips, self._vip_claims, self._endpoints = [], {}, {}, {}
        self._derived.selected = {}
        entries = self._service_entries = []
        for svc in sorted(self.cluster.services, key=lambda s: (s.namespace, s.name)):
            entry = self._service_entry(svc, slices)
            if entry.captured:
                self.services.append(entry.view)  # type: ignore[arg-type]
            entries.append(entry)
        self._position_services()
        self._service_problems = self._slice_problems + tuple(chain.from_iterable(e.problems for e in entries))

    def _position_services(self) -> None:
        """Which entries a pod can change: by the labels of their selector, or by the addresses
        their slices list (services without a selector), as positions in the entries."""
        selecting: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        addresses: dict[str, list[int]] = defaultdict(list)
        slices = self._slices
        for position, entry in enumerate(self._service_entries):
            view = entry.view
            if view is not None and view.selector:
                for k, v in view.selector.items():
                    selecting[(view.namespace, k, v)].append(position)
            elif view is not None:
                for sl in slices.get((view.namespace, view.name), ()):
                    for ep in sl.endpoints:
                        addresses[ep.address].append(position)
        self._selecting, self._slice_addresses = dict(selecting), dict(addresses)

    def _service_entry(self, svc: Service, slices: dict[tuple[str, str], list[EndpointSlice]]) -> _ServiceEntry:
        """Index one service (the services in name order: the first to claim a VIP:port keeps it)."""
        head, source = Problems(), svc
        if svc.cluster_ips and not svc.headless:
            vips = self._mesh_family(svc.ref, svc.cluster_ips, "clusterIP", "skipped", head)
            if not vips:
                return _ServiceEntry(svc, None, tuple(head))
            if vips != svc.cluster_ips:
                svc = replace(svc, cluster_ips=vips)
        ports = []
        for port in svc.ports:
            fixed = Problems()
            if port.protocol != "TCP":
                fixed.info(svc.ref, f"port {port.label} is {port.protocol}: ztunnel carries TCP only")
                ports.append((port, (), tuple(fixed), False))
                continue
            found = self._index_port(svc, port, slices)
            if not svc.headless:
                for vip in svc.cluster_ips:
                    self._vip_claims[(vip, port.port)] = self._vip_claims.get((vip, port.port), 0) + 1
                    other = self._vips.get((vip, port.port))
                    if other is not None:
                        fixed.error(svc.ref, f"VIP {vip}:{port.port} is already {other.service.ref}'s: port skipped")
                        continue
                    self._vips[(vip, port.port)] = ServiceTarget(svc, port)
            ports.append((port, found, tuple(fixed), True))
        tail: tuple[Problem, ...] = ()
        if any(tcp for *_, tcp in ports):
            tail = self._node_local_note(svc, ports)
        return _ServiceEntry(source, svc, tuple(head), tuple(ports), tail)

    def _index_port(self, svc: Service, port: ServicePort, slices: dict[tuple[str, str], list[EndpointSlice]]
                    ) -> tuple[Problem, ...]:
        """The candidates of one TCP service port, and the problems its endpoints make reported."""
        found = Problems()
        if svc.selector:
            candidates = self._selected_endpoints(svc, port, found)
        else:
            candidates = _distinct(self._slice_endpoints(svc, port, slices.get((svc.namespace, svc.name), []), found))
        self._endpoints[(svc.namespace, svc.name, port.port)] = candidates
        if not svc.headless:
            self._report_unserved(svc, port, candidates, (svc.namespace, svc.name) in slices, found)
        return tuple(found)

    def _node_local_note(self, svc: Service, ports: Sequence[tuple]) -> tuple[Problem, ...]:
        if not svc.node_local or svc.headless:
            return ()
        note = Problems()
        self._report_node_local(svc, [port for port, *_, tcp in ports if tcp], note)
        return tuple(note)

    def _patch_services(self, before: "MeshIndex", window: tuple[Sequence[Service], Sequence[Service]] | None = None
                        ) -> frozenset[PortKey] | None:
        """The last index's services, with the entries a pod added or removed can change indexed
        again; the service ports whose candidates changed. ``window``: the services that differ
        (``between_common_ends``), taken out and put in first: None (nothing done) when that is no
        patch (a VIP:port of theirs claimed by another, a name twice, too many)."""
        self.services, self._vips, self._vip_claims = before.services, before._vips, before._vip_claims
        self._slices, self._slice_problems = before._slices, before._slice_problems
        self._selecting, self._slice_addresses = before._selecting, before._slice_addresses
        fresh: set[int] = set()
        if window is not None:
            patched = self._patch_service_window(before, *window)
            if patched is None:
                return None
            fresh = patched
        else:
            self._derived.selected = before._derived.selected
            self._endpoints, self._service_entries = before._endpoints, before._service_entries
            self._service_problems = before._service_problems
        added, removed = self._workload_changes  # type: ignore[misc]
        affected: set[int] = set()
        for w in chain(added, removed):
            for k, v in w.labels.items():
                affected.update(self._selecting.get((w.namespace, k, v), ()))
            for ip in w.ips:
                affected.update(self._slice_addresses.get(ip, ()))
        affected -= fresh  # indexed with the pods as they are
        if not affected:
            return frozenset()
        if window is None:
            self._derived.selected = before._derived.selected.copy()
            self._endpoints, self._service_entries = before._endpoints.copy(), list(before._service_entries)
        entries = self._service_entries
        changed: set[PortKey] = set()
        problems_changed = False
        for position in sorted(affected):
            old = entries[position]
            svc = old.view
            assert svc is not None  # only indexed services are listed by label or address
            ports = []
            for port, found, fixed, tcp in old.ports:
                if tcp:
                    found = self._index_port(svc, port, self._slices)
                    key = (svc.namespace, svc.name, port.port)
                    if self._endpoints[key] != before._endpoints.get(key):
                        changed.add(key)
                ports.append((port, found, fixed, tcp))
            entry = entries[position] = _ServiceEntry(old.source, svc, old.head, tuple(ports),
                                                      self._node_local_note(svc, ports))
            problems_changed = problems_changed or entry.problems != old.problems
        if problems_changed:
            self._service_problems = self._slice_problems + tuple(chain.from_iterable(e.problems for e in entries))
        return frozenset(changed)

    def _patch_service_window(self, before: "MeshIndex", old: Sequence[Service], new: Sequence[Service]
                              ) -> set[int] | None:
        """The last index's services with those of ``old`` taken out and those of ``new`` indexed
        and put in, in name order (the entries' positions after them made again); the positions
        of those put in. None (nothing of this index changed) when any of them claims (or
        claimed) a VIP:port another service claims too, when two services share one's name, or
        when they are too many: the first claimant in name order decides, a build finds it."""
        old_ids, new_ids = set(map(id, old)), set(map(id, new))
        gone = [svc for svc in old if id(svc) not in new_ids]
        came = [svc for svc in new if id(svc) not in old_ids]
        if len(gone) + len(came) > self.PATCH_LIMIT:
            return None
        entries = list(before._service_entries)
        claims, vips = before._vip_claims.copy(), before._vips.copy()
        services = list(before.services)
        endpoints = before._endpoints.copy()
        selected = before._derived.selected.copy()
        problems_changed = False
        by_key = attrgetter("key")
        for svc in gone:
            key = (svc.namespace, svc.name)
            i = bisect_left(entries, key, key=by_key)
            if i >= len(entries) or entries[i].source is not svc or (i + 1 < len(entries) and entries[i + 1].key == key) or (
                i > 0 and entries[i - 1].key == key
            ):
                return None  # not where a build puts it, or its name twice: a build decides
            entry = entries.pop(i)
            if any(claims[vp] != 1 for vp in entry.vip_ports):
                return None
            for vp in entry.vip_ports:
                del claims[vp]
                del vips[vp]
            if entry.captured:
                at = bisect_left(services, key, key=_by_name)
                if at >= len(services) or services[at] is not entry.view:
                    return None
                del services[at]
            for port, *_, tcp in entry.ports:
                if tcp:
                    del endpoints[(svc.namespace, svc.name, port.port)]
            if entry.view is not None and entry.view.selector:
                selected.pop(id(entry.view), None)
            problems_changed = problems_changed or bool(entry.problems)
        self._vip_claims, self._vips, self.services, self._endpoints = claims, vips, services, endpoints
        self._derived.selected = selected
        came.sort(key=lambda s: (s.namespace, s.name))
        for svc in came:
            key = (svc.namespace, svc.name)
            if svc.cluster_ips and not svc.headless:
                vips_of, _ = split_mesh_family(svc.cluster_ips)
                if any((vip, port.port) in claims for port in svc.ports if port.protocol == "TCP" for vip in vips_of):
                    return None  # another service's VIP:port: which keeps it is a build's to say
            i = bisect_left(entries, key, key=by_key)
            if (i < len(entries) and entries[i].key == key) or (i > 0 and entries[i - 1].key == key):
                return None
            entry = self._service_entry(svc, self._slices)
            entries.insert(i, entry)
            if entry.captured:
                insort(services, entry.view, key=_by_name)
            problems_changed = problems_changed or bool(entry.problems)
        self._service_entries = entries
        self._position_services()
        self._service_problems = (
            self._slice_problems + tuple(chain.from_iterable(e.problems for e in entries)) if problems_changed
            else before._service_problems
        )
        fresh = {id(svc) for svc in came}
        return {i for i, entry in enumerate(entries) if id(entry.source) in fresh}

    def _locality(self, node_name: str | None, zone: str = "") -> Locality:
        node = self.nodes.get(node_name) if node_name else None
        return node.locality if node is not None else (Locality(zone=zone) if zone else NO_LOCALITY)

    def _selected_endpoints(self, svc: Service, port: ServicePort, report: Problems) -> list[Endpoint]:
        """The candidates of a service port with a selector, as the last build made them when the
        service, the backends carrying its selector's labels, the nodes and the namespaces are the same."""
        known = self._derived.postings
        postings = tuple(known.get((svc.namespace, k, v), _NO_POSTING) for k, v in svc.selector.items())
        entry = self._derived.selected.get(id(svc)) or self._previous.selected.get(id(svc))
        if (
            entry is None
            or entry[0] is not svc
            or len(entry[1]) != len(postings)
            or not all(a is b for a, b in zip(entry[1], postings))
        ):
            entry = (svc, postings, {})
        found = entry[2].get(port.port)
        if found is None:
            problems = Problems()
            found = entry[2][port.port] = (_distinct(self._pod_endpoints(svc, port, problems)), tuple(problems))
        self._derived.selected[id(svc)] = entry
        candidates, problems = found
        if problems:
            report.extend(problems)
        return candidates

    def _pod_endpoints(self, svc: Service, port: ServicePort, problems: Problems) -> list[Endpoint]:
        """The selected pods, with the conditions the EndpointSlice controller would give them."""
        endpoints = []
        for w in self._selected(svc):
            # As the EndpointSlice controller sets them: publishNotReadyAddresses makes every pod ready.
            ready = svc.publish_not_ready or (w.ready and not w.terminating)
            if not ready and not (w.ready and w.terminating):
                continue  # neither ready nor serving: never used, whatever else happens
            if isinstance(port.target_port, int):
                target = port.target_port
            else:
                resolved = w.named_port(port.target_port, port.protocol)
                if resolved is None:
                    problems.warning(
                        svc.ref,
                        f"port {port.label}: targetPort {brief(port.target_port)} is not a container port of {w.ref}:"
                        " that pod is not an endpoint of this port",
                    )
                    continue
                target = resolved
            endpoints.append(
                Endpoint(
                    address=w.ips[0],
                    port=target,
                    meshed=self.is_meshed(w),
                    node_name=w.node_name,
                    locality=self._locality(w.node_name),
                    ready=ready,
                    serving=w.ready,
                    terminating=w.terminating,
                    workload=w,
                )
            )
        return endpoints

    def _selected(self, svc: Service) -> list[Workload]:
        """The backends ``svc`` selects, in backend order: those among the pods carrying its
        rarest selector label that match the whole selector."""
        if not svc.selector:
            return []
        postings = [self._by_label.get((svc.namespace, k, v), []) for k, v in svc.selector.items()]
        return [w for w in min(postings, key=len) if svc.selects(w)]

    def _slices_by_service(self, problems: Problems) -> dict[tuple[str, str], list[EndpointSlice]]:
        """EndpointSlices by (namespace, service name). Slices of Services with a selector are
        not read: those endpoints come from the pods themselves, which zpilot sees too."""
        by_service: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
        for s in sorted(self.cluster.endpoint_slices, key=lambda s: (s.namespace, s.name)):
            if not s.service_name:
                problems.info(s.ref, f"no {SERVICE_NAME_LABEL} label: it is no Service's")
                continue
            if s.address_type == "FQDN":
                problems.info(s.ref, "addressType FQDN: not used (kube-proxy does not use FQDN slices either)")
                continue
            if s.address_type != "IPv4":
                problems.info(s.ref, f"addressType {s.address_type}: not used {IPV4_ONLY}")
                continue
            by_service[(s.namespace, s.service_name)].append(s)
        return by_service

    def _slice_endpoints(self, svc: Service, port: ServicePort, slices: list[EndpointSlice], problems: Problems
                         ) -> list[Endpoint]:
        """Endpoints of a Service without a selector: its slices' port of the same name and
        protocol (each slice numbers it its own way). An address that is a meshed pod's is
        tunnelled; any other (the API server's host address, a database outside) is dialled."""
        endpoints: list[Endpoint] = []
        for sl in slices:
            match = next((p for p in sl.ports if p.name == port.name and p.protocol == port.protocol), None)
            if match is None:
                continue
            if match.port is None:
                problems.warning(sl.ref, f"port {port.name or '(unnamed)'!r} has no number: not used for {svc.ref}")
                continue
            for ep in sl.endpoints:
                pod = self._by_ip.get(ep.address)
                node_name = ep.node_name or (pod.node_name if pod else None)
                endpoint = Endpoint(
                    address=ep.address,
                    port=match.port,
                    meshed=pod is not None and self.is_meshed(pod),
                    node_name=node_name,
                    locality=self._locality(node_name, ep.zone),
                    ready=ep.ready,
                    serving=ep.serving,
                    terminating=ep.terminating,
                    workload=pod,
                )
                if endpoint.usable:
                    endpoints.append(endpoint)
        return endpoints

    def _report_unserved(self, svc: Service, port: ServicePort, candidates: list[Endpoint], has_slices: bool,
                         problems: Problems) -> None:
        """A service port with no endpoint is not captured (no chain for its VIP): the connection
        passes through to kube-proxy, which refuses it, as in a cluster without a mesh."""
        if in_use(candidates):
            return
        effect = "its VIP is not captured: connections pass through to kube-proxy, which refuses them"
        if svc.selector:
            problems.info(svc.ref, f"port {port.label} has no ready endpoint: {effect}")
        elif not has_slices:
            problems.warning(
                svc.ref,
                f"port {port.label} has no endpoints (no selector, and no EndpointSlice labelled"
                f" {SERVICE_NAME_LABEL}={svc.name}): {effect}",
            )
        else:
            problems.warning(svc.ref, f"port {port.label} has no ready endpoint in its EndpointSlices: {effect}")

    def _report_node_local(self, svc: Service, ports: list[ServicePort], problems: Problems) -> None:
        nodes = sorted(
            {e.node_name or "?" for p in ports for e in in_use(self._endpoints[(svc.namespace, svc.name, p.port)])}
        )
        if nodes:
            problems.info(
                svc.ref,
                f"internalTrafficPolicy Local: captured only on the nodes of its endpoints ({_listed(nodes)});"
                " elsewhere its VIP passes through to kube-proxy, which drops it",
            )

    # -- lookups ----------------------------------------------------------------------------

    def workloads_on(self, node: str) -> list[Workload]:
        """Running, addressable pods on a node (meshed or not), sorted by namespace and name."""
        return list(self._by_node.get(node, ()))

    def meshed_workloads_on(self, node: str) -> list[Workload]:
        return list(self._meshed_by_node.get(node, ()))

    def meshed_workloads(self) -> list[Workload]:
        return list(self._meshed_list)

    def scheduled_nodes(self) -> set[str]:
        """The nodes some pod is scheduled on (any pod of the cluster, meshed or not, running or not)."""
        return set(self._pod_nodes)

    def policies_for(self, workload: Workload) -> WorkloadPolicies:
        """The AuthorizationPolicies and mTLS mode deciding who may connect to ``workload`` (see policy_index)."""
        return self.policies.for_workload(workload)

    def workload_by_ip(self, ip: str) -> Workload | None:
        return self._by_ip.get(ip)

    def endpoints(self, svc: Service, port: ServicePort, node: str | None = None) -> list[Endpoint]:
        """Where a new connection to the service port goes, seen from ``node``: kube-proxy's rules
        (:func:`in_use`), within the node's own endpoints for ``internalTrafficPolicy: Local``.
        Without a node, the whole cluster's. Empty: the port is not to be captured on that node."""
        return seen_from(self.candidates(svc, port), svc, node)

    def candidates(self, svc: Service, port: ServicePort) -> list[Endpoint]:
        """Every endpoint of the service port, whatever its readiness (what :meth:`endpoints` picks from)."""
        return self._endpoints.get((svc.namespace, svc.name, port.port), [])

    def destination(self, vip: str, port: int) -> ServiceTarget | None:
        return self._vips.get((vip, port))

    def destination_endpoints(self, vip: str, port: int, node: str | None = None) -> list[Endpoint]:
        target = self._vips.get((vip, port))
        return self.endpoints(target.service, target.port, node) if target else []

    def vips(self) -> Iterable[tuple[str, ServiceTarget]]:
        """(VIP, target) pairs in a stable order."""
        for (vip, _port), target in sorted(self._vips.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            yield vip, target

    def ztunnel_on(self, node: str) -> Workload | None:
        """The node's ztunnel pod: the newest ready ``app=ztunnel`` pod in the ztunnel namespace."""
        key, value = ZTUNNEL_LABEL
        candidates = [
            w
            for w in self._by_node.get(node, ())
            if w.namespace == self.ztunnel_namespace and w.labels.get(key) == value and w.ready and not w.terminating
        ]
        return max(candidates, key=lambda w: (w.created, w.name)) if candidates else None

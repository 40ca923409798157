"""The mesh index: membership rules and the lookups every consumer of the model needs.

Built once per model change from an immutable :class:`~zpilot.model.objects.Cluster`; all
questions (which pods are on node N, who is behind VIP:port, which pod owns this IP) are then
dictionary lookups. Every rule about who is in the mesh lives here and nowhere else, so the
xDS translators and the CNI agent can never disagree about it (the 2022 code did: istiod used a
pod label, the CNI a namespace label). That includes the address family: the mesh is IPv4-only, so
the index holds each pod, service and node with its IPv4 addresses alone, and reports what it dropped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

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
from .problems import Problems, brief

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
        self._usable: list[Workload] = []  # running, addressed, not host-network, not sharing an IP
        self._backends: list[Workload] = []  # what a selector can pick: the usable pods and running hostNetwork ones
        #: The backends by (namespace, label key, label value), in backend order: a selector is
        #: checked against the pods carrying one of its labels, not against every pod of the cluster.
        self._by_label: dict[tuple[str, str, str], list[Workload]] = defaultdict(list)
        self._meshed: set[tuple[str, str]] = set()
        self._by_ip: dict[str, Workload] = {}
        self._by_node: dict[str, list[Workload]] = defaultdict(list)
        self._endpoints: dict[tuple[str, str, int], list[Endpoint]] = {}
        self._vips: dict[tuple[str, int], ServiceTarget] = {}
        self.services: list[Service] = []

    @classmethod
    def build(
        cls,
        cluster: Cluster,
        problems: Problems | None = None,
        *,
        cluster_domain: str = "cluster.local",
        ztunnel_namespace: str = "istio-system",
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> "MeshIndex":
        index = cls(
            cluster,
            problems if problems is not None else Problems(),
            cluster_domain=cluster_domain,
            ztunnel_namespace=ztunnel_namespace,
            root_namespace=root_namespace,
        )
        index._index_nodes()
        index._index_workloads()
        index._index_services()
        index.policies = PolicyIndex.build(
            cluster.authorization_policies,
            cluster.peer_authentications,
            index.meshed_workloads(),
            root_namespace=root_namespace,
            problems=index.problems,
        )
        return index

    # -- address families ---------------------------------------------------------------------

    def _mesh_family(self, ref: ObjectRef, addresses: tuple[str, ...], what: str, if_none: str) -> tuple[str, ...]:
        """``addresses`` of the mesh's family (IPv4); a warning names the object and what was dropped.

        A dual-stack object keeps its IPv4 addresses, whichever family Kubernetes lists first; an
        object with IPv6 addresses only is reported with ``if_none`` (the caller leaves it out).
        """
        kept, dropped = split_mesh_family(addresses)
        if dropped and not kept:
            self.problems.warning(ref, f"IPv6-only ({_listed(dropped)}): {if_none} {IPV4_ONLY}")
        elif dropped:
            if len(dropped) > 1:
                what += "es" if what.endswith("s") else "s"
            self.problems.warning(ref, f"IPv6 {what} {_listed(dropped)} dropped {IPV4_ONLY}")
        return kept

    def _index_nodes(self) -> None:
        for node in self.cluster.nodes:
            ips = self._mesh_family(node.ref, node.internal_ips, "InternalIP", "it has no InternalIP in the mesh")
            cidrs = tuple(c for c in node.pod_cidrs if is_ipv4_network(c))  # the other family's: no problem
            if (ips, cidrs) != (node.internal_ips, node.pod_cidrs):
                node = replace(node, internal_ips=ips, pod_cidrs=cidrs)
            self.nodes[node.name] = node

    # -- membership -------------------------------------------------------------------------

    def _index_workloads(self) -> None:
        claimants: dict[str, list[Workload]] = defaultdict(list)
        reported_namespaces: set[str] = set()
        candidates: list[Workload] = []  # running, not host-network, with an IPv4 address
        host_network: list[Workload] = []  # running hostNetwork pods: plain endpoints at their node's address
        for w in sorted(self.cluster.workloads, key=lambda w: (w.namespace, w.name)):
            if w.host_network:
                self.problems.info(w.ref, "hostNetwork pod: not meshed")
                ips, _ = split_mesh_family(w.ips)  # never meshed, so not reported for its family
                if w.phase == "Running" and ips:  # the node's address: a plain endpoint of its services
                    host_network.append(replace(w, ips=ips) if ips != w.ips else w)
                continue
            if w.phase != "Running":
                self.problems.info(w.ref, f"phase {w.phase}: not meshed")
                continue
            if not w.ips:
                self.problems.warning(w.ref, "running pod has no IP: skipped")
                continue
            ips = self._mesh_family(w.ref, w.ips, "address", "not meshed")
            if not ips:
                continue
            if ips != w.ips:
                w = replace(w, ips=ips)
            candidates.append(w)
            for ip in w.ips:
                claimants[ip].append(w)
        duplicated: set[tuple[str, str]] = set()
        for ip, owners in claimants.items():
            if len(owners) > 1:
                names = ", ".join(str(o.ref) for o in owners)
                self.problems.error(f"IP {ip}", f"claimed by {names}: all of them skipped")
                duplicated.update((o.namespace, o.name) for o in owners)
        for w in candidates:
            key = (w.namespace, w.name)
            if key in duplicated:
                continue
            self._usable.append(w)
            for ip in w.ips:
                self._by_ip[ip] = w
            if w.node_name:
                self._by_node[w.node_name].append(w)
            else:
                self.problems.warning(w.ref, "running pod has no node: it is no node's source")
            namespace = self.namespaces.get(w.namespace)
            if namespace is None or not namespace.enrolled:
                if w.namespace not in reported_namespaces:
                    reported_namespaces.add(w.namespace)
                    why = "not given" if namespace is None else "not labelled istio.io/dataplane-mode=ambient"
                    self.problems.info(f"Namespace {w.namespace}", f"{why}: its pods are not meshed")
                continue
            if w.opted_out:
                self.problems.info(w.ref, "opted out of the mesh by label")
                continue
            self._meshed.add(key)
        self._backends = sorted(self._usable + host_network, key=lambda w: (w.namespace, w.name))
        for w in self._backends:
            for key, value in w.labels.items():
                self._by_label[(w.namespace, key, value)].append(w)

    def is_meshed(self, workload: Workload) -> bool:
        return (workload.namespace, workload.name) in self._meshed

    # -- services ---------------------------------------------------------------------------

    def _index_services(self) -> None:
        slices = self._slices_by_service()
        for svc in sorted(self.cluster.services, key=lambda s: (s.namespace, s.name)):
            if svc.cluster_ips and not svc.headless:
                vips = self._mesh_family(svc.ref, svc.cluster_ips, "clusterIP", "skipped")
                if not vips:
                    continue
                if vips != svc.cluster_ips:
                    svc = replace(svc, cluster_ips=vips)
            ports = []
            for port in svc.ports:
                if port.protocol != "TCP":
                    self.problems.info(svc.ref, f"port {port.label} is {port.protocol}: ztunnel carries TCP only")
                    continue
                ports.append(port)
                if svc.selector:
                    candidates = _distinct(self._pod_endpoints(svc, port))
                else:
                    candidates = _distinct(self._slice_endpoints(svc, port, slices.get((svc.namespace, svc.name), [])))
                self._endpoints[(svc.namespace, svc.name, port.port)] = candidates
                if not svc.headless:
                    self._report_unserved(svc, port, candidates, has_slices=(svc.namespace, svc.name) in slices)
                    for vip in svc.cluster_ips:
                        other = self._vips.get((vip, port.port))
                        if other is not None:
                            self.problems.error(
                                svc.ref, f"VIP {vip}:{port.port} is already {other.service.ref}'s: port skipped"
                            )
                            continue
                        self._vips[(vip, port.port)] = ServiceTarget(svc, port)
            if ports:
                self.services.append(svc)
                if svc.node_local and not svc.headless:
                    self._report_node_local(svc, ports)

    def _locality(self, node_name: str | None, zone: str = "") -> Locality:
        node = self.nodes.get(node_name) if node_name else None
        return node.locality if node is not None else (Locality(zone=zone) if zone else NO_LOCALITY)

    def _pod_endpoints(self, svc: Service, port: ServicePort) -> list[Endpoint]:
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
                    self.problems.warning(
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

    def _slices_by_service(self) -> dict[tuple[str, str], list[EndpointSlice]]:
        """EndpointSlices by (namespace, service name). Slices of Services with a selector are
        not read: those endpoints come from the pods themselves, which zpilot sees too."""
        by_service: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
        for s in sorted(self.cluster.endpoint_slices, key=lambda s: (s.namespace, s.name)):
            if not s.service_name:
                self.problems.info(s.ref, f"no {SERVICE_NAME_LABEL} label: it is no Service's")
                continue
            if s.address_type == "FQDN":
                self.problems.info(s.ref, "addressType FQDN: not used (kube-proxy does not use FQDN slices either)")
                continue
            if s.address_type != "IPv4":
                self.problems.info(s.ref, f"addressType {s.address_type}: not used {IPV4_ONLY}")
                continue
            by_service[(s.namespace, s.service_name)].append(s)
        return by_service

    def _slice_endpoints(self, svc: Service, port: ServicePort, slices: list[EndpointSlice]) -> list[Endpoint]:
        """Endpoints of a Service without a selector: its slices' port of the same name and
        protocol (each slice numbers it its own way). An address that is a meshed pod's is
        tunnelled; any other (the API server's host address, a database outside) is dialled."""
        endpoints: list[Endpoint] = []
        for sl in slices:
            match = next((p for p in sl.ports if p.name == port.name and p.protocol == port.protocol), None)
            if match is None:
                continue
            if match.port is None:
                self.problems.warning(sl.ref, f"port {port.name or '(unnamed)'!r} has no number: not used for {svc.ref}")
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

    def _report_unserved(self, svc: Service, port: ServicePort, candidates: list[Endpoint], has_slices: bool) -> None:
        """A service port with no endpoint is not captured (no chain for its VIP): the connection
        passes through to kube-proxy, which refuses it, as in a cluster without a mesh."""
        if in_use(candidates):
            return
        effect = "its VIP is not captured: connections pass through to kube-proxy, which refuses them"
        if svc.selector:
            self.problems.info(svc.ref, f"port {port.label} has no ready endpoint: {effect}")
        elif not has_slices:
            self.problems.warning(
                svc.ref,
                f"port {port.label} has no endpoints (no selector, and no EndpointSlice labelled"
                f" {SERVICE_NAME_LABEL}={svc.name}): {effect}",
            )
        else:
            self.problems.warning(svc.ref, f"port {port.label} has no ready endpoint in its EndpointSlices: {effect}")

    def _report_node_local(self, svc: Service, ports: list[ServicePort]) -> None:
        nodes = sorted(
            {e.node_name or "?" for p in ports for e in in_use(self._endpoints[(svc.namespace, svc.name, p.port)])}
        )
        if nodes:
            self.problems.info(
                svc.ref,
                f"internalTrafficPolicy Local: captured only on the nodes of its endpoints ({_listed(nodes)});"
                " elsewhere its VIP passes through to kube-proxy, which drops it",
            )

    # -- lookups ----------------------------------------------------------------------------

    def workloads_on(self, node: str) -> list[Workload]:
        """Running, addressable pods on a node (meshed or not), sorted by namespace and name."""
        return list(self._by_node.get(node, ()))

    def meshed_workloads_on(self, node: str) -> list[Workload]:
        return [w for w in self._by_node.get(node, ()) if self.is_meshed(w)]

    def meshed_workloads(self) -> list[Workload]:
        return [w for w in self._usable if self.is_meshed(w)]

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

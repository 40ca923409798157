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
from typing import Iterable

from .addresses import is_ipv4_network, split_mesh_family
from .objects import Cluster, Namespace, Node, ObjectRef, Service, ServicePort, Workload
from .problems import Problems, brief

#: Pods with this label in the ztunnel namespace are the node's ztunnels (as the 2022 CNI agent chose them).
ZTUNNEL_LABEL = ("app", "ztunnel")
#: Why an address was dropped; docs/config-reference.md explains the limit.
IPV4_ONLY = "(the mesh is IPv4-only)"


def _listed(addresses: tuple[str, ...], limit: int = 4) -> str:
    """A few addresses for a message: an object's list is the client's, and messages stay bounded."""
    more = len(addresses) - limit
    return ", ".join(addresses[:limit]) + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Endpoint:
    """One ready pod behind one service port, with the target port already resolved."""

    workload: Workload
    address: str
    port: int
    meshed: bool

    @property
    def authority(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class ServiceTarget:
    service: Service
    port: ServicePort


class MeshIndex:
    """Lookups over one cluster state. Construct with :meth:`build`."""

    def __init__(
        self,
        cluster: Cluster,
        problems: Problems,
        *,
        cluster_domain: str = "cluster.local",
        ztunnel_namespace: str = "istio-system",
    ) -> None:
        self.cluster = cluster  # as given; the lookups answer with its IPv4 view (see _mesh_family)
        self.problems = problems
        self.cluster_domain = cluster_domain
        self.ztunnel_namespace = ztunnel_namespace
        self.nodes: dict[str, Node] = {}
        self.namespaces: dict[str, Namespace] = {n.name: n for n in cluster.namespaces}
        self._usable: list[Workload] = []  # running, addressed, not host-network, not sharing an IP
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
    ) -> "MeshIndex":
        index = cls(
            cluster,
            problems if problems is not None else Problems(),
            cluster_domain=cluster_domain,
            ztunnel_namespace=ztunnel_namespace,
        )
        index._index_nodes()
        index._index_workloads()
        index._index_services()
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
        for w in sorted(self.cluster.workloads, key=lambda w: (w.namespace, w.name)):
            if w.host_network:
                self.problems.info(w.ref, "hostNetwork pod: not meshed")
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

    def is_meshed(self, workload: Workload) -> bool:
        return (workload.namespace, workload.name) in self._meshed

    # -- services ---------------------------------------------------------------------------

    def _index_services(self) -> None:
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
                self._endpoints[(svc.namespace, svc.name, port.port)] = self._resolve_endpoints(svc, port)
                if not svc.headless:
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

    def _resolve_endpoints(self, svc: Service, port: ServicePort) -> list[Endpoint]:
        endpoints = []
        for w in self._usable:
            if not svc.selects(w) or not w.ready or w.terminating:
                continue
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
            endpoints.append(Endpoint(w, w.ips[0], target, self.is_meshed(w)))
        return endpoints

    # -- lookups ----------------------------------------------------------------------------

    def workloads_on(self, node: str) -> list[Workload]:
        """Running, addressable pods on a node (meshed or not), sorted by namespace and name."""
        return list(self._by_node.get(node, ()))

    def meshed_workloads_on(self, node: str) -> list[Workload]:
        return [w for w in self._by_node.get(node, ()) if self.is_meshed(w)]

    def meshed_workloads(self) -> list[Workload]:
        return [w for w in self._usable if self.is_meshed(w)]

    def workload_by_ip(self, ip: str) -> Workload | None:
        return self._by_ip.get(ip)

    def endpoints(self, svc: Service, port: ServicePort) -> list[Endpoint]:
        return list(self._endpoints.get((svc.namespace, svc.name, port.port), ()))

    def destination(self, vip: str, port: int) -> ServiceTarget | None:
        return self._vips.get((vip, port))

    def destination_endpoints(self, vip: str, port: int) -> list[Endpoint]:
        target = self._vips.get((vip, port))
        return self.endpoints(target.service, target.port) if target else []

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

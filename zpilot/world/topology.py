"""The shape of a world (nodes, pods, services) and the Kubernetes manifests describing it.

The manifests are generated from the same :class:`WorldSpec` the builder wires the namespaces
from, so the model zpilot serves and the world packets cross cannot disagree. The default world
is the article's: sleep (10.4.4.19) on node A, productpage (10.4.3.20) on node B, their ztunnels
at 10.4.4.18 and 10.4.3.14, productpage's VIP 10.8.14.226:9080; plus details (10.4.4.7) as a
second meshed pod on node A and httpbin (10.4.3.19, namespace ``legacy``) outside the mesh.
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .. import contract
from ..model.objects import DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE

ZTUNNEL_NAMESPACE = "istio-system"
CREATED = "2022-11-08T06:30:00Z"
#: GKE's pod MTU; the tunnels get 50 bytes less (1410), as in the article.
POD_MTU = 1460


@dataclass(frozen=True)
class NodeSpec:
    name: str
    key: str  # short name for namespaces and messages: "a", "b"
    internal_ip: str  # on the node network, which exists only between the node namespaces
    pod_cidr: str

    @property
    def gateway(self) -> str:
        """The node's address on every pod veth (point-to-point CNI layout): the pod CIDR's first host."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))


@dataclass(frozen=True)
class PodSpec:
    name: str
    namespace: str
    node: str  # NodeSpec.key
    ip: str
    service_account: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[tuple[str, int], ...] = ()  # (name, containerPort); a server listens on each
    host_veth: str | None = None  # the node side of the pod's veth; default derived from the name
    ready: bool = True  # the Pod's Ready condition, as the kubelet reports it (see kubelet.py)

    @property
    def key(self) -> str:
        """Short, unique within a world: used in namespace names."""
        return self.name.split("-")[0] if self.namespace != ZTUNNEL_NAMESPACE else f"zt{self.node}"

    @property
    def uid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"zpilot-world/{self.namespace}/{self.name}"))

    @property
    def veth(self) -> str:
        if self.host_veth:
            return self.host_veth
        return "veth" + hashlib.sha256(f"{self.namespace}/{self.name}".encode()).hexdigest()[:8]

    @property
    def is_ztunnel(self) -> bool:
        return self.namespace == ZTUNNEL_NAMESPACE and self.labels.get("app") == "ztunnel"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    namespace: str
    cluster_ip: str
    ports: tuple[tuple[str, int, int | str], ...]  # (name, port, targetPort)
    selector: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class WorldSpec:
    nodes: tuple[NodeSpec, ...]
    namespaces: Mapping[str, Mapping[str, str]]  # name -> labels
    pods: tuple[PodSpec, ...]
    services: tuple[ServiceSpec, ...]
    trust_domain: str = contract.DEFAULT_TRUST_DOMAIN

    def node(self, key: str) -> NodeSpec:
        return next(n for n in self.nodes if n.key == key or n.name == key)

    def pod(self, name: str) -> PodSpec:
        """By full name, short key (``sleep``) or ``namespace/name``."""
        for p in self.pods:
            if name in (p.name, p.key, f"{p.namespace}/{p.name}"):
                return p
        raise KeyError(f"no pod {name!r} in this world (pods: {', '.join(p.key for p in self.pods)})")

    def pods_on(self, key: str) -> list[PodSpec]:
        return [p for p in self.pods if p.node == key]

    def ztunnel_on(self, key: str) -> PodSpec:
        return next(p for p in self.pods_on(key) if p.is_ztunnel)

    def service(self, name: str) -> ServiceSpec:
        return next(s for s in self.services if s.name == name)

    def endpoints(self, service: ServiceSpec) -> list[tuple[PodSpec, int, int]]:
        """(pod, service port, target port) for every pod the selector picks."""
        out = []
        for pod in self.pods:
            if pod.namespace != service.namespace or not service.selector:
                continue
            if any(pod.labels.get(k) != v for k, v in service.selector.items()):
                continue
            for _name, port, target in service.ports:
                resolved = target if isinstance(target, int) else dict(pod.ports).get(target)
                if resolved is not None:
                    out.append((pod, port, resolved))
        return out

    def with_pod_labels(self, name: str, labels: Mapping[str, str]) -> "WorldSpec":
        """The same world with one pod's labels replaced (how a test takes a pod out of the mesh)."""
        target = self.pod(name)
        pods = tuple(replace(p, labels=dict(labels)) if p is target else p for p in self.pods)
        return replace(self, pods=pods)

    def with_pod_ready(self, name: str, ready: bool) -> "WorldSpec":
        """The same world with one pod's Ready condition set (what a kubelet's readiness probe reports)."""
        target = self.pod(name)
        pods = tuple(replace(p, ready=ready) if p is target else p for p in self.pods)
        return replace(self, pods=pods)

    # -- manifests -----------------------------------------------------------------------------

    def manifests(self) -> dict[str, list[dict[str, Any]]]:
        """File name -> documents: what ``kubectl get -o yaml`` would print for this world."""
        cluster = [_node_doc(n) for n in self.nodes] + [
            _namespace_doc(name, labels) for name, labels in sorted(self.namespaces.items())
        ]
        accounts = sorted({(p.namespace, p.service_account) for p in self.pods})
        workloads = [_service_account_doc(ns, sa) for ns, sa in accounts]
        workloads += [_service_doc(s) for s in self.services]
        workloads += [_pod_doc(p, self.node(p.node)) for p in self.pods]
        return {"cluster.yaml": cluster, "workloads.yaml": workloads}

    def write_manifests(self, directory: Path) -> list[Path]:
        """Write the manifests atomically per file (a watching ``zpilot serve`` never reads half a file)."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for filename, docs in self.manifests().items():
            path = directory / filename
            tmp = directory / f".{filename}.tmp"
            tmp.write_text(_HEADER + yaml.safe_dump_all(docs, sort_keys=False))
            tmp.replace(path)
            written.append(path)
        return written


_HEADER = "# Generated by zpilot.world from the world it describes; edits are overwritten.\n"


def _meta(name: str, namespace: str | None = None, labels: Mapping[str, str] | None = None, **extra) -> dict:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta.update(extra)
    if labels:
        meta["labels"] = dict(labels)
    return meta


def _node_doc(node: NodeSpec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": _meta(node.name, labels={"kubernetes.io/hostname": node.name}),
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": node.internal_ip},
                                 {"type": "Hostname", "address": node.name}]},
    }


def _namespace_doc(name: str, labels: Mapping[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(name, labels={**labels, "kubernetes.io/metadata.name": name})}


def _service_account_doc(namespace: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace)}


def _service_doc(svc: ServiceSpec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(svc.name, svc.namespace, {"app": svc.name}),
        "spec": {
            "type": "ClusterIP", "clusterIP": svc.cluster_ip, "clusterIPs": [svc.cluster_ip],
            "selector": dict(svc.selector),
            "ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in svc.ports],
        },
    }


def _pod_doc(pod: PodSpec, node: NodeSpec) -> dict:
    ports = [{"containerPort": port, **({"name": name} if name else {}), "protocol": "TCP"} for name, port in pod.ports]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": _meta(pod.name, pod.namespace, pod.labels, uid=pod.uid, creationTimestamp=CREATED),
        "spec": {
            "serviceAccountName": pod.service_account,
            "nodeName": node.name,
            "containers": [{"name": pod.key, "image": "zpilot-world/podserver", "ports": ports}],
        },
        "status": {
            "phase": "Running", "hostIP": node.internal_ip, "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
            "conditions": [{"type": "Ready", "status": "True" if pod.ready else "False"}],
        },
    }


# -- the article's world -----------------------------------------------------------------------

NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"
NODE_B = "gke-jimmy-cluster-default-pool-d5041909-c1da"
ZTUNNEL_PORTS = (("outbound", contract.PORT_OUTBOUND), ("hbone", contract.PORT_HBONE),
                 ("inbound-plain", contract.PORT_INBOUND_PLAINTEXT), ("admin", contract.PORT_ADMIN))


def article_world() -> WorldSpec:
    """The article's two nodes and pods (same names and addresses), and what the scenarios add."""
    mesh = {DATAPLANE_MODE_LABEL: DATAPLANE_MODE_AMBIENT}
    pods = (
        PodSpec("ztunnel-rts54", ZTUNNEL_NAMESPACE, "a", "10.4.4.18", "ztunnel", {"app": "ztunnel"},
                ZTUNNEL_PORTS, host_veth="veth300a1d80"),
        PodSpec("ztunnel-z4qmh", ZTUNNEL_NAMESPACE, "b", "10.4.3.14", "ztunnel", {"app": "ztunnel"},
                ZTUNNEL_PORTS, host_veth="veth28865c45"),
        PodSpec("sleep-5644bdc767-2dfg7", "default", "a", "10.4.4.19", "sleep",
                {"app": "sleep", "pod-template-hash": "5644bdc767"}, (("http", 80),)),
        PodSpec("details-v1-6997d94bb9-4jssp", "default", "a", "10.4.4.7", "bookinfo-details",
                {"app": "details", "version": "v1"}, (("http", 9080),)),
        PodSpec("productpage-v1-5586c4d4ff-qxz9f", "default", "b", "10.4.3.20", "bookinfo-productpage",
                {"app": "productpage", "version": "v1"}, (("http", 9080),)),
        PodSpec("httpbin-85d76b4bb6-dz6b2", "legacy", "b", "10.4.3.19", "httpbin",
                {"app": "httpbin"}, (("http", 80),)),
    )
    services = (
        ServiceSpec("sleep", "default", "10.8.1.10", (("http", 80, 80),), {"app": "sleep"}),
        ServiceSpec("productpage", "default", "10.8.14.226", (("http", 9080, 9080),), {"app": "productpage"}),
        ServiceSpec("details", "default", "10.8.3.42", (("http", 9080, 9080),), {"app": "details"}),
        ServiceSpec("httpbin", "legacy", "10.8.12.5", (("http", 8000, "http"),), {"app": "httpbin"}),
    )
    return WorldSpec(
        nodes=(
            NodeSpec(NODE_A, "a", "10.168.15.222", "10.4.4.0/24"),
            NodeSpec(NODE_B, "b", "10.168.15.224", "10.4.3.0/24"),
        ),
        namespaces={"default": mesh, ZTUNNEL_NAMESPACE: {}, "legacy": {}},
        pods=pods,
        services=services,
    )


def opted_out(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` plus the label that takes a pod out of the mesh."""
    return {**labels, DATAPLANE_MODE_LABEL: DATAPLANE_MODE_NONE}


def without_opt_out(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != DATAPLANE_MODE_LABEL}


def node_network(nodes: Iterable[NodeSpec]) -> str:
    """The prefix of the node network: the smallest /24 holding every node's InternalIP."""
    ips = [ipaddress.ip_address(n.internal_ip) for n in nodes]
    net = ipaddress.ip_network(f"{ips[0]}/24", strict=False)
    if not all(ip in net for ip in ips):
        raise ValueError("the world's nodes must share one /24 node network")
    return str(net)

"""Synthetic clusters as Kubernetes manifests: for tests at a size the article's example lacks,
and for benchmarks (``bench/scale.py``). Deterministic for a given shape.

A :class:`Shape` says how many nodes, pods, services (and ports each), namespaces and service
accounts; :func:`synthetic_manifests` writes the cluster, and the ``extra_*`` functions write
the objects of churn (a pod added on a given node, a service added, a policy added), numbered so they never
collide with the shape's own objects. :func:`synthetic_cluster` turns manifests into the model
the way a manifest directory is read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any, Iterable

#: Services get their VIPs from Kubernetes' default service range, 10.96.0.0/12; pod CIDRs skip it.
SERVICE_RANGE_OCTETS = range(96, 112)
#: Nodes a shape can have: one /16 pod CIDR each in 10.0.0.0/8, outside the service range.
MAX_NODES = 254 - len(SERVICE_RANGE_OCTETS)
#: Extra pods' (churn) host numbers start here on their node, past any shape's own pods.
EXTRA_POD_HOSTS = 60_000


@dataclass(frozen=True)
class Shape:
    nodes: int = 3
    pods: int = 30
    services: int = 15
    namespaces: int = 2
    ports_per_service: int = 2
    service_accounts_per_namespace: int = 3
    #: Each node hosts pods of many services, so of many namespaces and service accounts, as a
    #: scheduler spreading each Deployment's replicas over nodes makes it; and every service account
    #: has pods (each service's pods run as one). False is the shape of benchmark rounds one to
    #: eleven: node ``n`` hosted only the services ``n`` mod ``nodes``, so at R each node had one
    #: namespace and one service account, and only 20 of the 200 accounts had pods (docs/scale.md).
    mixed_nodes: bool = True

    @classmethod
    def reference(cls) -> "Shape":
        """Issue 13's reference cluster R: 100 nodes, 10,000 pods, 1,000 services x 2 ports, 200 service accounts."""
        return cls(nodes=100, pods=10_000, services=1_000, namespaces=20, ports_per_service=2,
                   service_accounts_per_namespace=10)

    def scaled(self, nodes: int) -> "Shape":
        """The same cluster per node (pods and services per node, namespaces and accounts) on ``nodes`` nodes."""
        per_node = max(self.nodes, 1)
        return replace(
            self,
            nodes=nodes,
            pods=self.pods * nodes // per_node,
            services=self.services * nodes // per_node,
        )

    @property
    def service_accounts(self) -> int:
        return self.namespaces * self.service_accounts_per_namespace

    def describe(self) -> str:
        return (f"{self.nodes} nodes, {self.pods} pods, {self.services} services x {self.ports_per_service} ports,"
                f" {self.service_accounts} service accounts")


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def node_name(i: int) -> str:
    return f"node-{i}"


def _pod_octet(n: int) -> int:
    """The second octet of node ``n``'s pod CIDR (10.<octet>.0.0/16), skipping the service range."""
    octet = n + 1
    return octet + len(SERVICE_RANGE_OCTETS) if octet >= SERVICE_RANGE_OCTETS.start else octet


def pod_ip(n: int, host: int) -> str:
    """The address of the ``host``-th pod on node ``n``."""
    return f"10.{_pod_octet(n)}.{host // 250}.{host % 250 + 2}"


def service_vip(s: int) -> str:
    return f"10.96.{s // 250}.{s % 250 + 1}"


def _namespaces(shape: Shape) -> list[str]:
    return [f"ns-{i}" for i in range(max(shape.namespaces, 1))]


def node_manifest(n: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name(n)},
        "spec": {"podCIDR": f"10.{_pod_octet(n)}.0.0/16"},
        "status": {"addresses": [{"type": "InternalIP", "address": f"172.20.{n // 250}.{n % 250 + 1}"}]},
    }


def service_manifest(shape: Shape, s: int) -> dict[str, Any]:
    """Service ``svc-<s>``: even ports use a named targetPort (``port-<n>`` on the pods), odd ports a number."""
    namespaces = _namespaces(shape)
    ports = []
    for p in range(shape.ports_per_service):
        target: int | str = f"port-{p}" if p % 2 == 0 else 9000 + p
        ports.append({"name": f"tcp-{p}", "port": 8000 + p, "targetPort": target, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{s}", "namespace": namespaces[s % len(namespaces)]},
        "spec": {"clusterIP": service_vip(s), "selector": {"app": f"svc-{s}"}, "ports": ports},
    }


def pod_service(shape: Shape, i: int) -> int:
    """The service of pod ``i``. Mixed nodes (:attr:`Shape.mixed_nodes`): the ``k``-th pod of node
    ``n`` (``i = k * nodes + n``) is behind service ``k + n * (services // nodes)``, so a node hosts
    consecutive services and each service's replicas are on as many nodes (at R: 100 services per
    node, each service's 10 pods on 10 nodes), every service with ``pods // services`` of them.
    Otherwise pod ``i`` is behind service ``i mod services`` (all of a service's pods on one node at R)."""
    services = max(shape.services, 1)
    if not shape.mixed_nodes:
        return i % services
    nodes = max(shape.nodes, 1)
    return (i // nodes + (i % nodes) * max(services // nodes, 1)) % services


def _service_account(shape: Shape, s: int, i: int) -> int:
    """Pod ``i``'s service account (of its namespace), its service ``s``'s: mixed, the services of a
    namespace (``s // namespaces``-th of it) take its accounts in turn, so every account has pods;
    otherwise ``i mod accounts``, as before (which at R used 20 of the 200)."""
    if not shape.mixed_nodes:
        return i % shape.service_accounts_per_namespace
    return (s // max(shape.namespaces, 1)) % shape.service_accounts_per_namespace


def pod_manifest(shape: Shape, i: int, *, node: int | None = None, host: int | None = None) -> dict[str, Any]:
    """Pod ``i``: on node ``i mod nodes`` (or ``node``), behind service :func:`pod_service`, running as
    its service's account, ready and running."""
    s = pod_service(shape, i)
    namespaces = _namespaces(shape)
    ns = namespaces[s % len(namespaces)] if shape.services else namespaces[0]
    n = i % shape.nodes if node is None else node
    host = i // shape.nodes if host is None else host
    name = f"svc-{s}-{i}"
    container_ports = [
        {"containerPort": 9000 + p, "name": f"port-{p}", "protocol": "TCP"} for p in range(shape.ports_per_service)
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": _uid(ns, name), "labels": {"app": f"svc-{s}"}},
        "spec": {
            "nodeName": node_name(n),
            "serviceAccountName": f"sa-{_service_account(shape, s, i)}",
            "containers": [{"name": "app", "image": "app", "ports": container_ports}],
        },
        "status": {
            "phase": "Running",
            "podIP": pod_ip(n, host),
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def synthetic_manifests(shape: Shape = Shape()) -> list[dict[str, Any]]:
    """Nodes (at most :data:`MAX_NODES`) with /16 pod CIDRs; enrolled namespaces; services whose even
    ports use a named targetPort (``port-<n>`` on the pods) and odd ports a number; pods spread
    round-robin over nodes, each behind the service :func:`pod_service` gives it and running as that
    service's account; every pod ready and running."""
    if shape.nodes > MAX_NODES:
        raise ValueError(f"a synthetic cluster has at most {MAX_NODES} nodes, not {shape.nodes}")
    docs: list[dict[str, Any]] = [node_manifest(n) for n in range(shape.nodes)]
    for ns in _namespaces(shape):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}}})
        for s in range(shape.service_accounts_per_namespace):
            docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"sa-{s}", "namespace": ns}})
    docs.extend(service_manifest(shape, s) for s in range(shape.services))
    docs.extend(pod_manifest(shape, i) for i in range(shape.pods))
    return docs


# -- churn -----------------------------------------------------------------------------------


def extra_pod(shape: Shape, serial: int, node: int) -> dict[str, Any]:
    """A new pod on node ``node`` (the ``serial``-th added), behind an existing service, named so
    it collides with none of the shape's pods nor other extra pods."""
    i = shape.pods + serial
    doc = pod_manifest(shape, i, node=node, host=EXTRA_POD_HOSTS + serial)
    doc["metadata"]["name"] = name = f"extra-{serial}"
    doc["metadata"]["uid"] = _uid(doc["metadata"]["namespace"], name)
    return doc


def extra_service(shape: Shape, serial: int) -> dict[str, Any]:
    """A new service (the ``serial``-th added) selecting the pods of an existing one, on a new VIP."""
    doc = service_manifest(shape, shape.services + serial)
    existing = serial % max(shape.services, 1)
    namespaces = _namespaces(shape)
    doc["metadata"]["namespace"] = namespaces[existing % len(namespaces)]
    doc["spec"]["selector"] = {"app": f"svc-{existing}"}
    return doc


def extra_policy(shape: Shape, serial: int) -> dict[str, Any]:
    """A new AuthorizationPolicy (the ``serial``-th added): DENY, to the pods of an existing service,
    connections from one of the cluster's namespaces. It changes those pods' config only: their
    nodes' (at R, mixed, ten nodes; one node without :attr:`Shape.mixed_nodes`)."""
    s = serial % max(shape.services, 1)
    namespaces = _namespaces(shape)
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": f"deny-{serial}", "namespace": namespaces[s % len(namespaces)]},
        "spec": {
            "action": "DENY",
            "selector": {"matchLabels": {"app": f"svc-{s}"}},
            "rules": [{"from": [{"source": {"namespaces": [namespaces[(s + 1) % len(namespaces)]]}}]}],
        },
    }


def synthetic_cluster(docs: Iterable[dict[str, Any]]):
    """The model of ``docs``, converted as a manifest directory's are (:class:`zpilot.model.objects.Cluster`)."""
    from .kube.convert_policy import KIND_CONVERTERS
    from .kube.store import ObjectStore

    store = ObjectStore()
    for doc in docs:
        store.put(KIND_CONVERTERS[doc["kind"]](doc))
    return store.snapshot()

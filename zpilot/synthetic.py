"""Synthetic clusters as Kubernetes manifests: for tests at a size the article's example lacks,
and for benchmarks. Deterministic for a given shape."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    nodes: int = 3
    pods: int = 30
    services: int = 15
    namespaces: int = 2
    ports_per_service: int = 2
    service_accounts_per_namespace: int = 3


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def node_name(i: int) -> str:
    return f"node-{i}"


def synthetic_manifests(shape: Shape = Shape()) -> list[dict[str, Any]]:
    """Nodes (at most 254) with /16 pod CIDRs; enrolled namespaces; services whose even ports use a named
    targetPort (``port-<n>`` on the pods) and odd ports a number; pods spread round-robin over
    nodes, services and service accounts, every pod ready and running."""
    docs: list[dict[str, Any]] = []
    for n in range(shape.nodes):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node_name(n)},
                "spec": {"podCIDR": f"10.{n + 1}.0.0/16"},
                "status": {"addresses": [{"type": "InternalIP", "address": f"172.20.{n // 250}.{n % 250 + 1}"}]},
            }
        )
    namespaces = [f"ns-{i}" for i in range(shape.namespaces)]
    for ns in namespaces:
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"istio.io/dataplane-mode": "ambient"}}})
        for s in range(shape.service_accounts_per_namespace):
            docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"sa-{s}", "namespace": ns}})
    for s in range(shape.services):
        ns = namespaces[s % len(namespaces)]
        ports = []
        for p in range(shape.ports_per_service):
            target: int | str = f"port-{p}" if p % 2 == 0 else 9000 + p
            ports.append({"name": f"tcp-{p}", "port": 8000 + p, "targetPort": target, "protocol": "TCP"})
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{s}", "namespace": ns},
                "spec": {"clusterIP": f"10.96.{s // 250}.{s % 250 + 1}", "selector": {"app": f"svc-{s}"}, "ports": ports},
            }
        )
    for i in range(shape.pods):
        s = i % max(shape.services, 1)
        ns = namespaces[s % len(namespaces)] if shape.services else namespaces[0]
        n = i % shape.nodes
        host = i // shape.nodes
        name = f"svc-{s}-{i}"
        container_ports = [
            {"containerPort": 9000 + p, "name": f"port-{p}", "protocol": "TCP"} for p in range(shape.ports_per_service)
        ]
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "uid": _uid(ns, name), "labels": {"app": f"svc-{s}"}},
                "spec": {
                    "nodeName": node_name(n),
                    "serviceAccountName": f"sa-{i % shape.service_accounts_per_namespace}",
                    "containers": [{"name": "app", "image": "app", "ports": container_ports}],
                },
                "status": {
                    "phase": "Running",
                    "podIP": f"10.{n + 1}.{host // 250}.{host % 250 + 2}",
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    return docs

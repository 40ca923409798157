"""Kubernetes objects (as the API serves them, in JSON/YAML form) -> model objects.

One converter for every source: the manifest directory and the API watch both hand plain
dicts here, so a Pod means the same thing wherever it came from. Conversion checks what the
model relies on and raises :class:`InvalidObject` with a reason otherwise; the caller reports
it with its own idea of where the object came from.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Mapping

from ..model.objects import (
    ContainerPort,
    Namespace,
    Node,
    Service,
    ServiceAccount,
    ServicePort,
    Workload,
    frozen_labels,
)

ModelObject = Node | Namespace | ServiceAccount | Workload | Service

# RFC 1123 names, as Kubernetes validates them.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class InvalidObject(ValueError):
    """The object cannot be used; the message says why."""


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidObject(f"{what} must be a mapping, not {type(value).__name__}")
    return value


def _labels(meta: Mapping[str, Any], what: str = "metadata.labels") -> Mapping[str, str]:
    labels = _mapping(meta.get("labels"), what)
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidObject(f"{what} must map strings to strings ({k!r}: {v!r})")
    return frozen_labels(labels)


def _name(meta: Mapping[str, Any], *, max_len: int, label: bool) -> str:
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidObject("metadata.name is missing")
    pattern = _DNS_LABEL if label else _DNS_SUBDOMAIN
    if len(name) > max_len or not pattern.match(name):
        raise InvalidObject(f"metadata.name {name!r} is not a valid name (RFC 1123, at most {max_len} characters)")
    return name


def _namespace(meta: Mapping[str, Any]) -> str:
    ns = meta.get("namespace") or "default"
    if not isinstance(ns, str) or len(ns) > 63 or not _DNS_LABEL.match(ns):
        raise InvalidObject(f"metadata.namespace {ns!r} is not a valid namespace name")
    return ns


def _ip(value: Any, what: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise InvalidObject(f"{what} {value!r} is not an IP address") from None


def _port_number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidObject(f"{what} {value!r} is not a port number (1-65535)")
    return value


def node_from(obj: Mapping[str, Any]) -> Node:
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _name(meta, max_len=253, label=False)
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    internal_ips: list[str] = []  # all of them, of either family: the index picks the mesh's (IPv4)
    for addr in status.get("addresses") or []:
        addr = _mapping(addr, "status.addresses[]")
        if addr.get("type") == "InternalIP":
            internal_ips.append(_ip(addr.get("address"), "status.addresses InternalIP"))
    cidrs = list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
    for cidr in cidrs:
        try:
            ipaddress.ip_network(str(cidr))
        except ValueError:
            raise InvalidObject(f"spec.podCIDR {cidr!r} is not a CIDR") from None
    return Node(name=name, internal_ips=tuple(dict.fromkeys(internal_ips)), pod_cidrs=tuple(str(c) for c in cidrs))


def namespace_from(obj: Mapping[str, Any]) -> Namespace:
    meta = _mapping(obj.get("metadata"), "metadata")
    return Namespace(name=_name(meta, max_len=63, label=True), labels=_labels(meta))


def service_account_from(obj: Mapping[str, Any]) -> ServiceAccount:
    meta = _mapping(obj.get("metadata"), "metadata")
    return ServiceAccount(name=_name(meta, max_len=253, label=False), namespace=_namespace(meta))


def workload_from(obj: Mapping[str, Any]) -> Workload:
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _name(meta, max_len=253, label=False)
    namespace = _namespace(meta)
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise InvalidObject("spec.containers is missing or empty")
    ports: list[ContainerPort] = []
    for c in containers:
        c = _mapping(c, "spec.containers[]")
        for p in c.get("ports") or []:
            p = _mapping(p, "spec.containers[].ports[]")
            ports.append(
                ContainerPort(
                    port=_port_number(p.get("containerPort"), "containerPort"),
                    name=str(p.get("name") or ""),
                    protocol=str(p.get("protocol") or "TCP"),
                )
            )
    ips: list[str] = []
    for entry in status.get("podIPs") or []:
        entry = _mapping(entry, "status.podIPs[]")
        if entry.get("ip"):
            ips.append(_ip(entry["ip"], "status.podIPs[].ip"))
    if status.get("podIP"):
        primary = _ip(status["podIP"], "status.podIP")
        if primary not in ips:
            ips.insert(0, primary)
    ready = False
    for cond in status.get("conditions") or []:
        cond = _mapping(cond, "status.conditions[]")
        if cond.get("type") == "Ready":
            ready = str(cond.get("status")) == "True"
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    if not isinstance(sa, str) or len(sa) > 253 or not _DNS_SUBDOMAIN.match(sa):
        raise InvalidObject(f"spec.serviceAccountName {sa!r} is not a valid name")
    node_name = spec.get("nodeName")
    return Workload(
        name=name,
        namespace=namespace,
        uid=str(meta.get("uid") or ""),
        ips=tuple(ips),
        node_name=str(node_name) if node_name else None,
        service_account=sa,
        labels=_labels(meta),
        ports=tuple(ports),
        host_network=bool(spec.get("hostNetwork", False)),
        phase=str(status.get("phase") or "Pending"),
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
        created=str(meta.get("creationTimestamp") or ""),
    )


def service_from(obj: Mapping[str, Any]) -> Service:
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _name(meta, max_len=63, label=True)
    namespace = _namespace(meta)
    spec = _mapping(obj.get("spec"), "spec")
    svc_type = spec.get("type") or "ClusterIP"
    if svc_type == "ExternalName":
        raise InvalidObject("type ExternalName has no endpoints for ztunnel to reach")
    raw_ips = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
    headless = any(str(ip) == "None" for ip in raw_ips)
    cluster_ips = () if headless else tuple(_ip(ip, "spec.clusterIP") for ip in raw_ips)
    ports: list[ServicePort] = []
    seen: set[tuple[int, str]] = set()
    for p in spec.get("ports") or []:
        p = _mapping(p, "spec.ports[]")
        number = _port_number(p.get("port"), "spec.ports[].port")
        protocol = str(p.get("protocol") or "TCP")
        if (number, protocol) in seen:
            raise InvalidObject(f"port {number}/{protocol} is listed twice")
        seen.add((number, protocol))
        target = p.get("targetPort", number)
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if isinstance(target, int):
            target = _port_number(target, "spec.ports[].targetPort")
        elif not isinstance(target, str) or not target:
            raise InvalidObject(f"spec.ports[].targetPort {target!r} is neither a number nor a name")
        ports.append(ServicePort(port=number, target_port=target, name=str(p.get("name") or ""), protocol=protocol))
    selector = spec.get("selector")
    return Service(
        name=name,
        namespace=namespace,
        cluster_ips=cluster_ips,
        ports=tuple(ports),
        selector=frozen_labels(_mapping(selector, "spec.selector")) if selector else None,
        headless=headless,
    )


#: kind -> converter; the kinds zpilot reads.
CONVERTERS: dict[str, Callable[[Mapping[str, Any]], ModelObject]] = {
    "Node": node_from,
    "Namespace": namespace_from,
    "ServiceAccount": service_account_from,
    "Pod": workload_from,
    "Service": service_from,
}


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` for messages, from whatever the object has."""
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else "?"
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    name = meta.get("name", "?")
    ns = meta.get("namespace")
    return f"{kind} {ns + '/' if isinstance(ns, str) and ns else ''}{name}"

"""Kubernetes objects (as the API serves them, in JSON/YAML form) -> model objects.

One converter for every source: the manifest directory and the API watch both hand plain
dicts here, so a Pod means the same thing wherever it came from. Conversion checks what the
model relies on and raises :class:`InvalidObject` with a reason otherwise; the caller reports
it with its own idea of where the object came from.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from typing import Any, Callable, Mapping

from ..model.objects import (
    REGION_LABEL,
    SERVICE_NAME_LABEL,
    ZONE_LABEL,
    ContainerPort,
    EndpointSlice,
    Locality,
    Namespace,
    Node,
    Service,
    ServiceAccount,
    ServicePort,
    SliceEndpoint,
    SlicePort,
    Workload,
    frozen_labels,
)
from ..model.problems import brief, clip
from ..model.policy import AuthorizationPolicy, PeerAuthentication

#: (the security.istio.io kinds are converted in convert_policy.py)
ModelObject = (
    Node | Namespace | ServiceAccount | Workload | Service | EndpointSlice | AuthorizationPolicy | PeerAuthentication
)

# RFC 1123 names, as Kubernetes validates them.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Label keys ([prefix/]name) and values, as Kubernetes validates them (IsQualifiedName, IsValidLabelValue).
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
#: The protocols Kubernetes accepts for a port (zpilot carries TCP; the model reports the others).
PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")


class InvalidObject(ValueError):
    """The object cannot be used; the message says why."""


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidObject(f"{what} must be a mapping, not {type(value).__name__}")
    return value


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "its prefix must be a DNS subdomain of at most 253 characters"
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return "its name must be 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
    return None


def _labels(value: Any, what: str) -> Mapping[str, str]:
    """Labels (or a selector) as Kubernetes validates them: qualified-name keys, short values."""
    labels = _mapping(value, what)
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidObject(f"{what} must map strings to strings ({brief(k, 60)}: {brief(v, 60)})")
        why = _label_key_problem(k)
        if why is not None:
            raise InvalidObject(f"{what} key {brief(k)} is not valid: {why}")
        if v and (len(v) > 63 or not _LABEL_NAME.fullmatch(v)):
            raise InvalidObject(
                f"{what}[{brief(k, 60)}] value {brief(v)} is not valid:"
                " at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
            )
    return frozen_labels(labels)


def _name(meta: Mapping[str, Any], *, max_len: int, label: bool) -> str:
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidObject("metadata.name is missing")
    pattern = _DNS_LABEL if label else _DNS_SUBDOMAIN
    if len(name) > max_len or not pattern.fullmatch(name):
        raise InvalidObject(f"metadata.name {brief(name)} is not a valid name (RFC 1123, at most {max_len} characters)")
    return name


def _namespace(meta: Mapping[str, Any]) -> str:
    ns = meta.get("namespace") or "default"
    if not isinstance(ns, str) or len(ns) > 63 or not _DNS_LABEL.fullmatch(ns):
        raise InvalidObject(f"metadata.namespace {brief(ns)} is not a valid namespace name")
    return ns


def _ip(value: Any, what: str) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidObject(f"{what} {brief(value)} is not an IP address") from None


def _list(value: Any, what: str, limit: int | None = None) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidObject(f"{what} must be a list, not {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise InvalidObject(f"{what} has {len(value)} entries; at most {limit} are allowed")
    return value


def _bool(value: Any, what: str, default: bool = False) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidObject(f"{what} {brief(value)} is not true or false")
    return value


def _port_number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidObject(f"{what} {brief(value)} is not a port number (1-65535)")
    return value


def _short_string(value: Any, what: str, *, limit: int, default: str = "") -> str:
    """An optional plain string field, bounded (it ends up in names and messages)."""
    if value is None or value == "":
        return default
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidObject(f"{what} {brief(value)} is not a string of at most {limit} characters")
    return value


def _port_name_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA service name (Kubernetes' IsValidPortName), or None."""
    if len(name) > 15:
        return "at most 15 characters"
    if not re.fullmatch(r"[-a-z0-9]+", name):
        return "only a-z, 0-9 and '-'"
    if not re.search(r"[a-z]", name):
        return "at least one letter"
    if "--" in name or name.startswith("-") or name.endswith("-"):
        return "no '--', and no '-' at either end"
    return None


def _protocol(value: Any, what: str) -> str:
    protocol = "TCP" if value is None else value
    if protocol not in PORT_PROTOCOLS:
        raise InvalidObject(f"{what} {brief(protocol)} is not one of {', '.join(PORT_PROTOCOLS)}")
    return protocol


def node_from(obj: Mapping[str, Any]) -> Node:
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _name(meta, max_len=253, label=False)
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    internal_ips: list[str] = []  # all of them, of either family: the index picks the mesh's (IPv4)
    for addr in _list(status.get("addresses"), "status.addresses"):
        addr = _mapping(addr, "status.addresses[]")
        if addr.get("type") == "InternalIP":
            internal_ips.append(_ip(addr.get("address"), "status.addresses InternalIP"))
    cidrs = _list(spec.get("podCIDRs"), "spec.podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    for cidr in cidrs:
        try:
            ipaddress.ip_network(str(cidr))
        except ValueError:
            raise InvalidObject(f"spec.podCIDR {brief(cidr)} is not a CIDR") from None
    labels = _labels(meta.get("labels"), "metadata.labels")
    locality = Locality(region=labels.get(REGION_LABEL, ""), zone=labels.get(ZONE_LABEL, ""))
    return Node(
        name=name,
        internal_ips=tuple(dict.fromkeys(internal_ips)),
        pod_cidrs=tuple(str(c) for c in cidrs),
        locality=locality,
    )


def namespace_from(obj: Mapping[str, Any]) -> Namespace:
    meta = _mapping(obj.get("metadata"), "metadata")
    return Namespace(name=_name(meta, max_len=63, label=True), labels=_labels(meta.get("labels"), "metadata.labels"))


def service_account_from(obj: Mapping[str, Any]) -> ServiceAccount:
    meta = _mapping(obj.get("metadata"), "metadata")
    return ServiceAccount(name=_name(meta, max_len=253, label=False), namespace=_namespace(meta))


def _container_ports(containers: list[Any]) -> list[ContainerPort]:
    """Container ports as Kubernetes validates them: numbers in range, known protocols, and
    names that are IANA service names, unique within their container."""
    ports: list[ContainerPort] = []
    for c in containers:
        c = _mapping(c, "spec.containers[]")
        names: set[str] = set()
        for p in _list(c.get("ports"), "spec.containers[].ports"):
            p = _mapping(p, "spec.containers[].ports[]")
            number = _port_number(p.get("containerPort"), "containerPort")
            name = _short_string(p.get("name"), f"containerPort {number} name", limit=15)
            if name:
                why = _port_name_problem(name)
                if why is not None:
                    raise InvalidObject(f"containerPort {number} name {name!r} is not a valid port name ({why})")
                if name in names:
                    raise InvalidObject(f"container port name {name!r} is used twice in one container")
                names.add(name)
            protocol = _protocol(p.get("protocol"), f"containerPort {number} protocol")
            ports.append(ContainerPort(port=number, name=name, protocol=protocol))
    return ports


def workload_from(obj: Mapping[str, Any]) -> Workload:
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _name(meta, max_len=253, label=False)
    namespace = _namespace(meta)
    spec = _mapping(obj.get("spec"), "spec")
    status = _mapping(obj.get("status"), "status")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise InvalidObject("spec.containers is missing or empty")
    ports = _container_ports(containers)
    ips: list[str] = []
    for entry in _list(status.get("podIPs"), "status.podIPs"):
        entry = _mapping(entry, "status.podIPs[]")
        if entry.get("ip"):
            ips.append(_ip(entry["ip"], "status.podIPs[].ip"))
    if status.get("podIP"):
        primary = _ip(status["podIP"], "status.podIP")
        if primary not in ips:
            ips.insert(0, primary)
    ready = False
    for cond in _list(status.get("conditions"), "status.conditions"):
        cond = _mapping(cond, "status.conditions[]")
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    if not isinstance(sa, str) or len(sa) > 253 or not _DNS_SUBDOMAIN.fullmatch(sa):
        raise InvalidObject(f"spec.serviceAccountName {brief(sa)} is not a valid name")
    node_name = spec.get("nodeName")
    if node_name and (not isinstance(node_name, str) or len(node_name) > 253 or not _DNS_SUBDOMAIN.fullmatch(node_name)):
        raise InvalidObject(f"spec.nodeName {brief(node_name)} is not a valid node name")
    created = meta.get("creationTimestamp")  # YAML reads an unquoted timestamp as a datetime
    return Workload(
        name=name,
        namespace=namespace,
        uid=_short_string(meta.get("uid"), "metadata.uid", limit=128),
        ips=tuple(ips),
        node_name=node_name or None,
        service_account=sa,
        labels=_labels(meta.get("labels"), "metadata.labels"),
        ports=tuple(ports),
        host_network=_bool(spec.get("hostNetwork"), "spec.hostNetwork"),
        phase=_short_string(status.get("phase"), "status.phase", limit=32, default="Pending"),
        ready=ready,
        terminating=bool(meta.get("deletionTimestamp")),
        created=str(created) if isinstance(created, (datetime.date, datetime.datetime)) else _short_string(
            created, "metadata.creationTimestamp", limit=64
        ),
    )


def _service_ports(raw: Any) -> list[ServicePort]:
    """Service ports as Kubernetes validates them. Generated resource names are built from port
    names, so what Kubernetes would refuse here (two ports named alike, an unnamed port beside
    another) would otherwise become two filter chains of one name, and Envoy would refuse the
    whole listener, on every node."""
    entries = _list(raw, "spec.ports")
    ports: list[ServicePort] = []
    seen: set[tuple[int, str]] = set()
    names: set[str] = set()
    for i, p in enumerate(entries):
        p = _mapping(p, "spec.ports[]")
        number = _port_number(p.get("port"), "spec.ports[].port")
        port_name = _short_string(p.get("name"), f"spec.ports[{i}].name", limit=63)
        if not port_name and len(entries) > 1:
            raise InvalidObject(f"spec.ports[{i}] (port {number}) has no name: every port must be named when there are several")
        if port_name:
            if not _DNS_LABEL.fullmatch(port_name):
                raise InvalidObject(f"spec.ports[{i}].name {port_name!r} is not a valid port name (RFC 1123 label)")
            if port_name in names:
                raise InvalidObject(f"spec.ports[{i}].name {port_name!r} is used by two ports")
            names.add(port_name)
        protocol = _protocol(p.get("protocol"), f"spec.ports[{i}].protocol")
        if (number, protocol) in seen:
            raise InvalidObject(f"port {number}/{protocol} is listed twice")
        seen.add((number, protocol))
        target = p.get("targetPort", number)
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if target == 0:  # Kubernetes defaults an unset (zero) targetPort to the port
            target = number
        if isinstance(target, int):
            target = _port_number(target, "spec.ports[].targetPort")
        elif not isinstance(target, str) or not target:
            raise InvalidObject(f"spec.ports[].targetPort {brief(target)} is neither a number nor a name")
        else:
            why = _port_name_problem(target)
            if why is not None:
                raise InvalidObject(f"spec.ports[{i}].targetPort {brief(target)} is not a valid port name ({why})")
        ports.append(ServicePort(port=number, target_port=target, name=port_name, protocol=protocol))
    return ports


def service_from(obj: Mapping[str, Any]) -> Service:
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _name(meta, max_len=63, label=True)
    namespace = _namespace(meta)
    spec = _mapping(obj.get("spec"), "spec")
    svc_type = spec.get("type") or "ClusterIP"
    if svc_type == "ExternalName":
        raise InvalidObject("type ExternalName has no endpoints for ztunnel to reach")
    raw_ips = _list(spec.get("clusterIPs"), "spec.clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    headless = any(ip == "None" for ip in raw_ips)
    cluster_ips = () if headless else tuple(_ip(ip, "spec.clusterIP") for ip in raw_ips)
    ports = _service_ports(spec.get("ports"))
    selector = spec.get("selector")
    internal_policy = spec.get("internalTrafficPolicy") or "Cluster"
    if internal_policy not in ("Cluster", "Local"):
        raise InvalidObject(f"spec.internalTrafficPolicy {brief(internal_policy)} is neither Cluster nor Local")
    return Service(
        name=name,
        namespace=namespace,
        cluster_ips=cluster_ips,
        ports=tuple(ports),
        selector=_labels(selector, "spec.selector") if selector else None,
        headless=headless,
        publish_not_ready=_bool(spec.get("publishNotReadyAddresses"), "spec.publishNotReadyAddresses"),
        node_local=internal_policy == "Local",
    )


# -- EndpointSlice (discovery.k8s.io/v1), with the API server's own limits ----------------------

ENDPOINT_SLICE_API = "discovery.k8s.io/v1"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
MAX_SLICE_ENDPOINTS = 1000
MAX_ENDPOINT_ADDRESSES = 100
MAX_SLICE_PORTS = 100


def _slice_address(value: Any, address_type: str, what: str) -> str:
    if address_type == "FQDN":
        if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
            raise InvalidObject(f"{what} {brief(value)} is not a domain name")
        return value
    if not isinstance(value, str):
        raise InvalidObject(f"{what} {brief(value)} is not an IP address")
    ip = _ip(value, what)
    if f"IPv{ipaddress.ip_address(ip).version}" != address_type:
        raise InvalidObject(f"{what} {ip} is not an {address_type} address (the slice's addressType)")
    return ip


def _slice_endpoint(raw: Any, address_type: str, i: int) -> SliceEndpoint:
    what = f"endpoints[{i}]"
    ep = _mapping(raw, what)
    addresses = _list(ep.get("addresses"), f"{what}.addresses", MAX_ENDPOINT_ADDRESSES)
    if not addresses:
        raise InvalidObject(f"{what}.addresses is missing or empty")
    conditions = _mapping(ep.get("conditions"), f"{what}.conditions")
    # The API's defaults: an unknown ready is ready, serving follows ready, terminating is false.
    ready = _bool(conditions.get("ready"), f"{what}.conditions.ready", default=True)
    node_name = ep.get("nodeName")
    if node_name is not None and (not isinstance(node_name, str) or len(node_name) > 253
                                  or not _DNS_SUBDOMAIN.fullmatch(node_name)):
        raise InvalidObject(f"{what}.nodeName {brief(node_name)} is not a node name")
    zone = ep.get("zone") or ""
    if not isinstance(zone, str) or len(zone) > 63:
        raise InvalidObject(f"{what}.zone {brief(zone)} is not a zone name (at most 63 characters)")
    return SliceEndpoint(
        addresses=tuple(_slice_address(a, address_type, f"{what}.addresses[]") for a in addresses),
        ready=ready,
        serving=_bool(conditions.get("serving"), f"{what}.conditions.serving", default=ready),
        terminating=_bool(conditions.get("terminating"), f"{what}.conditions.terminating"),
        node_name=node_name or None,
        zone=zone,
    )


def _slice_port(raw: Any, i: int, seen: set[str]) -> SlicePort:
    what = f"ports[{i}]"
    p = _mapping(raw, what)
    name = p.get("name") or ""
    if not isinstance(name, str) or (name and (len(name) > 63 or not _DNS_LABEL.fullmatch(name))):
        raise InvalidObject(f"{what}.name {brief(name)} is not a valid port name (RFC 1123 label)")
    if name in seen:
        raise InvalidObject(f"{what}.name {name!r} is listed twice")
    seen.add(name)
    number = p.get("port")
    protocol = _protocol(p.get("protocol"), f"{what}.protocol")
    return SlicePort(
        port=None if number is None else _port_number(number, f"{what}.port"), name=name, protocol=protocol
    )


def endpoint_slice_from(obj: Mapping[str, Any]) -> EndpointSlice:
    api_version = obj.get("apiVersion")
    if api_version is not None and api_version != ENDPOINT_SLICE_API:
        raise InvalidObject(f"apiVersion {brief(api_version)}: only {ENDPOINT_SLICE_API} EndpointSlices are read")
    meta = _mapping(obj.get("metadata"), "metadata")
    name = _name(meta, max_len=253, label=False)
    namespace = _namespace(meta)
    service_name = _labels(meta.get("labels"), "metadata.labels").get(SERVICE_NAME_LABEL, "")
    if service_name and (len(service_name) > 63 or not _DNS_LABEL.fullmatch(service_name)):
        raise InvalidObject(f"label {SERVICE_NAME_LABEL} {brief(service_name)} is not a Service name")
    address_type = obj.get("addressType")
    if address_type not in ADDRESS_TYPES:
        raise InvalidObject(f"addressType {brief(address_type)} is not one of {', '.join(ADDRESS_TYPES)}")
    endpoints = _list(obj.get("endpoints"), "endpoints", MAX_SLICE_ENDPOINTS)
    seen: set[str] = set()
    return EndpointSlice(
        name=name,
        namespace=namespace,
        service_name=service_name,
        address_type=address_type,
        endpoints=tuple(_slice_endpoint(ep, address_type, i) for i, ep in enumerate(endpoints)),
        ports=tuple(_slice_port(p, i, seen) for i, p in enumerate(_list(obj.get("ports"), "ports", MAX_SLICE_PORTS))),
    )


#: kind -> converter; the kinds zpilot reads.
CONVERTERS: dict[str, Callable[[Mapping[str, Any]], ModelObject]] = {
    "Node": node_from,
    "Namespace": namespace_from,
    "ServiceAccount": service_account_from,
    "Pod": workload_from,
    "Service": service_from,
    "EndpointSlice": endpoint_slice_from,
}


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` for messages, from whatever the object has (each part cut short)."""
    kind = obj.get("kind")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    name = meta.get("name", "?")
    ns = meta.get("namespace")
    where = f"{clip(ns, 63)}/" if isinstance(ns, str) and ns else ""
    return f"{clip(kind, 60) if isinstance(kind, str) else '?'} {where}{clip(name) if isinstance(name, str) else brief(name, 60)}"

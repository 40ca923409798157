"""What the real API server fills in and checks on write, per kind, so objects read back look like a cluster's.

Clients depend on these defaults (a Service port always has a ``protocol`` and a ``targetPort``, a Pod always
has ``spec.serviceAccountName``), so a test server that skipped them would hide bugs a real cluster exposes.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Any

from .errors import ApiError, invalid

Obj = dict[str, Any]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Kinds whose names must be DNS-1123 labels (the rest: subdomains).
LABEL_NAMED = {"Namespace", "Service"}


def check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise invalid(kind, "", "metadata.name", "Required value: name or generateName is required")
    pattern, limit = (_DNS_LABEL, 63) if kind in LABEL_NAMED else (_DNS_SUBDOMAIN, 253)
    if len(name) > limit or not pattern.match(name):
        raise invalid(kind, name[:100], "metadata.name",
                      f"Invalid value: {name[:100]!r}: a lowercase RFC 1123 {'label' if limit == 63 else 'subdomain'} "
                      f"must consist of lower case alphanumeric characters, '-' or '.' (at most {limit} characters)")
    return name


def _ports_protocol(ports: Any) -> None:
    for p in ports or ():
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")


def default_pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    name = obj["metadata"]["name"]
    if not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise invalid("Pod", name, "spec.containers", "Required value")
    for c in spec["containers"]:
        if not isinstance(c, dict) or not c.get("name"):
            raise invalid("Pod", name, "spec.containers[].name", "Required value")
        _ports_protocol(c.get("ports"))
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "IfNotPresent")
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = sa
    spec["serviceAccount"] = sa
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("enableServiceLinks", True)
    obj.setdefault("status", {}).setdefault("phase", "Pending")


class ClusterIPs:
    """The Service IP range: allocation of free addresses and the checks on requested ones."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr)

    def assign(self, svc: Obj, in_use: set[str]) -> None:
        spec = svc["spec"]
        name = svc["metadata"]["name"]
        ips = list(spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []))
        if spec.get("type") == "ExternalName":
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
            return
        if not ips:
            ips = [self._free(in_use, name)]
        if ips != ["None"]:
            for ip in ips:
                try:
                    addr = ipaddress.ip_address(ip)
                except ValueError:
                    raise invalid("Service", name, "spec.clusterIPs", f"Invalid value: {str(ip)[:64]!r}: must be a valid IP address") from None
                if addr not in self.network:
                    raise invalid("Service", name, "spec.clusterIPs",
                                  f"Invalid value: {ip!r}: failed to allocate IP {ip}: provided IP is not in the valid range. "
                                  f"The range of valid IPs is {self.network}")
                if ip in in_use:
                    raise invalid("Service", name, "spec.clusterIPs",
                                  f"Invalid value: {ip!r}: failed to allocate IP {ip}: provided IP is already allocated")
        spec["clusterIP"] = ips[0]
        spec["clusterIPs"] = ips
        if ips != ["None"]:
            spec.setdefault("ipFamilies", ["IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4" for ip in ips])
        else:
            spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")

    def _free(self, in_use: set[str], name: str) -> str:
        for offset, addr in enumerate(self.network.hosts()):
            if offset >= 9 and str(addr) not in in_use:  # low addresses are left for the well-known services
                return str(addr)
        raise ApiError(500, f'failed to allocate a serviceIP for service "{name}": range is full')


def default_service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    name = obj["metadata"]["name"]
    for p in spec.get("ports") or ():
        if not isinstance(p, dict) or not isinstance(p.get("port"), int) or not 0 < p["port"] < 65536:
            raise invalid("Service", name, "spec.ports[].port", "must be between 1 and 65535, inclusive")
        p.setdefault("protocol", "TCP")
        p.setdefault("targetPort", p["port"])
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def default_namespace(obj: Obj) -> None:
    meta = obj["metadata"]
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def default_secret(obj: Obj) -> None:
    """``stringData`` is merged into ``data`` (base64), and ``data`` must be valid base64, as on a real server."""
    name = obj["metadata"]["name"]
    obj.setdefault("type", "Opaque")
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        raise ApiError(400, f'Secret "{name}": data must be a map of base64 strings')
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data in data[{key[:100]!r}]') from None
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data


def default_endpoint_slice(obj: Obj) -> None:
    name = obj["metadata"]["name"]
    if obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
        raise invalid("EndpointSlice", name, "addressType", "Unsupported value: must be IPv4, IPv6 or FQDN")
    if not isinstance(obj.get("endpoints"), list):
        obj["endpoints"] = []
    for ep in obj["endpoints"]:
        if not isinstance(ep, dict) or not ep.get("addresses"):
            raise invalid("EndpointSlice", name, "endpoints[].addresses", "Required value")
    _ports_protocol(obj.get("ports"))


def default_crd(obj: Obj) -> None:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    name = obj["metadata"]["name"]
    if not spec.get("group") or not names.get("plural") or not names.get("kind") or not spec.get("versions"):
        raise invalid("CustomResourceDefinition", name, "spec", "group, names.plural, names.kind and versions are required")
    if name != f"{names['plural']}.{spec['group']}":
        raise invalid("CustomResourceDefinition", name, "metadata.name", "must be spec.names.plural+\".\"+spec.group")
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("scope", "Namespaced")
    obj["status"] = {
        "acceptedNames": dict(names),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
             "lastTransitionTime": obj["metadata"]["creationTimestamp"]},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": obj["metadata"]["creationTimestamp"]},
        ],
        "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
    }


DEFAULTERS = {
    "Pod": default_pod,
    "Service": default_service,
    "Namespace": default_namespace,
    "Secret": default_secret,
    "EndpointSlice": default_endpoint_slice,
    "CustomResourceDefinition": default_crd,
}

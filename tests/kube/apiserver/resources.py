"""Which resources the server serves, under which URL, and the discovery documents that announce them.

Built-in types are always served. A custom resource is served only while its CustomResourceDefinition exists
(``Registry.add_crd`` / ``remove_crd``, driven by writes to ``customresourcedefinitions``), so a client sees the
group/version 404 before the CRD is installed and the resources appear in discovery afterwards.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

LIST_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    #: Has a ``/status`` subresource: a PUT of the main resource keeps the stored status, ``/status`` changes only it.
    status_subresource: bool = False
    #: Stored and listable/watchable (TokenReview is create-only and never stored).
    stored: bool = True
    custom: bool = False
    verbs: tuple[str, ...] = LIST_VERBS
    #: Field-selector labels beyond metadata.name/metadata.namespace, as the real server's field sets.
    field_labels: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The storage key: one per group and plural, shared by every served version (as in etcd)."""
        return f"{self.group}/{self.plural}"

    @property
    def qualified(self) -> str:
        """``plural.group`` (plain ``plural`` for the core group): RBAC's and kubectl's name for it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


POD_FIELDS = (
    "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork",
    "status.phase", "status.podIP", "status.nominatedNodeName",
)

BUILTIN: tuple[ResourceType, ...] = (
    ResourceType("", ("v1",), "pods", "pod", "Pod", True, ("po",), status_subresource=True, field_labels=POD_FIELDS),
    ResourceType("", ("v1",), "services", "service", "Service", True, ("svc",), status_subresource=True),
    ResourceType("", ("v1",), "serviceaccounts", "serviceaccount", "ServiceAccount", True, ("sa",)),
    ResourceType("", ("v1",), "namespaces", "namespace", "Namespace", False, ("ns",), status_subresource=True,
                 field_labels=("status.phase",)),
    ResourceType("", ("v1",), "nodes", "node", "Node", False, ("no",), status_subresource=True,
                 field_labels=("spec.unschedulable",)),
    ResourceType("", ("v1",), "secrets", "secret", "Secret", True, field_labels=("type",)),
    ResourceType("", ("v1",), "configmaps", "configmap", "ConfigMap", True, ("cm",)),
    ResourceType("apps", ("v1",), "daemonsets", "daemonset", "DaemonSet", True, ("ds",), status_subresource=True),
    ResourceType("discovery.k8s.io", ("v1",), "endpointslices", "endpointslice", "EndpointSlice", True,
                 field_labels=("addressType",)),
    ResourceType("authentication.k8s.io", ("v1",), "tokenreviews", "tokenreview", "TokenReview", False,
                 stored=False, verbs=("create",)),
    ResourceType("apiextensions.k8s.io", ("v1",), "customresourcedefinitions", "customresourcedefinition",
                 "CustomResourceDefinition", False, ("crd", "crds"), status_subresource=True),
)


def crd_resource_type(crd: Mapping[str, Any]) -> ResourceType:
    """The type a CustomResourceDefinition object declares (only its served versions)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    versions = tuple(v["name"] for v in spec.get("versions") or () if v.get("served", True))
    storage_first = sorted(versions, key=lambda v: not any(
        x.get("name") == v and x.get("storage") for x in spec.get("versions") or ()))
    return ResourceType(
        group=spec["group"],
        versions=tuple(storage_first),
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        status_subresource=any("status" in (v.get("subresources") or {}) for v in spec.get("versions") or ()),
        custom=True,
    )


@dataclass
class Registry:
    """The served types, looked up by URL (group, version, plural) or by kind."""

    _types: dict[str, ResourceType] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        for t in BUILTIN:
            self._types[t.key] = t

    def add_crd(self, crd: Mapping[str, Any]) -> ResourceType:
        t = crd_resource_type(crd)
        with self._lock:
            self._types[t.key] = t
        return t

    def remove_crd(self, crd: Mapping[str, Any]) -> ResourceType | None:
        spec = crd.get("spec") or {}
        with self._lock:
            return self._types.pop(f"{spec.get('group')}/{(spec.get('names') or {}).get('plural')}", None)

    def all(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        t = self._types.get(f"{group}/{plural}")
        return t if t is not None and version in t.versions else None

    def by_key(self, key: str) -> ResourceType | None:
        return self._types.get(key)

    def for_object(self, obj: Mapping[str, Any]) -> ResourceType:
        """The type of a manifest, from its apiVersion and kind."""
        api_version = str(obj.get("apiVersion") or "")
        group, _, version = api_version.rpartition("/")
        kind = obj.get("kind")
        for t in self.all():
            if t.kind == kind and t.group == group and version in t.versions:
                return t
        raise KeyError(f"no served resource for apiVersion {api_version!r} kind {kind!r}")

    def find(self, name: str) -> ResourceType:
        """By kind, plural, ``plural.group``, singular or short name, as kubectl resolves them."""
        lowered = name.lower()
        for t in self.all():
            if name == t.kind or lowered in (t.plural, t.singular, t.qualified) or lowered in t.short_names:
                return t
        raise KeyError(f"no served resource named {name!r}")

    def served_groups(self) -> dict[str, list[str]]:
        """group -> served versions, preferred first."""
        groups: dict[str, list[str]] = {}
        for t in self.all():
            for v in t.versions:
                versions = groups.setdefault(t.group, [])
                if v not in versions:
                    versions.append(v)
        return groups

    # -- discovery documents -------------------------------------------------------------------------------

    def api_versions(self, server_address: str) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self.served_groups().get(group)
        if not versions or not group:
            return None
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries, "preferredVersion": entries[0]}

    def api_group_list(self) -> dict[str, Any]:
        groups = [self.api_group(g) for g in sorted(self.served_groups()) if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [g for g in groups if g]}

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        types = [t for t in self.all() if t.group == group and version in t.versions]
        if not types:
            return None
        resources: list[dict[str, Any]] = []
        for t in sorted(types, key=lambda t: t.plural):
            entry: dict[str, Any] = {
                "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
                "verbs": list(t.verbs),
            }
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            resources.append(entry)
            if t.status_subresource:
                resources.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced,
                                  "kind": t.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}


def matches_permission(allowed: Iterable[tuple[str, str]], verb: str, t: ResourceType, subresource: str | None) -> bool:
    """RBAC-like check: an entry (verb, resource) grants when both match; ``*`` matches anything.

    The resource may be given as ``plural`` or ``plural.group`` (``endpointslices.discovery.k8s.io``), with
    ``/subresource`` appended for subresources (``pods/status``).
    """
    names = {t.plural, t.qualified}
    if subresource:
        names = {f"{n}/{subresource}" for n in names}
    for v, r in allowed:
        if v in ("*", verb) and (r == "*" or r in names):
            return True
    return False

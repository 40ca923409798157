"""What the API watch reads, as data: one entry per kind, and the access the watch needs, derived.

Adding a kind to the watch is one :data:`RESOURCES` entry: its API group, version and plural. A
kind is watched only once :data:`SOURCE_CONVERTERS` (the converters the manifest source uses too)
has a converter for it, so an entry may land before its converter does.

The access the watch needs (:data:`API_ACCESS` for ``zpilot serve``, :data:`NODE_AGENT_API_ACCESS`
for the CNI agent) is derived from the same entries, so the RBAC documented in the README (and
the Helm chart's, later) can be checked against, or generated from, exactly what the code calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from .convert_policy import KIND_CONVERTERS

#: kind -> converter for the API watch: the manifest source's mapping (manifests.py looks kinds up in
#: the same one), so a kind means the same wherever it is read.
SOURCE_CONVERTERS = KIND_CONVERTERS

#: The verbs the watch uses on every resource it reads: a LIST, then a WATCH from its resourceVersion.
WATCH_VERBS = ("list", "watch")


@dataclass(frozen=True)
class ApiResource:
    """One kind as the API serves it."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool
    #: Served only while a CustomResourceDefinition installs it: absent is normal (logged once, and
    #: discovery is polled until it appears), not a failure.
    optional: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural`` or ``plural.group``, as RBAC and ``kubectl get`` name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def collection_path(self) -> str:
        """The cluster-wide collection (every namespace, for namespaced kinds)."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/{self.plural}"

    @property
    def discovery_path(self) -> str:
        """The group/version's resource list (absent while an optional kind's CRD is not installed)."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


#: Every kind zpilot knows where to find; watched once it has a converter.
RESOURCES: tuple[ApiResource, ...] = (
    ApiResource("Namespace", "", "v1", "namespaces", namespaced=False),
    ApiResource("Node", "", "v1", "nodes", namespaced=False),
    ApiResource("ServiceAccount", "", "v1", "serviceaccounts", namespaced=True),
    ApiResource("Pod", "", "v1", "pods", namespaced=True),
    ApiResource("Service", "", "v1", "services", namespaced=True),
    ApiResource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", namespaced=True),
    ApiResource("AuthorizationPolicy", "security.istio.io", "v1", "authorizationpolicies", namespaced=True,
                optional=True),
    ApiResource("PeerAuthentication", "security.istio.io", "v1", "peerauthentications", namespaced=True,
                optional=True),
)


@dataclass(frozen=True)
class WatchSpec:
    """One resource to list and watch, maybe narrowed by a field selector (the CNI agent's own node)."""

    resource: ApiResource
    field_selector: str | None = None

    def __str__(self) -> str:
        where = f" ({self.field_selector})" if self.field_selector else ""
        return f"{self.resource.qualified}{where}"


def watched(converters: Mapping[str, object] = SOURCE_CONVERTERS) -> tuple[ApiResource, ...]:
    """The resources with a converter (the others wait for theirs)."""
    return tuple(r for r in RESOURCES if r.kind in converters)


def _by_kind(kind: str) -> ApiResource:
    return next(r for r in RESOURCES if r.kind == kind)


def control_plane_watches(converters: Mapping[str, object] = SOURCE_CONVERTERS) -> tuple[WatchSpec, ...]:
    """What ``zpilot serve`` reads: every watched kind, cluster-wide."""
    return tuple(WatchSpec(r) for r in watched(converters))


#: What a node's plan is built from (zpilot/cni/plan.py): its Node, the namespaces (enrollment), and
#: the pods on the node (the meshed ones and the node's ztunnel, which runs there too).
NODE_AGENT_KINDS = ("Namespace", "Node", "Pod")


def node_agent_watches(node: str) -> tuple[WatchSpec, ...]:
    """What the CNI agent of ``node`` reads: its own Node and pods only (field selectors), every namespace."""
    selectors = {"Node": f"metadata.name={node}", "Pod": f"spec.nodeName={node}"}
    return tuple(WatchSpec(_by_kind(kind), selectors.get(kind)) for kind in NODE_AGENT_KINDS)


def api_access(watches: Iterable[WatchSpec]) -> tuple[tuple[str, str, str], ...]:
    """(verb, API group, resource) of every request the watch makes for ``watches``, sorted."""
    return tuple(sorted({(verb, w.resource.group, w.resource.plural) for w in watches for verb in WATCH_VERBS}))


#: Every (verb, group, resource) ``zpilot serve`` calls on the API server.
API_ACCESS = api_access(control_plane_watches())
#: Every (verb, group, resource) the CNI agent (``zpilot cni run``) calls on the API server.
NODE_AGENT_API_ACCESS = api_access(node_agent_watches("any"))


def rbac_rules(access: Iterable[tuple[str, str, str]]) -> list[dict[str, list[str]]]:
    """``access`` as ClusterRole rules: one per API group and verb set, resources sorted."""
    by_resource: dict[tuple[str, str], set[str]] = {}
    for verb, group, resource in access:
        by_resource.setdefault((group, resource), set()).add(verb)
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, resource), verbs in sorted(by_resource.items()):
        grouped.setdefault((group, tuple(sorted(verbs))), []).append(resource)
    return [{"apiGroups": [group], "resources": resources, "verbs": list(verbs)}
            for (group, verbs), resources in sorted(grouped.items())]

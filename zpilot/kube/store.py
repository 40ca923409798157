"""The set of known objects, keyed like the API server keys them, turned into a model snapshot.

Sources (manifest directory, API watch) add and remove converted objects here; consumers take
an immutable :class:`~zpilot.model.objects.Cluster` from :meth:`ObjectStore.snapshot`.
"""

from __future__ import annotations

from typing import Iterable

from ..model.objects import Cluster, EndpointSlice, Namespace, Node, Service, ServiceAccount, Workload
from ..model.problems import Problems
from ..model.policy import AuthorizationPolicy, PeerAuthentication
from .convert import ModelObject

Key = tuple[str, str, str]  # kind, namespace ("" for cluster-scoped), name

#: model type -> the Kubernetes kind it is keyed under
KINDS: dict[type, str] = {
    Node: "Node",
    Namespace: "Namespace",
    ServiceAccount: "ServiceAccount",
    Workload: "Pod",
    Service: "Service",
    EndpointSlice: "EndpointSlice",
    AuthorizationPolicy: "AuthorizationPolicy",
    PeerAuthentication: "PeerAuthentication",
}


def key_of(obj: ModelObject) -> Key:
    kind = KINDS[type(obj)]
    return kind, getattr(obj, "namespace", "") if kind not in ("Node", "Namespace") else "", obj.name


class ObjectStore:
    def __init__(self) -> None:
        self._objects: dict[Key, ModelObject] = {}

    def __contains__(self, key: Key) -> bool:
        return key in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, key: Key) -> ModelObject | None:
        return self._objects.get(key)

    def put(self, obj: ModelObject) -> bool:
        """Store ``obj``; True when this changed what is stored."""
        key = key_of(obj)
        if self._objects.get(key) == obj:
            return False
        self._objects[key] = obj
        return True

    def remove(self, key: Key) -> bool:
        return self._objects.pop(key, None) is not None

    def keys(self, kind: str | None = None) -> list[Key]:
        return [k for k in self._objects if kind is None or k[0] == kind]

    def snapshot(self) -> Cluster:
        by_kind: dict[type, list[ModelObject]] = {}
        for key in sorted(self._objects):
            obj = self._objects[key]
            by_kind.setdefault(type(obj), []).append(obj)
        return Cluster(
            nodes=tuple(by_kind.get(Node, ())),  # type: ignore[arg-type]
            namespaces=tuple(by_kind.get(Namespace, ())),  # type: ignore[arg-type]
            service_accounts=tuple(by_kind.get(ServiceAccount, ())),  # type: ignore[arg-type]
            workloads=tuple(by_kind.get(Workload, ())),  # type: ignore[arg-type]
            services=tuple(by_kind.get(Service, ())),  # type: ignore[arg-type]
            endpoint_slices=tuple(by_kind.get(EndpointSlice, ())),  # type: ignore[arg-type]
            authorization_policies=tuple(by_kind.get(AuthorizationPolicy, ())),  # type: ignore[arg-type]
            peer_authentications=tuple(by_kind.get(PeerAuthentication, ())),  # type: ignore[arg-type]
        )


def merge(objects: Iterable[tuple[str, ModelObject]], problems: Problems) -> Cluster:
    """One cluster from objects read in several places (``where`` each was read, in order).

    Two objects with the same key are the same API object written twice: the first one read
    wins, every later one is reported as a duplicate naming where the first came from.
    """
    store = ObjectStore()
    first_seen: dict[Key, str] = {}
    for where, obj in objects:
        key = key_of(obj)
        if key in first_seen:
            problems.error(obj.ref, f"duplicate of {first_seen[key]}: skipped", where=where)
            continue
        first_seen[key] = where
        store.put(obj)
    return store.snapshot()

"""The EndpointSlice controller, as kube-controller-manager runs it, so Services with a selector have slices.

A real cluster's clients see an EndpointSlice for every selector Service (even with no pods: a placeholder
with no endpoints), updated as pods come, become ready, terminate and go. This runs synchronously inside the
write that triggers it (under the store's lock), so a test that creates a pod finds the slice already updated.
Pods are grouped by the ports they resolve to (a named ``targetPort`` may map to different numbers in
different pods), one slice per group and address family, like the real controller. Selector-less Services are
left alone: their slices are written by whoever owns them (tests, or the API server for ``kubernetes``).
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from .cluster import Cluster
from .store import Change, Obj

MANAGED_BY = "endpointslice-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
ZONE = "topology.kubernetes.io/zone"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _selector_matches(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


def _find_port(pod: Obj, svc_port: dict[str, Any]) -> int | None:
    target = svc_port.get("targetPort", svc_port["port"])
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for container in (pod.get("spec") or {}).get("containers") or ():
        for p in container.get("ports") or ():
            if p.get("name") == target and p.get("protocol", "TCP") == svc_port.get("protocol", "TCP"):
                return p["containerPort"] if isinstance(p.get("containerPort"), int) else None
    return None


def _family(ip: str) -> int | None:
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:  # a malformed podIP: the real controller skips such an address too
        return None


def _suffix(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:5])


class EndpointSliceController:
    """Keeps indexes (pods by namespace and label, managed slices by Service) so that a write costs what it
    touches, not the size of the cluster: scale tests seed thousands of pods through it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.pods = cluster.resource("pods")
        self.services = cluster.resource("services")
        self.slices = cluster.resource("endpointslices")
        self._pods_by_label: dict[tuple[str, str, str], set[str]] = {}
        self._slices_by_service: dict[tuple[str, str], set[str]] = {}
        self._services_by_selector: dict[tuple[str, str, str], set[str]] = {}
        with cluster.store.lock:
            for svc in cluster.store.items(self.services.key):
                self._index_service(svc, add=True)
            for pod in cluster.store.items(self.pods.key):
                self._index_pod(pod, add=True)
            for es in cluster.store.items(self.slices.key):
                self._index_slice(es, add=True)

    def _index_pod(self, pod: Obj, *, add: bool) -> None:
        meta = pod["metadata"]
        for k, v in (meta.get("labels") or {}).items():
            names = self._pods_by_label.setdefault((meta["namespace"], k, v), set())
            if add:
                names.add(meta["name"])
            else:
                names.discard(meta["name"])

    def _index_service(self, svc: Obj, *, add: bool) -> None:
        meta = svc["metadata"]
        for k, v in ((svc.get("spec") or {}).get("selector") or {}).items():
            names = self._services_by_selector.setdefault((meta["namespace"], k, v), set())
            if add:
                names.add(meta["name"])
            else:
                names.discard(meta["name"])

    def _index_slice(self, es: Obj, *, add: bool) -> None:
        meta = es["metadata"]
        labels = meta.get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or SERVICE_NAME not in labels:
            return
        names = self._slices_by_service.setdefault((meta["namespace"], labels[SERVICE_NAME]), set())
        if add:
            names.add(meta["name"])
        else:
            names.discard(meta["name"])

    def _selected_pods(self, namespace: str, selector: dict[str, str]) -> list[Obj]:
        sets = sorted((self._pods_by_label.get((namespace, k, v), set()) for k, v in selector.items()), key=len)
        names = set(sets[0]).intersection(*sets[1:]) if sets else set()
        store = self.cluster.store
        return [p for p in (store.get(self.pods.key, namespace, n) for n in sorted(names)) if p is not None]

    def on_change(self, change: Change) -> None:
        """The store's write hook: reconcile the Services a pod, service or node change can affect."""
        store = self.cluster.store
        for resource, index in ((self.pods.key, self._index_pod), (self.slices.key, self._index_slice),
                                (self.services.key, self._index_service)):
            if change.resource == resource:
                if change.prev is not None:
                    index(change.prev, add=False)
                if change.type != "DELETED":
                    index(change.obj, add=True)
        if change.resource == self.services.key:
            self.reconcile(change.namespace, change.name)
        elif change.resource == self.pods.key:
            candidates: set[str] = set()
            for pod in (change.obj, change.prev):
                for k, v in ((pod or {}).get("metadata", {}).get("labels") or {}).items():
                    candidates |= self._services_by_selector.get((change.namespace, k, v), set())
            for name in sorted(candidates):
                svc = store.get(self.services.key, change.namespace, name)
                selector = ((svc or {}).get("spec") or {}).get("selector")
                if selector and any(_selector_matches(selector, (o["metadata"].get("labels") if o else None))
                                    for o in (change.obj, change.prev)):
                    self.reconcile(change.namespace, name)
        elif change.resource == "/nodes":
            old_zone = ((change.prev or {}).get("metadata", {}).get("labels") or {}).get(ZONE)
            new_zone = (change.obj.get("metadata", {}).get("labels") or {}).get(ZONE)
            if old_zone != new_zone:
                for svc in store.items(self.services.key):
                    self.reconcile(svc["metadata"]["namespace"], svc["metadata"]["name"])

    def reconcile(self, namespace: str, name: str) -> None:
        store = self.cluster.store
        svc = store.get(self.services.key, namespace, name)
        existing = {n: s for n in sorted(self._slices_by_service.get((namespace, name), ()))
                    if (s := store.get(self.slices.key, namespace, n)) is not None}
        if svc is None:  # the garbage collector removes what the Service owned
            for slice_name in existing:
                self.cluster.delete(self.slices, namespace, slice_name)
            return
        spec = svc.get("spec") or {}
        if not spec.get("selector") or spec.get("type") == "ExternalName":
            return
        desired = self._desired(svc)
        for slice_name, body in desired.items():
            current = existing.get(slice_name)
            if current is None:
                self.cluster.create(self.slices, body, namespace)
            elif any(current.get(k) != body.get(k) for k in ("addressType", "endpoints", "ports")) or \
                    current["metadata"].get("labels") != body["metadata"]["labels"]:
                self.cluster.update(self.slices, {**body, "metadata": {**current["metadata"], "labels": body["metadata"]["labels"]}})
        for slice_name in set(existing) - set(desired):
            self.cluster.delete(self.slices, namespace, slice_name)

    def _desired(self, svc: Obj) -> dict[str, Obj]:
        meta, spec = svc["metadata"], svc["spec"]
        namespace, name = meta["namespace"], meta["name"]
        publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
        store = self.cluster.store
        families = spec.get("ipFamilies") or ["IPv4"]
        groups: dict[tuple[str, tuple[tuple[str, int, str], ...]], list[Obj]] = {}
        for pod in self._selected_pods(namespace, spec["selector"]):
            status = pod.get("status") or {}
            if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            ports = []
            for svc_port in spec.get("ports") or ():
                number = _find_port(pod, svc_port)
                if number is not None:
                    ports.append((svc_port.get("name", ""), number, svc_port.get("protocol", "TCP")))
            serving = _pod_ready(pod)
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            node_name = (pod.get("spec") or {}).get("nodeName")
            node = store.get("/nodes", "", node_name) if node_name else None
            ips = [e.get("ip") for e in status.get("podIPs") or () if e.get("ip")] or [status["podIP"]]
            for family in families:
                version = 6 if family == "IPv6" else 4
                addresses = [ip for ip in ips if _family(str(ip)) == version]
                if not addresses:
                    continue
                endpoint: Obj = {
                    "addresses": addresses[:1],
                    "conditions": {"ready": publish_not_ready or (serving and not terminating),
                                   "serving": serving, "terminating": terminating},
                    "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod["metadata"]["name"],
                                  "uid": pod["metadata"]["uid"]},
                }
                if node_name:
                    endpoint["nodeName"] = node_name
                zone = ((node or {}).get("metadata", {}).get("labels") or {}).get(ZONE)
                if zone:
                    endpoint["zone"] = zone
                groups.setdefault((family, tuple(ports)), []).append(endpoint)
        for family in families:  # a Service with no endpoints still has a (placeholder) slice per family
            if not any(f == family for f, _ in groups):
                groups[(family, ())] = []
        labels = {**(meta.get("labels") or {}), SERVICE_NAME: name, MANAGED_BY_LABEL: MANAGED_BY}
        if spec.get("clusterIP") == "None":
            labels["service.kubernetes.io/headless"] = ""
        desired: dict[str, Obj] = {}
        for (family, ports), endpoints in sorted(groups.items()):
            slice_name = f"{name[:57]}-{_suffix(f'{family}/{ports}')}"
            body: Obj = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name, "namespace": namespace, "labels": labels,
                    "generateName": f"{name[:57]}-",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta["uid"],
                                         "controller": True, "blockOwnerDeletion": True}],
                },
                "addressType": family,
                "endpoints": endpoints,
                "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports] if endpoints else None,
            }
            if body["ports"] is None:
                del body["ports"]
            desired[slice_name] = body
        return desired

"""The registry layer: the real server's semantics for create, update, patch, delete, get and list.

Both doors go through here: the HTTP handlers (``client=True``: the server assigns identity, refuses a stale
resourceVersion, keeps a Pod's status on a main-resource update, requires the namespace to exist) and the
Python API tests use to act as the cluster (``client=False``: a manifest's uid and creationTimestamp are kept,
so the article seeds with its own uids, and a whole object, status included, is written as a kubelet would).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import jsonpatch

from .defaults import DEFAULTERS, ClusterIPs, check_name
from .errors import ApiError, already_exists, conflict, not_found
from .resources import Registry, ResourceType
from .selectors import make_filter, parse_field_selector, parse_label_selector
from .store import Change, Obj, VersionedStore, plain

NAMESPACES = "/namespaces"
CRDS = "apiextensions.k8s.io/customresourcedefinitions"
#: Metadata only the server sets; a client's values are replaced (create) or ignored (update).
SERVER_OWNED = ("uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp",
                "deletionGracePeriodSeconds", "managedFields", "selfLink")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return plain(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True)
class ListResult:
    items: list[Obj]
    resource_version: int
    continue_token: str | None
    remaining: int | None


class Cluster:
    def __init__(self, *, service_cidr: str = "10.8.0.0/20", max_history: int = 100_000) -> None:
        self.store = VersionedStore(max_history)
        self.registry = Registry()
        self.cluster_ips = ClusterIPs(service_cidr)

    # -- naming --------------------------------------------------------------------------------------------

    def resource(self, what: str | Mapping[str, Any] | ResourceType) -> ResourceType:
        """A type from a name (``"Pod"``, ``"pods"``, ``"endpointslices.discovery.k8s.io"``) or an object."""
        if isinstance(what, ResourceType):
            return what
        try:
            return self.registry.for_object(what) if isinstance(what, Mapping) else self.registry.find(what)
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from None

    def _ns(self, t: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if t.namespaced else ""

    # -- reads ---------------------------------------------------------------------------------------------

    def get(self, t: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.store.get(t.key, self._ns(t, namespace), name)
        if obj is None:
            raise not_found(t.plural, name, t.group)
        return obj

    def list(self, t: ResourceType, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, resource_version: str | None = None,
             resource_version_match: str | None = None, limit: int | None = None,
             continue_token: str | None = None) -> ListResult:
        """LIST with the real server's resourceVersion semantics.

        Unset or ``NotOlderThan``: the current state (a version from the future is a 504, as the real server
        answers after its wait). ``Exact``: the state at that version, rebuilt from the history (410 if
        compacted). ``limit``/``continue`` page through one consistent snapshot, as etcd does.
        """
        matches = make_filter(parse_label_selector(label_selector),
                              parse_field_selector(field_selector, t.field_labels, t.kind))
        ns = namespace if t.namespaced else None
        start_after: tuple[str, str] | None = None
        with self.store.lock:
            current = self.store.rv
            if continue_token:
                at, start_after = self._decode_continue(continue_token)
                items = self._state(t, at, "The provided continue parameter is too old to display a consistent list result.")
            elif resource_version_match == "Exact":
                at = parse_rv(resource_version)
                if at > current:
                    raise too_large(at, current)
                items = self._state(t, at)
            elif resource_version_match not in (None, "", "NotOlderThan"):
                raise ApiError(400, f"resourceVersionMatch: Unsupported value: {resource_version_match[:50]!r}")
            else:
                asked = parse_rv(resource_version) if resource_version else 0
                if asked > current:
                    raise too_large(asked, current)
                at, items = current, self.store.items(t.key)
        items = [o for o in items if (ns is None or o["metadata"].get("namespace") == ns) and matches(o)]
        if start_after is not None:
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start_after]
        if limit and limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = base64.urlsafe_b64encode(json.dumps(
                {"rv": at, "start": [last.get("namespace", ""), last["name"]]}).encode()).decode()
            return ListResult(items[:limit], at, token, len(items) - limit)
        return ListResult(items, at, None, None)

    def _state(self, t: ResourceType, at: int, message: str | None = None) -> list[Obj]:
        try:
            return self.store.state_at(t.key, at)
        except ApiError as exc:
            if message:
                raise ApiError(410, message, "Expired") from exc
            raise

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
        try:
            decoded = json.loads(base64.urlsafe_b64decode(token.encode()[:4096]))
            return int(decoded["rv"]), (str(decoded["start"][0]), str(decoded["start"][1]))
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
            raise ApiError(400, "continue key is not valid: incorrect encoded start resourceVersion") from None

    # -- writes --------------------------------------------------------------------------------------------

    def create(self, t: ResourceType, obj: Mapping[str, Any], namespace: str | None = None, *, client: bool = False) -> Obj:
        if not t.stored or "create" not in t.verbs:
            raise ApiError(405, f"create is not supported on {t.qualified}")
        new = plain(dict(obj))
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{''.join(secrets.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"
        name = check_name(t.kind, meta.get("name"))
        ns = self._namespace_for(t, meta, namespace, client)
        if client and meta.get("resourceVersion"):
            raise ApiError(422, "resourceVersion should not be set on objects to be created", "Invalid")
        new["apiVersion"], new["kind"] = t.api_version(), t.kind
        for field_name in SERVER_OWNED:
            if client or field_name not in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(field_name, None)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        if t.custom:
            meta["generation"] = 1
        with self.store.lock:
            if client and t.namespaced and self.store.get("/namespaces", "", ns) is None:
                raise not_found("namespaces", ns)
            if self.store.get(t.key, ns, name) is not None:
                raise already_exists(t.plural, name, t.group)
            self._default(t, new, None)
            change = self.store.write("ADDED", t.key, ns, name, new)
            self._after_write(t, change)
            return change.obj

    def update(self, t: ResourceType, obj: Mapping[str, Any], namespace: str | None = None, *,
               subresource: str | None = None, client: bool = False) -> Obj:
        """PUT: optimistic concurrency on ``metadata.resourceVersion`` when given; a no-op is not a write."""
        new = plain(dict(obj))
        meta = new.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise ApiError(400, "metadata.name is required for an update")
        name = meta["name"]
        ns = self._namespace_for(t, meta, namespace, client)
        with self.store.lock:
            old = self.store.get(t.key, ns, name)
            if old is None:
                raise not_found(t.plural, name, t.group)
            wanted_rv = meta.get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise conflict(t.plural, name, t.group)
            if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
                raise ApiError(409, f"Precondition failed: UID in precondition: {old['metadata']['uid']}, "
                                    f"UID in object meta: {str(meta['uid'])[:64]}", "Conflict")
            if subresource == "status":
                new = {**plain(old), "status": new.get("status")}
            elif subresource is not None:
                raise ApiError(404, f"the server could not find the requested resource ({subresource})")
            elif client and t.status_subresource:
                new["status"] = plain(old.get("status"))
                if new["status"] is None:
                    new.pop("status")
            new["apiVersion"], new["kind"] = t.api_version(), t.kind
            meta = new["metadata"]
            # A client cannot touch server-owned metadata; the cluster itself (a test) may mark an object terminating.
            from_new = () if client else ("deletionTimestamp", "deletionGracePeriodSeconds")
            for field_name in SERVER_OWNED:
                if field_name in from_new:
                    continue
                if field_name in old["metadata"]:
                    meta[field_name] = old["metadata"][field_name]
                else:
                    meta.pop(field_name, None)
            if not t.namespaced:
                meta.pop("namespace", None)
            self._default(t, new, old)
            if t.custom and new.get("spec") != old.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                return old
            change = self.store.write("MODIFIED", t.key, ns, name, new)
            self._after_write(t, change)
            return change.obj

    def patch(self, t: ResourceType, namespace: str | None, name: str, body: Any, content_type: str, *,
              subresource: str | None = None) -> Obj:
        """PATCH as merge patch, strategic merge patch (lists replaced whole: no merge keys here) or JSON patch."""
        with self.store.lock:
            old = self.get(t, namespace, name)
            base = plain(old)
            if content_type == "application/json-patch+json":
                try:
                    patched = jsonpatch.apply_patch(base, body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
                    raise ApiError(422, f"the JSON patch could not be applied: {str(exc)[:200]}") from None
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if not isinstance(body, dict):
                    raise ApiError(400, "a merge patch must be a JSON object")
                patched = merge_patch(base, body)
            else:
                raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: "
                                    "application/json-patch+json, application/merge-patch+json, "
                                    "application/strategic-merge-patch+json")
            if not isinstance(patched, dict):
                raise ApiError(422, "the patched object is not a JSON object")
            patched.setdefault("metadata", {})["name"] = name
            if not (isinstance(body, dict) and (body.get("metadata") or {}).get("resourceVersion")):
                patched["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.update(t, patched, namespace, subresource=subresource, client=True)

    def delete(self, t: ResourceType, namespace: str | None, name: str, *,
               preconditions: Mapping[str, Any] | None = None) -> Obj:
        """Delete now (no kubelet here to finish a graceful delete); a Namespace or CRD takes its objects along."""
        ns = self._ns(t, namespace)
        with self.store.lock:
            old = self.get(t, ns, name)
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise ApiError(409, f"Precondition failed: UID in precondition: {str(pre['uid'])[:64]}, "
                                    f"UID in object meta: {old['metadata']['uid']}", "Conflict")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise conflict(t.plural, name, t.group)
            if t.key == NAMESPACES:
                for other in self.registry.all():
                    if other.namespaced and other.stored:
                        for obj in self.store.items(other.key, name):
                            self.delete(other, name, obj["metadata"]["name"])
            if t.key == CRDS:
                served = self.registry.by_key(f"{old['spec']['group']}/{old['spec']['names']['plural']}")
                if served is not None:
                    for obj in self.store.items(served.key):
                        self.delete(served, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                    self.store.close_subscriptions("end", [served.key])
                    self.registry.remove_crd(old)
            change = self.store.write("DELETED", t.key, ns, name, None)
            self._after_write(t, change)
            return change.obj

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        """Create, or replace what is there (kubectl apply's outcome, for seeding)."""
        t = self.resource(obj)
        meta = obj.get("metadata") or {}
        with self.store.lock:
            existing = self.store.get(t.key, self._ns(t, meta.get("namespace") or "default"), meta.get("name", ""))
            if existing is None:
                return self.create(t, obj)
            replaced = plain(dict(obj))
            replaced["metadata"] = {k: v for k, v in meta.items() if k != "resourceVersion"}
            return self.update(t, replaced)

    # -- helpers -------------------------------------------------------------------------------------------

    def _namespace_for(self, t: ResourceType, meta: dict[str, Any], path_ns: str | None, client: bool) -> str:
        if not t.namespaced:
            meta.pop("namespace", None)
            return ""
        body_ns = meta.get("namespace")
        if path_ns and body_ns and body_ns != path_ns:
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        ns = path_ns or body_ns or ("" if client else "default")
        if not ns:
            raise ApiError(400, "a namespace is required for a namespaced resource")
        meta["namespace"] = ns
        return ns

    def _default(self, t: ResourceType, new: Obj, old: Obj | None) -> None:
        defaulter: Callable[[Obj], None] | None = DEFAULTERS.get(t.kind) if not t.custom else None
        if t.kind == "Service" and not t.custom:
            self._service_ips(new, old)
        if defaulter:
            defaulter(new)

    def _service_ips(self, new: Obj, old: Obj | None) -> None:
        spec = new.setdefault("spec", {})
        if old is not None:
            old_spec = old.get("spec") or {}
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if not spec.get(key) and old_spec.get(key):
                    spec[key] = plain(old_spec[key])
            if spec.get("clusterIP") != old_spec.get("clusterIP"):
                raise ApiError(422, f'Service "{new["metadata"]["name"]}" is invalid: spec.clusterIPs[0]: '
                                    "Invalid value: field is immutable", "Invalid")
            return
        in_use = {ip for svc in self.store.items("/services") for ip in (svc["spec"].get("clusterIPs") or [])
                  if ip != "None"}
        self.cluster_ips.assign(new, in_use)

    def _after_write(self, t: ResourceType, change: Change) -> None:
        if t.key == CRDS and change.type != "DELETED":
            self.registry.add_crd(change.obj)


def parse_rv(value: str | None) -> int:
    try:
        rv = int(value or "0")
        if rv < 0:
            raise ValueError
        return rv
    except ValueError:
        raise ApiError(400, f"resourceVersion: Invalid value: {str(value)[:40]!r}: must be a non-negative integer") from None


def too_large(asked: int, current: int) -> ApiError:
    return ApiError(504, f"Too large resource version: {asked}, current: {current}", "Timeout",
                    {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})

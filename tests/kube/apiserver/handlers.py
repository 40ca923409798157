"""The HTTP face: URL routing, authentication and authorization, fault injection, and the watch stream.

Paths are the real ones: ``/api/v1[/namespaces/{ns}]/{plural}[/{name}[/{subresource}]]`` for the core group,
``/apis/{group}/{version}/...`` for the others, plus discovery (``/api``, ``/apis``, ``/apis/{group}``,
``/apis/{group}/{version}``), ``/version`` and the health endpoints. A watch is a GET of a collection with
``watch=1``: newline-delimited JSON events on a chunked response, as kube-apiserver sends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from aiohttp import web

from .cluster import parse_rv, too_large
from .errors import ApiError
from .faults import Fault
from .resources import ResourceType, matches_permission
from .selectors import make_filter, parse_field_selector, parse_label_selector
from .store import Change, Obj

if TYPE_CHECKING:
    from .server import ApiServer

log = logging.getLogger(__name__)
MAX_BODY = 3 * 1024 * 1024  # etcd's request limit, which the real server enforces too
OPEN_PATHS = ("/healthz", "/livez", "/readyz", "/version")
VERSION_INFO = {
    "major": "1", "minor": "30", "gitVersion": "v1.30.0-zpilot-test", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2", "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (for tests asserting what a client asked, and when)."""

    time: float
    method: str
    path: str
    query: Mapping[str, str]
    verb: str
    resource: str | None
    namespace: str | None
    user: str | None
    status: int


@dataclass(frozen=True)
class Target:
    """What a URL names."""

    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    subresource: str | None


def parse_path(path: str) -> Target | tuple[str, ...]:
    """A resource target, or the path's parts when it is a discovery path (or nothing served)."""
    parts = tuple(p for p in path.strip("/").split("/") if p)
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return parts
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return parts
    return Target(group, version, namespace, rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)


def truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool, which the real server uses for query flags (kubernetes-asyncio sends "True")."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def int_param(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 12:
        raise ApiError(400, f"{name}: Invalid value: {text[:40]!r}: must be a non-negative integer")
    return int(text)


def verb_of(method: str, target: Target, query: Mapping[str, str]) -> str:
    if method == "GET":
        if target.name is not None:
            return "get"
        return "watch" if truthy(query.get("watch")) else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def present(t: ResourceType, obj: Obj, version: str, *, in_list: bool = False) -> Obj:
    """An object as served: in the requested version; built-in list items carry no apiVersion/kind (as real)."""
    if in_list and not t.custom:
        return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    return {**obj, "apiVersion": t.api_version(version), "kind": t.kind}


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json", headers=headers)


def error_response(err: ApiError, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response(err.status(), err.code, headers)


def watch_event(kind: str, obj: Obj) -> bytes:
    return (json.dumps({"type": kind, "object": obj}) + "\n").encode()


def convert(change: Change, matches: Callable[[Obj], bool]) -> tuple[str, Obj] | None:
    """A stored change as this watcher sees it: moving into or out of its selectors is ADDED or DELETED."""
    if change.type == "DELETED":
        return ("DELETED", change.obj) if matches(change.obj) else None
    now = matches(change.obj)
    before = change.prev is not None and matches(change.prev)
    if now and before:
        return "MODIFIED", change.obj
    if now:
        return "ADDED", change.obj
    if before:
        assert change.prev is not None
        gone = {**change.prev, "metadata": {**change.prev["metadata"], "resourceVersion": str(change.rv)}}
        return "DELETED", gone
    return None


class Handlers:
    def __init__(self, server: "ApiServer") -> None:
        self.server = server
        self._requests: deque[RequestRecord] = deque(maxlen=10_000)
        self._requests_lock = threading.Lock()

    @property
    def requests(self) -> list[RequestRecord]:
        with self._requests_lock:
            return list(self._requests)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = {k: v for k, v in request.query.items()}
        target = parse_path(request.path)
        t: ResourceType | None = None
        if isinstance(target, Target):
            t = self.server.cluster.registry.lookup(target.group, target.version, target.plural)
            verb = verb_of(request.method, target, query)
        else:
            verb = "discovery"
        user: str | None = None
        response: web.StreamResponse | None = None
        try:
            fault = self.server.faults.take(verb, {t.plural, t.qualified} if t else set())
            if fault is not None:
                response = await self._fault(request, fault)
                if response is not None:
                    return response
            header = request.headers.get("Authorization")
            # Bad credentials are refused everywhere; no credentials (anonymous) only reach the public paths.
            if header is not None or request.path.rstrip("/") not in OPEN_PATHS:
                if header is None and request.transport is not None:  # a client certificate, as kube-apiserver's x509
                    identity = self.server.auth.identify_certificate(request.transport.get_extra_info("peercert"))
                else:
                    identity = self.server.auth.identify(header)
                if identity is None:
                    raise ApiError(401, "Unauthorized")
                user = identity.user
                if isinstance(target, Target) and t is not None and not matches_permission(identity.allowed, verb, t, target.subresource):
                    scope = f'in the namespace "{target.namespace}"' if target.namespace else "at the cluster scope"
                    resource = t.plural + (f"/{target.subresource}" if target.subresource else "")
                    raise ApiError(403, f'{resource} is forbidden: User "{identity.user}" cannot {verb} resource '
                                        f'"{resource}" in API group "{t.group}" {scope}',
                                   details={"kind": t.plural, **({"group": t.group} if t.group else {})})
            if not isinstance(target, Target):
                response = self._discovery(request, target)
            elif t is None or (target.namespace is not None and not t.namespaced):
                raise ApiError(404, "the server could not find the requested resource")
            elif verb == "watch":
                # recorded once its stream is open (see _record_open): a client may see the stream end before
                # this handler returns, and must already find its request in the log by then
                request["zpilot.record"] = (verb, t, target.namespace, user)
                response = await self._watch(request, t, target, query, fault)
            else:
                response = await self._serve(request, t, target, verb, query)
        except Exception as exc:
            # An ApiError is a refusal, sent as its Status; anything else is a bug in this server, answered as
            # kube-apiserver answers a panic (500) and logged with its traceback.
            if not isinstance(exc, ApiError):
                log.exception("test API server: %s %s failed", request.method, request.path[:200])
                exc = ApiError(500, f"Internal error occurred: {type(exc).__name__}: {str(exc)[:200]}")
            err = exc
            details = err.details or {}
            headers = {"Retry-After": str(details["retryAfterSeconds"])} if "retryAfterSeconds" in details else None
            response = error_response(err, headers)
        finally:
            if not request.get("zpilot.recorded"):
                self._record(request, verb, t, target.namespace if isinstance(target, Target) else None, user,
                             response.status if response is not None else 0)
        return response

    # ----------------------------------------------------------------------------------------------------

    def _record_open(self, request: web.Request, response: web.StreamResponse) -> None:
        """Record a streamed request as soon as its response is prepared (its status is then final)."""
        context = request.get("zpilot.record")
        if context is not None and not request.get("zpilot.recorded"):
            request["zpilot.recorded"] = True
            self._record(request, *context, response.status)

    def _record(self, request: web.Request, verb: str, t: ResourceType | None, namespace: str | None,
                user: str | None, status: int) -> None:
        record = RequestRecord(time.monotonic(), request.method, request.path, dict(request.query), verb,
                               t.qualified if t else None, namespace, user, status)
        with self._requests_lock:
            self._requests.append(record)

    async def _fault(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.reset:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more to say on a reset connection
        if fault.status is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            message = {429: "Too many requests, please try again later.",
                       500: "Internal error occurred: injected by the test"}.get(fault.status, "injected by the test")
            return error_response(ApiError(fault.status, message), headers)
        return None

    def _discovery(self, request: web.Request, parts: tuple[str, ...]) -> web.Response:
        registry = self.server.cluster.registry
        if request.method != "GET":
            raise ApiError(405, f"{request.method} is not allowed on {request.path[:200]}")
        if parts in (("healthz",), ("livez",), ("readyz",)):
            return web.Response(text="ok")
        if parts == ("version",):
            return json_response(VERSION_INFO)
        if parts == ("api",):
            return json_response(registry.api_versions(f"127.0.0.1:{self.server.port}"))
        if parts == ("apis",):
            return json_response(registry.api_group_list())
        doc: dict[str, Any] | None = None
        if len(parts) == 2 and parts[0] == "api":
            doc = registry.resource_list("", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            doc = registry.api_group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            doc = registry.resource_list(parts[1], parts[2])
        if doc is None:
            raise ApiError(404, "the server could not find the requested resource")
        return json_response(doc)

    async def _body(self, request: web.Request) -> Any:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"Request entity too large: limit is {MAX_BODY}") from None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None

    async def _serve(self, request: web.Request, t: ResourceType, target: Target, verb: str,
                     query: Mapping[str, str]) -> web.Response:
        cluster = self.server.cluster
        version, ns, name = target.version, target.namespace, target.name
        if query.get("dryRun"):
            raise ApiError(400, "dryRun is not supported by the test API server")
        if target.subresource is not None and (target.subresource != "status" or not t.status_subresource):
            raise ApiError(404, "the server could not find the requested resource")
        if verb not in t.verbs:
            raise ApiError(405, f"{verb} is not supported on {t.qualified}", "MethodNotAllowed")
        if verb == "get":
            assert name is not None
            return json_response(present(t, cluster.get(t, ns, name), version))
        if verb == "list":
            limit = int_param(query, "limit")
            result = cluster.list(
                t, ns, label_selector=query.get("labelSelector"), field_selector=query.get("fieldSelector"),
                resource_version=query.get("resourceVersion"), resource_version_match=query.get("resourceVersionMatch"),
                limit=limit, continue_token=query.get("continue"))
            meta: dict[str, Any] = {"resourceVersion": str(result.resource_version)}
            if result.continue_token:
                meta["continue"] = result.continue_token
                meta["remainingItemCount"] = result.remaining
            return json_response({"kind": t.list_kind, "apiVersion": t.api_version(version), "metadata": meta,
                                  "items": [present(t, o, version, in_list=True) for o in result.items]})
        if verb == "create" and name is None:
            body = await self._body(request)
            if not isinstance(body, dict):
                raise ApiError(400, "the request body must be a JSON object")
            if t.key == "authentication.k8s.io/tokenreviews":
                spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
                return json_response({"kind": "TokenReview", "apiVersion": t.api_version(version),
                                      "metadata": {"creationTimestamp": None}, "spec": spec,
                                      "status": self.server.tokens.review(spec)}, 201)
            return json_response(present(t, cluster.create(t, body, ns, client=True), version), 201)
        if verb == "update" and name is not None:
            body = await self._body(request)
            if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
                raise ApiError(400, "the request body must be an object with metadata")
            if body["metadata"].get("name") != name:
                raise ApiError(400, "the name of the object does not match the name on the URL")
            return json_response(present(t, cluster.update(t, body, ns, subresource=target.subresource, client=True), version))
        if verb == "patch" and name is not None:
            body = await self._body(request)
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            return json_response(present(t, cluster.patch(t, ns, name, body, content_type, subresource=target.subresource), version))
        if verb == "delete" and name is not None:
            options = await self._body(request) if request.can_read_body else {}
            pre = options.get("preconditions") if isinstance(options, dict) else None
            return json_response(present(t, cluster.delete(t, ns, name, preconditions=pre if isinstance(pre, dict) else None), version))
        raise ApiError(405, f"{request.method} is not supported on {request.path[:200]}", "MethodNotAllowed")

    async def _watch(self, request: web.Request, t: ResourceType, target: Target, query: Mapping[str, str],
                     fault: Fault | None) -> web.StreamResponse:
        server = self.server
        store = server.cluster.store
        matches = make_filter(parse_label_selector(query.get("labelSelector")),
                              parse_field_selector(query.get("fieldSelector"), t.field_labels, t.kind))
        bookmarks = truthy(query.get("allowWatchBookmarks"))
        send_initial = truthy(query.get("sendInitialEvents"))
        if send_initial and (query.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks):
            raise ApiError(422, "sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true", "Invalid")
        timeout_seconds = int_param(query, "timeoutSeconds")
        timeout = float(timeout_seconds) if timeout_seconds else server.default_watch_timeout
        rv_text = query.get("resourceVersion")
        since = None if send_initial or rv_text in (None, "", "0") else parse_rv(rv_text)
        ns = target.namespace
        loop = asyncio.get_running_loop()
        try:
            with store.lock:
                if since is not None and since > store.rv:
                    raise too_large(since, store.rv)
                initial = [o for o in store.items(t.key, ns) if matches(o)] if since is None else []
                sub, backlog, current = store.subscribe(t.key, ns, since, loop)
        except ApiError as err:
            if err.code != 410 or server.expired_watch_as == "http":
                raise
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            self._record_open(request, response)
            await response.write(watch_event("ERROR", err.status()))
            await response.write_eof()
            return response
        version = target.version
        drop_after = fault.drop_after_events if fault is not None else None
        sent = 0
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()

        def bookmark(rv: int, initial_end: bool = False) -> bytes:
            meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return watch_event("BOOKMARK", {"kind": t.kind, "apiVersion": t.api_version(version), "metadata": meta})

        async def send(kind: str, obj: Obj) -> bool:
            """Write one event; False once the injected drop point is reached (the connection is then cut)."""
            nonlocal sent
            if drop_after is not None and sent >= drop_after:
                return False
            await response.write(watch_event(kind, present(t, obj, version)))
            sent += 1
            return True

        try:
            await response.prepare(request)
            self._record_open(request, response)
            sub.recorded = True
            for obj in initial:
                if not await send("ADDED", obj):
                    return self._cut(request, response)
            if send_initial:
                await response.write(bookmark(current, initial_end=True))
            for change in backlog:
                event = convert(change, matches)
                if event and not await send(*event):
                    return self._cut(request, response)
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + server.bookmark_interval
            while True:
                if sub.closing == "drop":
                    return self._cut(request, response)
                changes, complete_to = store.take(sub)
                for change in changes:
                    event = convert(change, matches)
                    if event and not await send(*event):
                        return self._cut(request, response)
                if sub.closing == "end":
                    break
                now = loop.time()
                if bookmarks and (sub.bookmark_now or now >= next_bookmark):
                    await response.write(bookmark(complete_to))
                    next_bookmark = now + server.bookmark_interval
                sub.bookmark_now = False
                if drop_after is not None and sent >= drop_after:
                    return self._cut(request, response)
                if now >= deadline:
                    break
                wake_at = min(deadline, next_bookmark) if bookmarks else deadline
                try:
                    await asyncio.wait_for(sub.wake.wait(), max(0.0, wake_at - now))
                except asyncio.TimeoutError:
                    pass
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            store.unsubscribe(sub)
        return response

    @staticmethod
    def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """End a watch the way a failed connection does: no final chunk, the connection just goes.

        ``close()`` rather than ``abort()``: what was already written still arrives, so a test knows exactly
        which events the client saw before the cut."""
        if request.transport is not None:
            request.transport.close()
        return response

"""The debug REST API (FastAPI, ``contract.PORT_DEBUG``): what istiod's debug endpoints show, for zpilot.

Everything here reads state; nothing changes config. It shows every node's configuration, so it
listens on localhost by default, and bound anywhere else it requires a bearer token given at start
(``zpilot serve --debug-token-file``): every endpoint but ``/healthz/ready`` (a kubelet probe
carries no token, and it tells only ready or not) answers 401 without it. Prometheus metrics are
served apart (metrics_server.py). Key material never leaves through it:
config dumps go through ``config_dump`` (which redacts private keys the way Envoy does).

The handlers are coroutines, so they run on the event loop's thread, the one the ADS streams
mutate connection state and the cache on: no locks, no torn reads. Only work on immutable data
(decoding and rendering a snapshot, rendering the model) is moved to a worker thread.

The API reads what it shows through :class:`DebugView`, the few things it needs of a running
control plane (``zpilot.runtime.control_plane.ControlPlane`` is one), so xds never imports the
runtime that wires it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
from types import MappingProxyType
from typing import Any, Mapping, Protocol

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..model.index import MeshIndex
from .order import short_name
from .snapshot import Snapshot
from .snapshot_cache import SnapshotCache
from .status import StatusRegistry


class DebugView(Protocol):
    """What the debug API reads of a running control plane."""

    @property
    def ready(self) -> bool:
        """ADS is serving config produced from a model."""
        ...

    @property
    def index(self) -> MeshIndex | None:
        """The model the config was produced from (None before the first one)."""
        ...

    @property
    def cache(self) -> SnapshotCache: ...

    @property
    def registry(self) -> StatusRegistry: ...

    @property
    def failures(self) -> Mapping[str, str]:
        """Nodes whose latest config failed the consistency check (they keep their last good one, or
        are sent nothing without one), and why."""
        ...


def _plain(value: Any) -> Any:
    """Model dataclasses as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (Mapping, MappingProxyType)):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _versions(plane: DebugView, node: str) -> dict[str, Any]:
    snapshot = plane.cache.get_snapshot(node)
    if snapshot is None:
        return {}
    return {
        short_name(t): {"version": r.version, "resources": len(r.items), "bytes": r.size}
        for t, r in snapshot.types.items()
    }


def _dump(snapshot: Snapshot) -> dict[str, Any]:
    """The node's config dump, decoded from exactly the bytes it is served (immutable: thread-safe)."""
    from .config_dump import config_dump as render

    versions = {
        (type_url, name): resource.version
        for type_url, resources in snapshot.types.items()
        for name, resource in resources.items.items()
    }
    resources, secrets = snapshot.decode()
    return render(resources, secrets, versions)


def _model(index: MeshIndex, failures: Mapping[str, str]) -> dict[str, Any]:
    """The model as JSON-ready data (immutable: thread-safe), with the nodes whose config was refused
    (``failures``: node -> the problem's reason)."""
    cluster = index.cluster
    meshed = {(w.namespace, w.name) for w in index.meshed_workloads()}
    return {
        "nodes": _plain(cluster.nodes),
        "namespaces": [dict(_plain(n), enrolled=n.enrolled) for n in cluster.namespaces],
        "service_accounts": _plain(cluster.service_accounts),
        "workloads": [dict(_plain(w), meshed=(w.namespace, w.name) in meshed) for w in cluster.workloads],
        "services": _plain(cluster.services),
        "endpoint_slices": _plain(cluster.endpoint_slices),
        "authorization_policies": _plain(cluster.authorization_policies),
        "peer_authentications": _plain(cluster.peer_authentications),
        "problems": [
            {"severity": p.severity.value, "subject": p.subject, "reason": p.reason, "where": p.where}
            for p in index.problems
        ]
        + [
            {"severity": "error", "subject": f"Node {node}", "reason": reason, "where": ""}
            for node, reason in sorted(failures.items())
        ],
    }


def _policies(index: MeshIndex, node: str | None) -> list[dict[str, Any]]:
    """Each meshed workload's effective policies: who may connect to it (immutable: thread-safe)."""
    out = []
    for w in index.meshed_workloads_on(node) if node else index.meshed_workloads():
        p = index.policies_for(w)
        out.append({
            "workload": f"{w.namespace}/{w.name}",
            "node": w.node_name,
            "ip": w.ip,
            "deny": [f"{a.namespace}/{a.name}" for a in p.deny],
            "allow": [f"{a.namespace}/{a.name}" for a in p.allow],
            "default": "deny" if p.allow else "allow",  # once any ALLOW applies, what it does not allow is denied
            "plaintext": {"mode": p.mtls.default.value, "ports": {str(k): v.value for k, v in p.mtls.ports.items()},
                          "decided_by": [f"{r.namespace}/{r.name}" for r in p.mtls.decided_by]},
        })
    return out


def bearer_token(expected: str):
    """A dependency that lets a request through only with ``Authorization: Bearer <expected>``."""
    scheme = HTTPBearer(auto_error=False, description="the token of zpilot serve --debug-token-file")
    wanted = expected.encode()

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, wanted):  # the same time whatever the guess
            raise HTTPException(401, "this debug API needs Authorization: Bearer <the token of --debug-token-file>",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def create_app(plane: DebugView, *, token: str | None = None) -> FastAPI:
    """The API; with ``token``, every endpoint but /healthz/ready requires it as a bearer token."""
    app = FastAPI(
        title="zpilot debug API",
        description="State of the zpilot control plane: per-node config, xDS sync status, the model.",
        version="1",
    )
    debug = APIRouter(dependencies=[Depends(bearer_token(token))] if token is not None else [])

    @app.get("/healthz/ready", summary="200 once the source's first model was translated and ADS serves it")
    async def ready() -> JSONResponse:
        if plane.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False}, status_code=503)

    @debug.get("/debug/config_dump", summary="A node's config in the shape of Envoy's /config_dump?include_eds")
    async def config_dump(node: str = Query(..., description="Kubernetes node name")) -> JSONResponse:
        snapshot = plane.cache.get_snapshot(node)
        if snapshot is None:
            known = ", ".join(plane.cache.nodes()) or "none"
            raise HTTPException(404, f"no config for node {node!r}; nodes with config: {known}")
        return JSONResponse(await asyncio.to_thread(_dump, snapshot))

    @debug.get("/debug/syncz", summary="Per connection and type: last sent, last ACKed, last NACK with its error")
    async def syncz(node: str | None = Query(None, description="only this node's connections")) -> JSONResponse:
        return JSONResponse([c.to_json() for c in plane.registry.connections(node)])

    @debug.get("/debug/connections", summary="Open ADS streams")
    async def connections() -> JSONResponse:
        return JSONResponse(
            [
                {
                    "id": c.id,
                    "node": c.node,
                    "node_id": c.node_id,
                    "user_agent": c.user_agent,
                    "known_node": c.known_node,
                    "mode": c.mode,
                    "peer": c.peer,
                    "connected_at": c.connected_at,
                    "types": [short_name(t) for t in c.types],
                }
                for c in plane.registry.connections()
            ]
        )

    @debug.get("/debug/registryz", summary="The mesh model the config is built from, and its input problems")
    async def registryz() -> JSONResponse:
        index = plane.index
        if index is None:
            raise HTTPException(503, "no model loaded yet")
        snapshots = {node: _versions(plane, node) for node in plane.cache.nodes()}
        failures = {  # read on the loop, which is where they change
            node: reason + ("; the node keeps its last good config" if plane.cache.get_snapshot(node) is not None
                            else "; the node never had a good config: it is sent nothing until it has")
            for node, reason in plane.failures.items()
        }
        return JSONResponse(dict(await asyncio.to_thread(_model, index, failures), snapshots=snapshots))

    @debug.get("/debug/policyz", summary="Each meshed workload's AuthorizationPolicies and plaintext (mTLS) mode in force")
    async def policyz(node: str | None = Query(None, description="only this node's workloads")) -> JSONResponse:
        index = plane.index
        if index is None:
            raise HTTPException(503, "no model loaded yet")
        return JSONResponse(await asyncio.to_thread(_policies, index, node))

    app.include_router(debug)
    return app

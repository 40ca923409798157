"""``zpilot serve``'s debug API and metrics as a world reads them: over Unix sockets in the world's
directory."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from .errors import WorldError


def get(debug_socket: Path, path: str, *, raw: bool = False) -> Any:
    """GET ``path`` on the debug API: the decoded JSON, or ``(status, body)`` with ``raw``."""
    status, body = _unix_get(debug_socket, path)
    if raw:
        return status, body
    if status != 200:
        raise WorldError(f"debug API {path}: HTTP {status}: {body[:300]!r}")
    return json.loads(body)


def metrics(metrics_socket: Path) -> str:
    """The Prometheus exposition text of serve's metrics listener."""
    status, body = _unix_get(metrics_socket, "/metrics")
    if status != 200:
        raise WorldError(f"/metrics: HTTP {status}: {body[:300]!r}")
    return body.decode()


def acked_listener_version(syncz: Any) -> str:
    """The listener version a node's ztunnel ACKed, from its /debug/syncz, once the last LDS sent
    is the one ACKed (empty while one is in flight). Only LDS is looked at: it is pushed last,
    after the clusters, endpoints and secrets it needs."""
    connections = syncz.get("connections", syncz) if isinstance(syncz, dict) else syncz
    for conn in connections:
        for status in conn.get("types", []):
            if status.get("type_url", "").endswith(".Listener"):
                if status.get("state") != "SYNCED":
                    return ""
                return status.get("acked_version", "")
    return ""


def _unix_get(path: Path, target: str) -> tuple[int, bytes]:
    """One HTTP GET over a Unix socket: the status and the body."""
    conn = http.client.HTTPConnection("localhost", timeout=10)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    conn.sock = sock
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()

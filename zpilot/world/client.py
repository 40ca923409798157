"""Clients that speak from inside a pod: HTTP requests over sockets opened in its namespace.

Used for the scenarios (what the pod's own connection looked like: its local port, which the
ztunnel's access log shows as the downstream address), for the ztunnels' admin APIs (each on
127.0.0.1 of its own namespace) and for the bench.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

from .netns import NetnsSockets


@dataclass(frozen=True)
class Exchange:
    """One request from a pod: what it connected from and to, and what came back."""

    local: str  # the pod's side of the connection, ip:port
    target: str
    status: int
    body: bytes
    connect_ms: float
    total_ms: float

    def json(self) -> Any:
        return json.loads(self.body)


class ConnectionFailed(ConnectionError):
    def __init__(self, message: str, local: str | None = None) -> None:
        super().__init__(message)
        self.local = local


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


class PodClient:
    def __init__(self, sockets: NetnsSockets | None = None) -> None:
        self.sockets = sockets or NetnsSockets()

    def connect(self, netns: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        sock = self.sockets.socket(netns)
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((host, port))
        except OSError as exc:
            local = None
            try:
                local = _address(sock)
            except OSError:
                pass
            sock.close()
            raise ConnectionFailed(f"connect {host}:{port} from netns {netns}: {exc}", local) from exc
        return sock

    def request(self, netns: str, host: str, port: int, path: str = "/", *, method: str = "GET",
                body: bytes | None = None, timeout: float = 5.0) -> Exchange:
        """One HTTP/1.1 request on a fresh connection (``Connection: close``)."""
        start = time.perf_counter()
        sock = self.connect(netns, host, port, timeout)
        connected = time.perf_counter()
        local = _address(sock)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        try:
            conn.request(method, path, body=body, headers={"Connection": "close"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(f"{method} http://{host}:{port}{path} from netns {netns}: {exc!r}", local) from exc
        finally:
            conn.close()
        done = time.perf_counter()
        return Exchange(local, f"{host}:{port}", resp.status, data, (connected - start) * 1e3, (done - start) * 1e3)

    def close(self) -> None:
        self.sockets.close()

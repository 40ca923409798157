"""The server in each destination pod: small, but it tells the client what it saw.

``GET /`` answers JSON with the pod's name and the connection as the pod saw it (peer and local
address), which is the last hop's evidence: whether the source was spoofed, which address
really reached the pod. ``GET /bytes?n=N`` streams N bytes and ``POST /sink`` swallows a body,
for the throughput bench. Run as ``python -m zpilot.world.podserver --name POD --port P ...``
inside the pod's namespace.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

CHUNK = 256 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "zpilot-podserver"
    pod_name = "?"

    def log_message(self, format: str, *args) -> None:  # keep the pod's log to errors
        pass

    def _json(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _seen(self) -> dict:
        peer = self.connection.getpeername()
        local = self.connection.getsockname()
        return {"pod": self.pod_name, "peer": f"{peer[0]}:{peer[1]}", "local": f"{local[0]}:{local[1]}"}

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/bytes":
            n = int(parse_qs(url.query).get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = b"z" * CHUNK
            while n > 0:
                piece = block if n >= CHUNK else block[:n]
                self.wfile.write(piece)
                n -= len(piece)
            return
        self._json({**self._seen(), "path": url.path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        remaining = length
        while remaining > 0:
            got = self.rfile.read(min(CHUNK, remaining))
            if not got:
                break
            remaining -= len(got)
        self._json({**self._seen(), "received": length - remaining})


class PodHTTPServer(ThreadingHTTPServer):
    """A thread per connection, and a listen backlog like a real server's (socketserver's default
    of 5 would drop the SYNs of a burst of connections from the ztunnel)."""

    request_queue_size = 4096
    daemon_threads = True


def serve(name: str, ports: list[int]) -> None:
    handler = type("PodHandler", (Handler,), {"pod_name": name})
    servers = []
    for port in ports:
        server = PodHTTPServer(("0.0.0.0", port), handler)
        servers.append(server)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"podserver {name}: listening on {', '.join(map(str, ports))}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for server in servers:
        server.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, action="append", required=True)
    args = p.parse_args(argv)
    serve(args.name, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

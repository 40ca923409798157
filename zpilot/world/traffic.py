"""Traffic a fault is injected under: new connections at a steady pace, connections held open, many
connections at once. Every connection is one HTTP exchange (or several, on a held one) with a pod
server, whose answer says which pod it reached and which peer it saw, so the caller can tell a
tunnelled connection (the pod sees the ztunnel's address) from a plaintext one (the client's own).

Clients run in this process, with sockets opened in the source pod's namespace (netns.py), so a
fault in a world's processes never touches them.
"""

from __future__ import annotations

import errno
import http.client
import json
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .client import PodClient


@dataclass(frozen=True)
class Attempt:
    """One new connection and its one request."""

    started: float  # time.monotonic()
    seconds: float
    ok: bool
    local: str | None = None  # the client's address, ip:port
    seen: dict[str, Any] = field(default_factory=dict)  # the pod's answer: pod, peer, local
    error: str | None = None

    @property
    def peer_ip(self) -> str | None:
        """The source address the destination pod saw."""
        peer = self.seen.get("peer")
        return peer.rsplit(":", 1)[0] if peer else None


class ConnectionChurn:
    """A new connection every ``interval`` seconds, each with one request, until stopped.

    Attempts start on schedule whatever earlier ones are doing (a pool of workers), so a connection
    that hangs (a dropped SYN) does not slow the pace: what a client of a busy service does.
    """

    def __init__(self, client: PodClient, netns: str, host: str, port: int, *, interval: float = 0.02,
                 timeout: float = 3.0, workers: int = 256) -> None:
        self.client, self.netns, self.host, self.port = client, netns, host, port
        self.interval, self.timeout = interval, timeout
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="churn")
        self._thread = threading.Thread(target=self._schedule, name="churn-scheduler", daemon=True)

    def __enter__(self) -> "ConnectionChurn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop starting connections and wait for the ones in flight."""
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _schedule(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._attempt)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _attempt(self) -> None:
        started = time.monotonic()
        try:
            exchange = self.client.request(self.netns, self.host, self.port, timeout=self.timeout)
            seen = exchange.json()
            result = Attempt(started, time.monotonic() - started, exchange.status == 200, exchange.local, seen,
                             None if exchange.status == 200 else f"HTTP {exchange.status}")
        except Exception as exc:  # ConnectionFailed, a timeout, a body that is not JSON
            result = Attempt(started, time.monotonic() - started, False, getattr(exc, "local", None),
                             error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.attempts.append(result)

    def between(self, start: float, end: float) -> list[Attempt]:
        """Attempts started in [start, end)."""
        with self._lock:
            return sorted((a for a in self.attempts if start <= a.started < end), key=lambda a: a.started)

    @property
    def failures(self) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if not a.ok]


class HeldConnections:
    """``count`` keep-alive connections opened at once and used every ``period`` seconds (a request
    on each), like a connection pool; a connection that fails is not reopened, it is counted.

    A long-lived connection is only known to be alive when it is used: a reset waits for the next
    request to be noticed, so each one is exercised throughout.
    """

    def __init__(self, client: PodClient, netns: str, host: str, port: int, *, count: int = 20,
                 period: float = 0.5, timeout: float = 5.0) -> None:
        self.client, self.netns, self.host, self.port = client, netns, host, port
        self.count, self.period, self.timeout = count, period, timeout
        self.requests = 0
        self.failures: list[str] = []
        self.locals: list[str] = []
        self._conns: list[http.client.HTTPConnection] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="held-connections", daemon=True)

    def __enter__(self) -> "HeldConnections":
        for _ in range(self.count):
            sock = self.client.connect(self.netns, self.host, self.port, timeout=self.timeout)
            self.locals.append("%s:%d" % sock.getsockname()[:2])
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            conn.sock = sock
            self._conns.append(conn)
        self._exercise()  # each one works before the fault
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._exercise()  # and still after it
        for conn in self._conns:
            conn.close()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._exercise()

    def _exercise(self) -> None:
        for index, conn in enumerate(self._conns):
            if conn.sock is None:  # failed before: not reopened
                continue
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or not json.loads(body).get("pod"):
                    raise ConnectionError(f"HTTP {response.status}")
                self.requests += 1
            except Exception as exc:
                self.failures.append(f"held connection {index} ({self.locals[index]}): {type(exc).__name__}: {exc}")
                conn.close()


@dataclass
class ConcurrentResult:
    opened: int  # connections established
    answered: int  # of them, answered 200 by the pod
    still_open: int  # answered again at the end, on the same connection: all were open at once
    errors: list[str]
    seconds: float


def hold_concurrently(client: PodClient, netns: str, host: str, port: int, count: int, *,
                      in_flight: int = 200, timeout: float = 60.0,
                      while_open: Callable[[], None] | None = None) -> ConcurrentResult:
    """Open ``count`` connections, make one request on each and keep every one open until all have
    answered; then call ``while_open()`` (e.g. to read the ztunnels' gauges), ask each once more on
    the same connection, and close them all.

    Connections are established ``in_flight`` at a time (a connection pool filling up, not a SYN
    flood), but none is closed before the last has answered: ``count`` are open at once. Runs in
    this thread with one selector, so thousands of connections need no thousands of threads.
    """
    started = time.monotonic()
    deadline = started + timeout
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    sockets: list[socket.socket] = []
    failed: set[socket.socket] = set()
    errors: list[str] = []
    answers: dict[socket.socket, int] = {}
    buffers: dict[socket.socket, bytes] = {}
    selector = selectors.DefaultSelector()

    def fail(sock: socket.socket, why: str) -> None:
        if sock in failed:
            return
        errors.append(why)
        failed.add(sock)
        selector.unregister(sock)

    def open_one() -> None:
        sock = client.sockets.socket(netns)
        sock.setblocking(False)
        sockets.append(sock)
        selector.register(sock, selectors.EVENT_WRITE, "connecting")
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            fail(sock, f"connect: {errno.errorcode.get(err, err)}")

    def whole_response(sock: socket.socket) -> bool:
        """Read what is there; True once a whole 200 answer from the pod is in."""
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the other end")
        buffers[sock] = buffers.get(sock, b"") + data
        head, sep, body = buffers[sock].partition(b"\r\n\r\n")
        if not sep:
            return False
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if len(body) < length:
            return False
        if not head.startswith(b"HTTP/1.1 200") or b'"pod"' not in body[:length]:
            raise ConnectionError(f"unexpected answer {head[:40]!r}")
        buffers[sock] = b""
        return True

    def done(round_: int) -> int:
        return sum(1 for sock, n in answers.items() if n >= round_ and sock not in failed)

    def pump(round_: int, target: int) -> None:
        """Drive every connection until ``target`` of them have answered ``round_`` times (or failed)."""
        while done(round_) + len(failed) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done(round_)} of {target} connections answered within {timeout:.0f} s")
            while len(sockets) < count and len(sockets) - done(1) - len(failed) < in_flight:
                open_one()
            for key, _events in selector.select(timeout=0.5):
                sock = key.fileobj
                try:
                    if key.data == "connecting":
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            raise ConnectionError(f"connect: {errno.errorcode.get(err, err)}")
                        sock.send(request)
                        selector.modify(sock, selectors.EVENT_READ, "reading")
                    elif whole_response(sock):
                        answers[sock] = answers.get(sock, 0) + 1
                        selector.modify(sock, selectors.EVENT_READ, "idle")
                except BlockingIOError:
                    continue
                except OSError as exc:  # ConnectionError included: this connection failed
                    fail(sock, f"{type(exc).__name__}: {exc}")

    try:
        pump(1, count)
        answered = done(1)
        if while_open is not None:
            while_open()
        for sock in [s for s, n in answers.items() if n >= 1 and s not in failed]:
            try:
                sock.send(request)
                selector.modify(sock, selectors.EVENT_READ, "reading")
            except OSError as exc:
                fail(sock, f"{type(exc).__name__}: {exc}")
        pump(2, count)
        return ConcurrentResult(len(sockets), answered, done(2), errors, time.monotonic() - started)
    finally:
        selector.close()
        for sock in sockets:
            sock.close()

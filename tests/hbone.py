"""HBONE (HTTP/2 CONNECT over mutual TLS 1.3) from the test's side, with the ``h2`` library: a
client that opens one tunnel as a ztunnel would (and can name any target it likes, as an attacker
would), and a peer that terminates tunnels as a receiving ztunnel would (or as an impostor holding
some other certificate would).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions

ORIGINAL_DST_HEADER = "x-envoy-original-dst-host"


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SPIFFE: the identity is the URI SAN, which callers check
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


@dataclass
class Tunnel:
    """What one CONNECT got: the server's URI SANs, the response status and body, or the error."""

    server_sans: list[str] = field(default_factory=list)
    status: int | None = None
    answer: bytes = b""
    error: str | None = None


def _uri_sans(cert: dict | None) -> list[str]:
    return [v for k, v in (cert or {}).get("subjectAltName", ()) if k == "URI"]


def hbone_connect(raw: socket.socket, ctx: ssl.SSLContext, authority: str, *, original_dst: str | None = None,
                  payload: bytes = b"", timeout: float = 5.0) -> Tunnel:
    """Over the connected socket ``raw``: TLS, then one CONNECT to ``authority`` with header
    ``x-envoy-original-dst-host: original_dst`` (default: the authority); once answered 200, send
    ``payload`` and read until the tunnel ends. Closes ``raw``."""
    result = Tunnel()
    raw.settimeout(timeout)
    try:
        tls = ctx.wrap_socket(raw)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        result.error = getattr(exc, "reason", None) or repr(exc)
        return result
    with tls:
        result.server_sans = _uri_sans(tls.getpeercert())
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "CONNECT"), (":authority", authority),
                                   (ORIGINAL_DST_HEADER, original_dst or authority)])
        deadline = time.monotonic() + timeout
        try:
            tls.sendall(conn.data_to_send())
            while time.monotonic() < deadline:
                data = tls.recv(65536)
                if not data:
                    result.error = result.error or "closed by the server"
                    return result
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                        result.status = int(dict(event.headers)[":status"])
                        if result.status == 200 and payload:
                            conn.send_data(stream, payload)
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                        result.answer += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                        return result
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                        result.error = f"stream reset ({event.error_code!r})"
                        return result
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        result.error = f"GOAWAY ({event.error_code!r})"
                        return result
                tls.sendall(conn.data_to_send())
            result.error = f"no end of the tunnel within {timeout} s"
        except (ssl.SSLError, OSError) as exc:
            result.error = getattr(exc, "reason", None) or repr(exc)
    return result


Responder = Callable[[bytes], bytes | None]


def echo(data: bytes) -> bytes:
    return data


class HbonePeer:
    """Terminates HBONE tunnels on a listening socket (opened wherever the caller likes: a
    namespace, loopback): answers every CONNECT 200 and replies to what comes through with
    ``respond(data)``, ending the stream after the reply when ``end_after_reply``. Records each
    TLS handshake (and the peer's URI SANs) and each CONNECT's authority."""

    def __init__(self, listener: socket.socket, ctx: ssl.SSLContext, respond: Responder = echo,
                 *, end_after_reply: bool = False) -> None:
        self.listener = listener
        self.ctx = ctx
        self.respond = respond
        self.end_after_reply = end_after_reply
        self.handshakes: list[list[str]] = []  # the client's URI SANs, one entry per handshake
        self.failed_handshakes: list[str] = []
        self.connects: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="hbone-peer", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def start(self) -> "HbonePeer":
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self._thread.start()
        return self

    def use(self, ctx: ssl.SSLContext) -> None:
        """Present another certificate from now on (connections already up keep theirs)."""
        self.ctx = ctx

    def close_connections(self) -> None:
        with self._lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing.set()
        self.close_connections()
        self._thread.join(5)
        self.listener.close()

    def __enter__(self) -> "HbonePeer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> tuple[int, int, list[str]]:
        """(handshakes, failed handshakes, CONNECT authorities) so far."""
        with self._lock:
            return len(self.handshakes), len(self.failed_handshakes), list(self.connects)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), name="hbone-peer-conn", daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            with self._lock:
                self.failed_handshakes.append(getattr(exc, "reason", None) or repr(exc))
            raw.close()
            return
        with self._lock:
            self.handshakes.append(_uri_sans(tls.getpeercert()))
            self._open.add(tls)
        try:
            self._tunnels(tls)
        except (ssl.SSLError, OSError, h2.exceptions.H2Error):
            pass
        finally:
            with self._lock:
                self._open.discard(tls)
            tls.close()

    def _tunnels(self, tls: ssl.SSLSocket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        answered: set[int] = set()
        while not self._closing.is_set():
            data = tls.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers)
                    if headers.get(":method") != "CONNECT":
                        conn.send_headers(event.stream_id, [(":status", "405")], end_stream=True)
                        continue
                    with self._lock:
                        self.connects.append(headers.get(":authority", ""))
                    conn.send_headers(event.stream_id, [(":status", "200")])
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if event.stream_id in answered:  # the reply ended our side: the rest is unread
                        continue
                    reply = self.respond(event.data)
                    if reply:
                        conn.send_data(event.stream_id, reply, end_stream=self.end_after_reply)
                        if self.end_after_reply:
                            answered.add(event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    if event.stream_id not in answered:
                        try:
                            conn.end_stream(event.stream_id)
                        except h2.exceptions.StreamClosedError:
                            pass
            tls.sendall(conn.data_to_send())

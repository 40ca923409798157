"""What SotW and delta ADS streams share: reading, node identity, wake-ups, clear errors.

Each stream runs two coroutines. The reader parses requests and updates the stream's
subscription state; the sender (the RPC's own task) waits for a wake-up (a request that needs
an answer, or a change of the node's snapshot) and then sends whatever is due, in push order.
Because requests are only recorded by the reader and answered by the sender, four requests
arriving at once on reconnect are still answered CDS, EDS, SDS, LDS.

A request the server cannot serve (unparseable, no node, unknown type URL) ends that stream
with INVALID_ARGUMENT and a message saying why; nothing is shared between streams, so no other
stream notices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import grpc
from google.protobuf.message import DecodeError, Message

from .cache import SnapshotReader
from .metrics import Metrics
from .node_identity import NodeIdentityError, node_name
from .order import PUSH_ORDER, SERVED_TYPES, short_name
from .snapshot import Snapshot
from .status import ConnectionStatus, Nack, StatusRegistry

log = logging.getLogger("zpilot.xds")

#: NACK error messages longer than this are cut (they come from the client).
MAX_ERROR_CHARS = 4096


@dataclass(frozen=True)
class StreamOptions:
    """Knobs of a stream (set from :class:`~zpilot.xds.server.ServerOptions`)."""

    control_plane_id: str = "zpilot"
    #: Yields to the reader before answering, so requests that arrived together are answered together.
    drain_yields: int = 5
    #: On reconnect a client reports the versions it has and sends every request at once (possibly
    #: out of order); for this long, a type is held back while a type that precedes it in push
    #: order has not been requested yet, so the answers still go CDS, EDS, SDS, LDS. (On a first
    #: connect nothing is held: Envoy asks for each type when it is ready for it, e.g. for a TLS
    #: cluster's secrets before its endpoints, and gets each answer at once.)
    gather_seconds: float = 0.1


class StreamError(Exception):
    """A request this stream refuses; ends the stream with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason  # metrics label


class Stream:
    """Base of one ADS stream; subclasses implement :meth:`handle` and :meth:`respond`."""

    mode = ""
    request_type: type[Message]

    def __init__(
        self,
        cache: SnapshotReader,
        registry: StatusRegistry,
        metrics: Metrics,
        options: StreamOptions,
        peer: str = "",
    ) -> None:
        self.cache = cache
        self.registry = registry
        self.metrics = metrics
        self.options = options
        self.peer = peer
        self.status: ConnectionStatus | None = None
        self._wake = asyncio.Event()
        self._snapshot_changed = False
        self._error: StreamError | None = None
        self._closed = False
        self._nonce = 0
        self._warned_unknown = False
        self.started_at = time.monotonic()
        self._requested: set[str] = set()  # types requested at least once on this stream
        self._expected: dict[str, float] = {}  # type -> until when its first request is waited for
        self._hold_timer: asyncio.TimerHandle | None = None
        self._context: grpc.aio.ServicerContext | None = None

    # -- to implement -----------------------------------------------------------------------

    def handle(self, request: Any) -> bool:
        """Record one request; return True when it needs an answer."""
        raise NotImplementedError

    async def respond(self, snapshot: Snapshot, snapshot_changed: bool) -> None:
        """Send everything that is due, in push order."""
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------

    @property
    def node(self) -> str:
        assert self.status is not None
        return self.status.node

    def log_fields(self, type_url: str = "", **fields: str) -> dict[str, str]:
        """``extra=`` for a log line about this stream: the fields a JSON log is filtered on
        (see ``zpilot.logs``); the text format shows only the message."""
        out = {"node": self.status.node, "conn": self.status.id} if self.status else {"peer": self.peer}
        if type_url:
            out["type_url"] = type_url
        out.update(fields)
        return out

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def note_requested(self, type_url: str) -> None:
        self._requested.add(type_url)

    def expect(self, *type_urls: str) -> None:
        """A first request of these types is due soon: hold later types back for it a little."""
        deadline = time.monotonic() + self.options.gather_seconds
        for type_url in type_urls:
            if type_url not in self._requested and type_url not in self._expected:
                self._expected[type_url] = deadline

    def client_reconnected(self) -> None:
        """The first request reported versions: the client had config and sends every type at once."""
        self.expect(*PUSH_ORDER)

    def hold(self, type_url: str) -> bool:
        """Whether to hold ``type_url`` back for now, waiting for a request that precedes it."""
        if not self._expected:
            return False
        now = time.monotonic()
        earlier = PUSH_ORDER[: PUSH_ORDER.index(type_url)]
        waits = [self._expected[t] for t in earlier if t in self._expected and t not in self._requested]
        waits = [deadline for deadline in waits if deadline > now]
        if not waits:
            return False
        if self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(max(waits) - now, self._end_hold)
        return True

    def _end_hold(self) -> None:
        self._hold_timer = None
        self._wake.set()

    def check_type(self, type_url: str) -> None:
        if not type_url:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "request without type_url (ADS needs one)", "no_type")
        if type_url not in SERVED_TYPES:
            served = ", ".join(sorted(SERVED_TYPES))
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown type URL {type_url[:200]!r}: this server serves {served}",
                "unknown_type",
            )

    def snapshot(self) -> Snapshot:
        snapshot = self.cache.get_snapshot(self.node)
        if snapshot is None:
            if not self._warned_unknown:
                self._warned_unknown = True
                log.warning(
                    "node %r (%s stream %s from %s) is not in the model: serving it an empty config",
                    self.node, self.mode, self.status.id if self.status else "?", self.peer,
                    extra=self.log_fields(),
                )
                self.metrics.unknown_nodes.inc()
            if self.status is not None:
                self.status.known_node = False
            return Snapshot.empty(self.node)
        if self.status is not None:
            self.status.known_node = snapshot.known
        return snapshot

    def record_sent(
        self, type_url: str, *, version: str, nonce: str, count: int, size: int, snapshot: Snapshot, pushed: bool
    ) -> None:
        """Book-keeping after a response went out: syncz, metrics and the response log."""
        assert self.status is not None
        ts = self.status.type(type_url)
        ts.last_sent_version, ts.last_sent_nonce = version, nonce
        ts.last_sent_at, ts.last_sent_resources = time.time(), count
        ts.sent_count += 1
        kind = short_name(type_url)
        self.metrics.pushes.inc(kind, self.mode)
        self.metrics.push_bytes.inc(kind, amount=size)
        if pushed:  # caused by a model change, not by a request: that is what push latency measures
            self.metrics.push_latency.observe(max(0.0, time.monotonic() - snapshot.changed_at), kind)
        log.info(
            "sent %s to node=%s conn=%s mode=%s version=%s nonce=%s resources=%d bytes=%d",
            kind, self.node, self.status.id, self.mode, version, nonce, count, size,
            extra=self.log_fields(type_url, version=version, nonce=nonce),
        )

    def record_ack(self, type_url: str, nonce: str) -> None:
        assert self.status is not None
        ts = self.status.type(type_url)
        ts.acked_version, ts.acked_nonce, ts.acked_at = ts.last_sent_version, nonce, time.time()
        self.metrics.acks.inc(short_name(type_url))

    def record_nack(self, type_url: str, nonce: str, code: int, message: str) -> None:
        assert self.status is not None
        ts = self.status.type(type_url)
        version = ts.last_sent_version if nonce == ts.last_sent_nonce else ""
        if len(message) > MAX_ERROR_CHARS:  # the client's text: keep syncz and logs bounded
            message = message[:MAX_ERROR_CHARS] + f"... ({len(message)} characters)"
        ts.last_nack = Nack(version=version, nonce=nonce, error=message, code=code)
        ts.nack_count += 1
        self.metrics.nacks.inc(short_name(type_url))
        log.warning(
            "node=%s conn=%s rejected %s version=%s nonce=%s: %s",
            self.node, self.status.id, short_name(type_url), version or "?", nonce, message,
            extra=self.log_fields(type_url, version=version, nonce=nonce),
        )

    def record_stale(self, type_url: str, nonce: str) -> None:
        self.metrics.stale_requests.inc(short_name(type_url))
        log.debug("node=%s ignored a stale %s request (nonce %r)", self.node, short_name(type_url), nonce,
                  extra=self.log_fields(type_url, nonce=nonce))

    # -- the stream -------------------------------------------------------------------------

    def _parse(self, raw: bytes) -> Any:
        try:
            return self.request_type.FromString(raw)
        except (DecodeError, ValueError, TypeError) as exc:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"cannot parse {self.request_type.DESCRIPTOR.full_name}: {exc}",
                "unparseable",
            ) from exc

    async def run(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """Serve the stream until the client closes it or a request is refused."""
        self._context = context
        iterator = requests.__aiter__()
        watch = None
        reader: asyncio.Task | None = None
        try:
            try:
                first = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:  # e.g. an oversized first message: gRPC already ended the RPC
                log.info("%s stream from %s ended before its first request: %s", self.mode, self.peer, exc,
                         extra=self.log_fields())
                return
            try:
                request = self._parse(first)
                try:
                    name = node_name(request.node)
                except NodeIdentityError as exc:
                    raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), "no_node") from exc
                self.status = ConnectionStatus(node=name, mode=self.mode, peer=self.peer, node_id=request.node.id)
                self.registry.add(self.status)
                self.metrics.connections.inc(self.mode)
                self.metrics.connections_total.inc(self.mode)
                log.info("%s stream %s opened by node=%s id=%r peer=%s", self.mode, self.status.id, name,
                         request.node.id, self.peer, extra=self.log_fields(peer=self.peer))
                watch = self.cache.watch(name)
                self._handle(request)
            except StreamError as exc:
                await self._refuse(exc, context)
                return
            reader = asyncio.create_task(self._read(iterator), name=f"xds-reader-{self.status.id}")
            watcher = asyncio.create_task(self._watch(watch), name=f"xds-watch-{self.status.id}")
            try:
                await self._send_loop(context)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        finally:
            if self._hold_timer is not None:
                self._hold_timer.cancel()
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if watch is not None:
                watch.close()
            if self.status is not None:
                self.registry.remove(self.status)
                self.metrics.connections.dec(self.mode)
                log.info("%s stream %s of node=%s closed", self.mode, self.status.id, self.status.node,
                         extra=self.log_fields())

    def _handle(self, request: Any) -> None:
        if self.handle(request):
            self._wake.set()

    async def _read(self, iterator: AsyncIterator[bytes]) -> None:
        try:
            async for raw in iterator:
                self._handle(self._parse(raw))
        except StreamError as exc:
            self._error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the transport failed (oversized message, reset): the stream is over
            log.info("%s stream %s: read ended: %s", self.mode, self.status.id if self.status else "?", exc,
                     extra=self.log_fields())
        finally:
            self._closed = True
            self._wake.set()

    async def _watch(self, watch: Any) -> None:
        while True:
            await watch.wait()
            self._snapshot_changed = True
            self._wake.set()

    async def _send_loop(self, context: grpc.aio.ServicerContext) -> None:
        self._wake.set()  # answer the first request
        while True:
            await self._wake.wait()
            for _ in range(self.options.drain_yields):
                await asyncio.sleep(0)  # let the reader record requests that arrived together
            self._wake.clear()
            if self._error is not None:
                await self._refuse(self._error, context)
                return
            if self._closed:
                return
            changed, self._snapshot_changed = self._snapshot_changed, False
            await self.respond(self.snapshot(), changed)

    async def write(self, data: bytes) -> None:
        """Send one serialized response on this stream."""
        assert self._context is not None
        await self._context.write(data)

    async def _refuse(self, exc: StreamError, context: grpc.aio.ServicerContext) -> None:
        self.metrics.rejected_requests.inc(exc.reason)
        where = f"conn={self.status.id} node={self.status.node}" if self.status else f"peer={self.peer}"
        log.warning("%s stream %s: refused: %s", self.mode, where, exc.message, extra=self.log_fields())
        if self.status is not None:
            self.status.record_error(exc.message)
        await context.abort(exc.code, exc.message)

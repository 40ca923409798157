"""What SotW and delta ADS streams share: reading, node identity, wake-ups, clear errors.

Each stream runs two coroutines. The reader parses requests and updates the stream's
subscription state; the sender (the RPC's own task) waits for a wake-up (a request that needs
an answer, or a change of the node's snapshot) and then sends whatever is due, in push order.
Because requests are only recorded by the reader and answered by the sender, four requests
arriving at once on reconnect are still answered CDS, EDS, SDS, LDS.

A request the server cannot serve (unparseable, no node, unknown type URL) ends that stream
with INVALID_ARGUMENT and a message saying why; nothing is shared between streams, so no other
stream notices.

What happens on the stream (opened, request, response, ACK, NACK, ...) is reported to a
:class:`~zpilot.xds.observer.StreamObserver`; metrics and the sync status are observers, the
stream knows neither.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable

import grpc
from google.protobuf.message import DecodeError, Message

from .cache import SnapshotReader
from .node_identity import NodeIdentityError, node_name
from .observer import Response, StreamInfo, StreamObserver
from .order import PUSH_ORDER, SECRET_TYPE, SERVED_TYPES, short_name
from .snapshot import Snapshot
from .subscription import Subscription

log = logging.getLogger("zpilot.xds")

#: NACK error messages longer than this are cut (they come from the client).
MAX_ERROR_CHARS = 4096
#: A log line names at most this many resource names (the client chose them), each cut to this length.
LOGGED_NAMES = 8
LOGGED_NAME_CHARS = 200

_ids = itertools.count(1)


def loggable_names(names: list[str]) -> str:
    """A bounded rendering of client-chosen names for a log line."""
    shown = [n if len(n) <= LOGGED_NAME_CHARS else n[:LOGGED_NAME_CHARS] + "..." for n in names[:LOGGED_NAMES]]
    more = f" and {len(names) - LOGGED_NAMES} more" if len(names) > LOGGED_NAMES else ""
    return f"{shown}{more}"


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
        observer: StreamObserver,
        options: StreamOptions,
        peer: str = "",
    ) -> None:
        self.cache = cache
        self.observer = observer
        self.options = options
        self.peer = peer
        self.id = f"conn-{next(_ids)}"
        self.info: StreamInfo | None = None  # set by the first request
        self.subscriptions: dict[str, Subscription] = {t: Subscription(t) for t in PUSH_ORDER}
        self._reported: dict[str, list[str] | None] = {}  # type -> subscription last reported
        self._wake = asyncio.Event()
        self._snapshot_changed = False
        self._error: StreamError | None = None
        self._closed = False
        self._nonce = 0
        self._known_node: bool | None = None
        self._empty: Snapshot | None = None  # what an unknown node is served (one, so its change time holds)
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
        assert self.info is not None
        return self.info.node

    def log_fields(self, type_url: str = "", **fields: str) -> dict[str, str]:
        """``extra=`` for a log line about this stream: the fields a JSON log is filtered on
        (see ``zpilot.logs``); the text format shows only the message."""
        out = {"node": self.info.node, "conn": self.id} if self.info else {"peer": self.peer}
        if type_url:
            out["type_url"] = type_url
        out.update(fields)
        return out

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def accept(self, type_url: str) -> Subscription:
        """Check a request's type (refusing the stream for one not served) and note the request."""
        if not type_url:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "request without type_url (ADS needs one)", "no_type")
        if type_url not in SERVED_TYPES:
            served = ", ".join(sorted(SERVED_TYPES))
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown type URL {type_url[:200]!r}: this server serves {served}",
                "unknown_type",
            )
        assert self.info is not None
        self._requested.add(type_url)
        self.observer.request_received(self.info, type_url)
        return self.subscriptions[type_url]

    def report_subscription(self, subscription: Subscription) -> None:
        """Tell the observer the type's subscription, when it is new or changed."""
        assert self.info is not None
        view = subscription.view()
        if subscription.type_url not in self._reported or self._reported[subscription.type_url] != view:
            self._reported[subscription.type_url] = view
            self.observer.subscription_changed(self.info, subscription.type_url, view)

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

    def snapshot(self) -> Snapshot:
        assert self.info is not None
        snapshot = self.cache.get_snapshot(self.node)
        if snapshot is None:
            if self._empty is None:
                if self._known_node is not False:
                    log.warning(
                        "node %r (%s stream %s from %s) is not in the model: serving it an empty config",
                        self.node, self.mode, self.id, self.peer, extra=self.log_fields(),
                    )
                self._empty = Snapshot.empty(self.node)
            snapshot = self._empty
        else:
            self._empty = None
        if snapshot.known != self._known_node:
            self._known_node = snapshot.known
            self.observer.node_known(self.info, snapshot.known)
        return snapshot

    def push_latency(self, subscription: Subscription, snapshot: Snapshot) -> float | None:
        """Bring the type up to ``snapshot``: the latency of the change it delivers, if it is new."""
        if subscription.bring_up_to(snapshot.changed_at):
            return max(0.0, time.monotonic() - snapshot.changed_at)
        return None

    def record_sent(
        self, type_url: str, *, version: str, nonce: str, count: int, size: int, push_latency: float | None
    ) -> None:
        """Report a response that is about to go out, and log it."""
        assert self.info is not None
        self.observer.response_sent(self.info, Response(type_url, version, nonce, count, size, push_latency))
        log.info(
            "sent %s to node=%s conn=%s mode=%s version=%s nonce=%s resources=%d bytes=%d",
            short_name(type_url), self.node, self.id, self.mode, version, nonce, count, size,
            extra=self.log_fields(type_url, version=version, nonce=nonce),
        )

    def record_ack(self, subscription: Subscription, nonce: str) -> None:
        assert self.info is not None
        self.observer.ack(self.info, subscription.type_url, subscription.sent_version or "", nonce)

    def record_nack(self, subscription: Subscription, nonce: str, code: int, message: str) -> None:
        assert self.info is not None
        version = (subscription.sent_version or "") if nonce and nonce == subscription.sent_nonce else ""
        if len(message) > MAX_ERROR_CHARS:  # the client's text: keep syncz and logs bounded
            message = message[:MAX_ERROR_CHARS] + f"... ({len(message)} characters)"
        self.observer.nack(self.info, subscription.type_url, version, nonce, code, message)
        log.warning(
            "node=%s conn=%s rejected %s version=%s nonce=%s: %s",
            self.node, self.id, short_name(subscription.type_url), version or "?", nonce[:100], message,
            extra=self.log_fields(subscription.type_url, version=version, nonce=nonce),
        )

    def record_stale(self, type_url: str, nonce: str) -> None:
        assert self.info is not None
        self.observer.stale_request(self.info, type_url, nonce)
        log.debug("node=%s ignored a stale %s request (nonce %r)", self.node, short_name(type_url), nonce[:100],
                  extra=self.log_fields(type_url, nonce=nonce))

    def note_missing(self, subscription: Subscription, missing: Iterable[str], answer: str) -> None:
        """Requested names the config lacks. Never served on this stream: reported (for a secret,
        an identity without a pod on this node). Served before: the config moved on and the client
        has yet to catch up (e.g. EDS names of clusters the CDS response just removed), a debug line."""
        never, before = subscription.new_missing(missing)
        kind = short_name(subscription.type_url)
        if before:
            log.debug("node=%s still asks for %s %s, served before and removed since: %s",
                      self.node, kind, loggable_names(before), answer, extra=self.log_fields(subscription.type_url))
        if never:
            assert self.info is not None
            self.observer.unserved_names(self.info, subscription.type_url, never)
            secret = subscription.type_url == SECRET_TYPE
            (log.warning if secret else log.info)(
                "node=%s asked for %s %s that its config does not have%s: %s",
                self.node, kind, loggable_names(never),
                " (a secret of an identity without a pod on this node)" if secret else "", answer,
                extra=self.log_fields(subscription.type_url),
            )

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
                self.info = StreamInfo(id=self.id, node=name, node_id=request.node.id, mode=self.mode, peer=self.peer)
                self.observer.stream_opened(self.info)
                log.info("%s stream %s opened by node=%s id=%r peer=%s", self.mode, self.id, name,
                         request.node.id, self.peer, extra=self.log_fields(peer=self.peer))
                watch = self.cache.watch(name)
                self._handle(request)
            except StreamError as exc:
                await self._refuse(exc, context)
                return
            reader = asyncio.create_task(self._read(iterator), name=f"xds-reader-{self.id}")
            watcher = asyncio.create_task(self._watch(watch), name=f"xds-watch-{self.id}")
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
            if self.info is not None:
                self.observer.stream_closed(self.info)
                log.info("%s stream %s of node=%s closed", self.mode, self.id, self.info.node,
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
            log.info("%s stream %s: read ended: %s", self.mode, self.id, exc, extra=self.log_fields())
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
        self.observer.stream_refused(self.info, exc.reason, exc.message)
        where = f"conn={self.id} node={self.info.node}" if self.info else f"peer={self.peer}"
        log.warning("%s stream %s: refused: %s", self.mode, where, exc.message, extra=self.log_fields())
        await context.abort(exc.code, exc.message)

"""What SotW and delta ADS streams share: reading, node identity, wake-ups, clear errors.

Each stream runs two coroutines. The reader parses requests and updates the stream's
subscription state; the sender (the RPC's own task) waits for a wake-up (a request that needs
an answer, or a change of the node's snapshot, of which the cache tells the stream by a call)
and then sends whatever is due, in push order.
Because requests are only recorded by the reader and answered by the sender, four requests
arriving at once on reconnect are still answered CDS, EDS, SDS, LDS.

A request the server cannot serve (unparseable, no node, unknown type URL, beyond a limit of
limits.py) ends that stream with INVALID_ARGUMENT or RESOURCE_EXHAUSTED and a message saying
why; nothing is shared between streams, so no other stream notices. A first request naming a
node the connection's credential does not prove (auth.py) ends it with PERMISSION_DENIED before
anything of that node is read or sent. Requests are decoded by
decode.py, which reads only what the server needs and checks the limits first.

Everything a client chose (node id, names, nonces, NACK text, type URLs, user agent) is bounded
before it is logged (``zpilot.logs.bounded``): a line about a request stays under about 1.5 KB
whatever the request holds, and a request causes a few lines at most (a NACK repeated for the
same response: a DEBUG line).

Cleanup cannot be skipped: :meth:`Stream.close` (unregister from the cache and the observers,
cancel the helper tasks) is synchronous and idempotent, runs first in the stream's ``finally``
before anything is awaited, and once more when gRPC reports the RPC done. gRPC cancels a
handler when its client goes; a cancellation that landed while an older cleanup awaited its
tasks used to skip the rest and leave the stream registered forever (issue 11.6).

A change of the snapshot is sent before anything else is done: while the streams it woke are
sending it (a *push burst*, push_burst.py, shared by the server's streams and bounded in time),
a request that arrives is read but handled only afterwards, in order.

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

from ..logs import bounded
from .auth import Denied, Principal, RepeatedRefusals
from .cache import SnapshotReader
from .decode import Request, RequestError, decode
from .limits import Limits
from .node_identity import NodeIdentityError, resolve_node_name
from .observer import Response, StreamInfo, StreamObserver
from .order import PUSH_ORDER, SECRET_TYPE, SERVED_TYPES, short_name
from .push_burst import PushBurst
from .send_budget import SendBudget
from .snapshot import Snapshot
from .subscription import Subscription

log = logging.getLogger("zpilot.xds")

#: A log line names at most this many resource names (the client chose them), each cut to this length.
LOGGED_NAMES = 8
LOGGED_NAME_CHARS = 128
#: Longest client value (node id, nonce, type URL, user agent) a log line quotes.
LOGGED_VALUE_CHARS = 256
#: Longest NACK text a log line quotes (/debug/syncz keeps limits.NACK_MESSAGE_CHARS).
LOGGED_NACK_CHARS = 1024

_ids = itertools.count(1)


def loggable_names(names: list[str]) -> str:
    """A bounded rendering of client-chosen names for a log line."""
    shown = [bounded(n, LOGGED_NAME_CHARS) for n in names[:LOGGED_NAMES]]
    more = f" and {len(names) - LOGGED_NAMES} more" if len(names) > LOGGED_NAMES else ""
    return f"{shown}{more}"


@dataclass(frozen=True)
class StreamOptions:
    """Knobs of a stream (set from :class:`~zpilot.xds.server.ServerOptions`)."""

    control_plane_id: str = "zpilot"
    limits: Limits = Limits()
    #: Yields to the reader before answering a request, so requests that arrived together are
    #: answered together (not before sending a change of the snapshot: no request waits for it).
    drain_yields: int = 5
    #: On reconnect a client reports the versions it has and sends every request at once (possibly
    #: out of order); for this long, a type is held back while a type that precedes it in push
    #: order has not been requested yet, so the answers still go CDS, EDS, SDS, LDS. (On a first
    #: connect nothing is held: Envoy asks for each type when it is ready for it, e.g. for a TLS
    #: cluster's secrets before its endpoints, and gets each answer at once.)
    gather_seconds: float = 0.1
    #: The server's bound on response bytes being written at once, shared by its streams (None: unbounded).
    send_budget: SendBudget | None = None
    #: The server's streams sending a change now, shared by its streams (push_burst.py; None: none kept).
    push_burst: PushBurst | None = None


#: Refusals a client repeats (a revoked ztunnel retrying every 2 s): logged once a minute per credential and
#: client address, so that a stolen copy used from elsewhere is not hidden behind the node's own retries.
REPEATED_REFUSALS = RepeatedRefusals()


def _peer_address(peer: str) -> str:
    """A gRPC peer without its port (``ipv4:10.0.0.1:51234`` -> ``ipv4:10.0.0.1``): each retry has a new one."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


async def deny(
    context: grpc.aio.ServicerContext, observer: StreamObserver, denied: Denied, *, mode: str, peer: str,
    node: str | None = None,
) -> None:
    """End a stream whose credential does not allow it (auth.py): reported, logged (a repeated one at most
    once per interval, with the count of those not logged), aborted."""
    observer.access_denied(peer, node, denied.reason, denied.message)
    key = denied.repeat_key
    unlogged = REPEATED_REFUSALS.log(None if key is None else f"{key} {bounded(_peer_address(peer), LOGGED_VALUE_CHARS)}")
    if unlogged is not None:
        fields = {"peer": peer} if node is None else {"peer": peer, "node": node}
        log.warning("%s stream from %s%s refused (%s): %s%s", mode, bounded(peer, LOGGED_VALUE_CHARS),
                    f" for node={bounded(node, LOGGED_VALUE_CHARS)}" if node is not None else "", denied.reason,
                    denied.message, f" (and {unlogged} more refusals of it not logged)" if unlogged else "",
                    extra=fields)
    await context.abort(denied.code, denied.message)


class Stream:
    """Base of one ADS stream; subclasses implement :meth:`handle` and :meth:`respond`."""

    mode = ""

    def __init__(
        self,
        cache: SnapshotReader,
        observer: StreamObserver,
        options: StreamOptions,
        peer: str = "",
        *,
        principal: Principal,
    ) -> None:
        self.cache = cache
        self.observer = observer
        self.options = options
        self.peer = peer
        self.principal = principal  # what the connection proved: the only node it may be served
        self._claimed_node: str | None = None  # the node the first request named
        self.id = f"conn-{next(_ids)}"
        self.info: StreamInfo | None = None  # set by the first request
        self.subscriptions: dict[str, Subscription] = {t: Subscription(t) for t in PUSH_ORDER}
        self._reported: dict[str, int] = {}  # type -> subscription revision last reported
        self._wake = asyncio.Event()
        self._snapshot_changed = False
        self._asked = False  # a request needing an answer was recorded since the last answer
        self._responding = False  # the sender is writing a response (see _snapshot_changed_now)
        self._error: RequestError | None = None
        self._reader_done = False
        self._nonce = 0
        self._known_node: bool | None = None
        self._empty: Snapshot | None = None  # what an unknown node is served (one, so its change time holds)
        self._withheld_logged = False
        self.started_at = time.monotonic()
        self._requested: set[str] = set()  # types requested at least once on this stream
        self._expected: dict[str, float] = {}  # type -> until when its first request is waited for
        self._hold_timer: asyncio.TimerHandle | None = None
        self._context: grpc.aio.ServicerContext | None = None
        # What close() undoes: set together, in one synchronous step, by _open().
        self._watch: Any = None
        self._opened = False
        self._tasks: list[asyncio.Task] = []
        self._finished = False
        #: (type, nonce) of NACKs logged at WARNING; a NACK names a response (or none): at most one
        #: entry per response sent, plus one.
        self._nacks_logged: set[tuple[str, str]] = set()

    # -- to implement -----------------------------------------------------------------------

    def handle(self, request: Request) -> bool:
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
        out.update((key, bounded(value, LOGGED_VALUE_CHARS)) for key, value in fields.items())
        return out

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def accept(self, type_url: str) -> Subscription:
        """Check a request's type (refusing the stream for one not served) and note the request."""
        if not type_url:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "request without type_url (ADS needs one)", "no_type")
        if type_url not in SERVED_TYPES:
            served = ", ".join(sorted(SERVED_TYPES))
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown type URL {bounded(type_url, LOGGED_VALUE_CHARS)!r}: this server serves {served}",
                "unknown_type",
            )
        assert self.info is not None
        self._requested.add(type_url)
        self.observer.request_received(self.info, type_url)
        return self.subscriptions[type_url]

    def report_subscription(self, subscription: Subscription) -> None:
        """Tell the observer the type's subscription, when it is new or changed."""
        assert self.info is not None
        if self._reported.get(subscription.type_url) != subscription.revision:
            self._reported[subscription.type_url] = subscription.revision
            self.observer.subscription_changed(self.info, subscription.type_url, subscription.view())

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

    def snapshot(self) -> Snapshot | None:
        """What the node is served now: its snapshot, an empty one for a node the model lacks, or
        None while the node is withheld (in the model, but no config of it could be produced yet):
        then nothing is sent and requests wait, since an empty config would make an Envoy that
        reconnects with good config from an earlier server drop its listeners."""
        assert self.info is not None
        snapshot = self.cache.get_snapshot(self.node)
        if snapshot is None and self.cache.withheld(self.node) is not None:
            if not self._withheld_logged:
                self._withheld_logged = True
                log.warning(
                    "node %r (%s stream %s from %s) has no config that can be sent (its translation failed,"
                    " see /debug/registryz): sending nothing until it has", self.node, self.mode, self.id,
                    self.peer, extra=self.log_fields(),
                )
            self._empty = None
            if self._known_node is not True:
                self._known_node = True
                self.observer.node_known(self.info, True)
            return None
        self._withheld_logged = False
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

    @staticmethod
    def pushed(subscription: Subscription, snapshot: Snapshot) -> float | None:
        """Bring the type up to ``snapshot``: the time of the model change its next response pushes,
        if that change is new to it (its latency is taken as the response is sent: :meth:`record_sent`)."""
        return snapshot.changed_at if subscription.bring_up_to(snapshot.changed_at) else None

    def record_sent(
        self, type_url: str, *, version: str, nonce: str, count: int, size: int, pushed: float | None
    ) -> None:
        """Report a response that is about to go out (with the push latency of the change it pushes,
        ``pushed`` from :meth:`pushed`), and log it."""
        assert self.info is not None
        latency = None if pushed is None else max(0.0, time.monotonic() - pushed)
        self.observer.response_sent(self.info, Response(type_url, version, nonce, count, size, latency))
        if log.isEnabledFor(logging.INFO):  # its fields made only for a line that is written (not by default)
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
        self.observer.nack(self.info, subscription.type_url, version, nonce, code, message)
        fields = self.log_fields(subscription.type_url, version=version, nonce=nonce)
        kind, shown_nonce = short_name(subscription.type_url), bounded(nonce, LOGGED_VALUE_CHARS)
        if (subscription.type_url, nonce) in self._nacks_logged:
            # A client repeating its NACK adds to the count (syncz, metrics), not to the log.
            log.debug("node=%s conn=%s rejected %s nonce=%s again", self.node, self.id, kind, shown_nonce,
                      extra=fields)
            return
        self._nacks_logged.add((subscription.type_url, nonce))
        log.warning("node=%s conn=%s rejected %s version=%s nonce=%s: %s", self.node, self.id, kind,
                    version or "?", shown_nonce, bounded(message, LOGGED_NACK_CHARS), extra=fields)

    def record_stale(self, type_url: str, nonce: str) -> None:
        assert self.info is not None
        self.observer.stale_request(self.info, type_url, nonce)
        log.debug("node=%s ignored a stale %s request (nonce %r)", self.node, short_name(type_url),
                  bounded(nonce, LOGGED_VALUE_CHARS), extra=self.log_fields(type_url, nonce=nonce))

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

    def decode(self, raw: bytes) -> Request:
        return decode(raw, delta=self.mode == "delta", limits=self.options.limits)

    async def run(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """Serve the stream until the client closes it or a request is refused; then close it,
        whatever ended it."""
        self._context = context
        try:
            await self._serve(requests.__aiter__(), context)
        finally:
            self.close()  # first, before any await: a cancellation cannot skip it
            # Only waits for the helper tasks close() cancelled; if a cancellation lands here,
            # they still end on their own, and nothing is left registered.
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except Exception as exc:  # e.g. an oversized first message: gRPC already ended the RPC
            log.info("%s stream from %s ended before its first request: %s", self.mode, self.peer,
                     bounded(exc, LOGGED_NACK_CHARS), extra=self.log_fields())
            return
        try:
            request = self.decode(first)
            self._open(request)
            self._handle(request)
        except RequestError as exc:
            await self._refuse(exc, context)
            return
        except Denied as denied:  # the node named is not the credential's: nothing was registered or sent
            await deny(context, self.observer, denied, mode=self.mode, peer=self.peer, node=self._claimed_node)
            return
        self._tasks = [asyncio.create_task(self._read(iterator), name=f"xds-reader-{self.id}")]
        await self._send_loop(context)

    def _open(self, request: Request) -> None:
        """Name the stream's node and register the stream (cache watch, observers) in one
        synchronous step, so :meth:`close` finds both or neither."""
        client = request.node
        try:
            name = resolve_node_name(client.id if client else "", client.metadata_name if client else None)
        except NodeIdentityError as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), "no_node") from exc
        assert client is not None
        self._claimed_node = name
        self.principal.check(name)  # Denied: before the stream is registered or anything is sent
        self.info = StreamInfo(id=self.id, node=name, node_id=client.id, mode=self.mode, peer=self.peer,
                               user_agent=client.user_agent)
        self._watch = self.cache.watch(name, self._snapshot_changed_now)
        self._opened = True
        self.observer.stream_opened(self.info)
        log.info("%s stream %s opened by node=%s id=%r peer=%s user_agent=%r (%s)", self.mode, self.id, name,
                 bounded(client.id, LOGGED_VALUE_CHARS), self.peer, client.user_agent, self.principal.credential,
                 extra=self.log_fields(peer=self.peer))

    def close(self) -> None:
        """Undo everything the stream registered: synchronous (no await, so a cancellation
        cannot interrupt it) and idempotent (the RPC's done callback calls it again)."""
        if self._finished:
            return
        self._finished = True
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        for task in self._tasks:
            task.cancel()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self.options.push_burst is not None:
            self.options.push_burst.end(self)
        if self._opened and self.info is not None:
            self._opened = False
            self.observer.stream_closed(self.info)
            log.info("%s stream %s of node=%s closed", self.mode, self.id, self.info.node, extra=self.log_fields())

    def _handle(self, request: Request) -> None:
        if self.handle(request):
            self._asked = True
            self._wake.set()

    async def _read(self, iterator: AsyncIterator[bytes]) -> None:
        burst = self.options.push_burst
        try:
            async for raw in iterator:
                if burst is not None and burst.active:
                    await burst.over()  # the streams still sending a change go first (push_burst.py)
                self._handle(self.decode(raw))
        except RequestError as exc:
            self._error = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the transport failed (oversized message, reset): the stream is over
            log.info("%s stream %s: read ended: %s", self.mode, self.id, bounded(exc, LOGGED_NACK_CHARS),
                     extra=self.log_fields())
        finally:
            self._reader_done = True
            self._wake.set()

    def _snapshot_changed_now(self) -> None:
        """The node's snapshot changed (the cache calls this, on the loop's thread): wake the sender."""
        burst = self.options.push_burst
        if burst is not None and not self._responding:
            # a stream still writing an earlier response (a client that reads slowly, or not at
            # all) sends this change whenever that write is done: it would only hold the burst
            burst.begin(self)
        self._snapshot_changed = True
        self._wake.set()

    async def _send_loop(self, context: grpc.aio.ServicerContext) -> None:
        self._wake.set()  # answer the first request
        burst = self.options.push_burst
        while True:
            await self._wake.wait()
            if self._asked or not self._snapshot_changed:
                for _ in range(self.options.drain_yields):
                    await asyncio.sleep(0)  # let the reader record requests that arrived together
            self._wake.clear()
            self._asked = False
            if self._error is not None:
                await self._refuse(self._error, context)
                return
            if self._reader_done:
                return
            changed, self._snapshot_changed = self._snapshot_changed, False
            snapshot = self.snapshot()
            if snapshot is not None:  # else withheld: the requests stay pending until the node has config
                self._responding = True
                try:
                    await self.respond(snapshot, changed)
                finally:
                    self._responding = False
            if changed and burst is not None:
                burst.end(self)

    async def write(self, chunks: list[bytes]) -> None:
        """Send one response on this stream, given as the byte strings that joined serialize it
        (``wire.*_chunks``): joined only once the server's send budget has room for it, and
        dropped as soon as gRPC has written it."""
        assert self._context is not None
        budget = self.options.send_budget
        if budget is None:
            await self._context.write(b"".join(chunks))
            return
        size = sum(map(len, chunks))
        await budget.acquire(size)
        try:
            await self._context.write(b"".join(chunks))
        finally:
            budget.release(size)

    async def _refuse(self, exc: RequestError, context: grpc.aio.ServicerContext) -> None:
        self.observer.stream_refused(self.info, exc.reason, exc.message)
        where = f"conn={self.id} node={self.info.node}" if self.info else f"peer={self.peer}"
        log.warning("%s stream %s: refused: %s", self.mode, where, bounded(exc.message, LOGGED_NACK_CHARS),
                    extra=self.log_fields())
        await context.abort(exc.code, exc.message)

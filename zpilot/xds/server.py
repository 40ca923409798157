"""The ADS gRPC server: grpc.aio, cached bytes out, no config built here.

Both RPCs of ``envoy.service.discovery.v3.AggregatedDiscoveryService`` are registered with
identity (de)serializers: responses are already serialized by the cache (wire.py), and requests
are parsed by the stream so that a request that cannot be parsed gets a clear error on that
stream instead of a generic gRPC failure.

What a client may ask is bounded (limits.py): gRPC itself refuses a message over
``max_request_bytes`` and holds a connection to ``max_streams_per_connection`` concurrent
streams; the server refuses a stream over ``max_streams`` before reading it; the stream refuses
a request over the other limits.

Options go to gRPC in one place (:meth:`ServerOptions.grpc_options`), and the port is added in
one place (:meth:`AdsServer._add_port`), with its transport security. Who may connect is
:class:`~zpilot.xds.security.XdsSecurity`'s business: the port is TLS (or, with
``--insecure-xds`` only, plaintext), and every stream is authenticated before it reads its first
request (auth.py). A stream authenticated by a node certificate that the CA's revocation list
names later (``zpilot revoke``, revocations.py) is ended at once, whatever it is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import grpc

from .. import contract
from .auth import Denied, Principal
from .cache import SnapshotReader
from .delta import DeltaStream
from .limits import Limits, explain
from .observer import StreamObserver
from .push_burst import PushBurst
from .security import XdsSecurity
from .sockets import UNIX_PREFIX, describe, ensure_bindable, owner_only
from .sotw import SotwStream
from .send_budget import DEFAULT_BUDGET_BYTES, SendBudget
from .stream import Stream, StreamOptions, deny

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
MiB = 1024 * 1024
#: Streams refused for ``max_streams`` are logged at most this often (seconds), with a count.
REFUSAL_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class ServerOptions:
    """gRPC settings, defaulting to what istiod uses (xds-protocol-notes.md)."""

    host: str = "0.0.0.0"  # or "unix:/path" for a Unix socket (port then unused)
    port: int = contract.PORT_XDS
    #: What one client may ask: request size, names, streams (see limits.py).
    limits: Limits = field(default_factory=Limits)
    #: A node's whole config of one type goes in one response.
    max_send_message_bytes: int = 512 * MiB
    #: Bytes of responses written at once over all streams before a large one waits (send_budget.py).
    send_budget_bytes: int = DEFAULT_BUDGET_BYTES
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    #: Clients may ping this often without being told off (Envoy's own keepalive).
    min_client_ping_interval_ms: int = 10_000
    #: Streams are closed after this long (plus the grace) so clients rebalance across replicas.
    max_connection_age_ms: int = 30 * 60 * 1000
    max_connection_age_grace_ms: int = 10_000
    control_plane_id: str = "zpilot"

    def grpc_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_receive_message_length", self.limits.max_request_bytes),
            ("grpc.max_concurrent_streams", self.limits.max_streams_per_connection),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_client_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.max_connection_age_ms", self.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", self.max_connection_age_grace_ms),
            # gRPC sets SO_REUSEPORT by default: a second zpilot on the same port would then start
            # "fine" and silently share the Envoys with the first. Fail to bind instead.
            ("grpc.so_reuseport", 0),
        ]


def _identity(data: bytes) -> bytes:
    return data


class AdsServer:
    """Serves every node from a :class:`~zpilot.xds.cache.SnapshotReader`, reporting what its
    streams do to ``observer`` (metrics, sync status: see observer.py). ``security`` has no
    default: plaintext is a choice (``XdsSecurity.insecure()``), never an accident."""

    def __init__(
        self,
        cache: SnapshotReader,
        *,
        security: XdsSecurity,
        options: ServerOptions | None = None,
        observer: StreamObserver | None = None,
    ) -> None:
        self.cache = cache
        self.security = security
        self.options = options if options is not None else ServerOptions()
        self.observer = observer if observer is not None else StreamObserver()
        self.send_budget = SendBudget(self.options.send_budget_bytes)
        self.push_burst = PushBurst()
        self._stream_options = StreamOptions(control_plane_id=self.options.control_plane_id,
                                             limits=self.options.limits, send_budget=self.send_budget,
                                             push_burst=self.push_burst)
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.open_streams = 0  # RPCs being served, over all connections
        self._refused_unlogged = 0  # streams refused for max_streams since the last log line
        self._refusal_logged_at: float | None = None
        #: The streams a revocation may end: each one's principal and task, by the future that ends it (its Denied).
        self._revocable: dict[asyncio.Future, tuple[Principal, asyncio.Task]] = {}
        if security.revocations is not None:
            security.revocations.subscribe(self._end_revoked_streams)

    async def _serve(self, stream_class: type[Stream], requests, context: grpc.aio.ServicerContext) -> None:
        if self.open_streams >= self.options.limits.max_streams:
            await self._refuse_stream(context)
            return
        self.open_streams += 1  # counted and uncounted in synchronous steps: nothing can skip one
        try:
            peer = context.peer() or ""
            try:  # before anything is read: a stream that proves nothing is served nothing
                principal = await self.security.authenticator.authenticate(context)
            except Denied as exc:
                await deny(context, self.observer, exc, mode=stream_class.mode, peer=peer)
                return
            stream = stream_class(self.cache, self.observer, self._stream_options, peer, principal=principal)
            # Closing is idempotent; gRPC calls this when the RPC is over, however it ended.
            context.add_done_callback(lambda _context: stream.close())
            if self.security.revocations is None or principal.certificate is None:
                await stream.run(requests, context)
            else:
                await self._run_revocable(stream, principal, requests, context)
        finally:
            self.open_streams -= 1

    async def _run_revocable(self, stream: Stream, principal: Principal, requests,
                             context: grpc.aio.ServicerContext) -> None:
        """Run ``stream`` until it ends, or until its credential is revoked: then it is cancelled (its
        cleanup runs, whatever it was waiting for: a request, a write to a client that does not read) and the
        RPC ends with ``UNAUTHENTICATED``, counted and logged as a refusal."""
        revoked: asyncio.Future = asyncio.get_running_loop().create_future()
        run = asyncio.create_task(stream.run(requests, context), name=f"xds-revocable-{stream.id}")
        # should this handler be cancelled first, the stream's own end (an abort, a reset) is not reported
        run.add_done_callback(lambda task: task.cancelled() or task.exception())
        self._revocable[revoked] = (principal, run)
        try:
            await asyncio.wait((run, revoked), return_when=asyncio.FIRST_COMPLETED)
            if not revoked.done():
                run.result()  # its own end, or its abort, as if it had run in this task
                return
            await asyncio.gather(run, return_exceptions=True)  # cancelled as the revocation arrived
            if not run.cancelled():  # it had ended by itself just before (its abort, its client's end)
                run.result()
                return
            node = stream.info.node if stream.info is not None else None
            await deny(context, self.observer, revoked.result(), mode=stream.mode, peer=stream.peer, node=node)
        finally:
            self._revocable.pop(revoked, None)
            if not run.done():  # gRPC cancelled this handler (the client went): the stream goes too
                run.cancel()

    def _end_revoked_streams(self) -> None:
        """The revocation list changed: end every open stream whose certificate it now revokes."""
        revocations = self.security.revocations
        assert revocations is not None
        for ended, (principal, run) in list(self._revocable.items()):
            if ended.done():
                continue
            try:
                revocations.check(principal, open_stream=True)
            except Denied as denied:
                # Cancelled here, not once its handler wakes: a write the stream was already woken for (a push
                # in this same turn of the loop) would otherwise still go out with the revoked credential.
                run.cancel()
                ended.set_result(denied)

    async def _refuse_stream(self, context: grpc.aio.ServicerContext) -> None:
        """Refuse a stream over ``max_streams``, before reading anything from it."""
        limit = self.options.limits.max_streams
        message = f"too many ADS streams on this server; {explain('max_streams', limit)}"
        self.observer.stream_refused(None, "too_many_streams", message)
        self._refused_unlogged += 1
        now = time.monotonic()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            # A client retrying in a loop must not flood the log: one line per interval, with a count.
            log.warning("refused %d ADS stream(s) from %s and others: %s", self._refused_unlogged,
                        context.peer(), message)
            self._refused_unlogged, self._refusal_logged_at = 0, now
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    async def _sotw(self, requests, context: grpc.aio.ServicerContext) -> None:
        await self._serve(SotwStream, requests, context)

    async def _delta(self, requests, context: grpc.aio.ServicerContext) -> None:
        await self._serve(DeltaStream, requests, context)

    def _handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._sotw, request_deserializer=_identity, response_serializer=_identity
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._delta, request_deserializer=_identity, response_serializer=_identity
                ),
            },
        )

    async def start(self) -> int:
        """Bind and start; returns the bound port (useful with port 0)."""
        address = self.address
        try:
            # Our own bind first: a taken port is then our one clear error, not gRPC core's
            # log line followed by ours. (Should the port be taken in between, gRPC still fails.)
            ensure_bindable(self.options.host, self.options.port)
        except OSError as exc:
            raise OSError(f"cannot bind the xDS server to {address}: {exc.strerror or exc}") from None
        server = grpc.aio.server(options=self.options.grpc_options())
        server.add_generic_rpc_handlers((self._handler(),))
        # gRPC creates a Unix socket file itself: owner-only, like every socket of ours
        with owner_only(address[len(UNIX_PREFIX):]) if self.unix_socket else contextlib.nullcontext():
            try:
                port = self._add_port(server, address)
            except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
                raise OSError(f"cannot bind the xDS server to {address}: {exc}") from None
            if port == 0:
                raise OSError(f"cannot bind the xDS server to {address}")
            await server.start()
        self._server = server
        self.port = None if self.unix_socket else port
        log.info("ADS server listening on %s (%s)", address if self.unix_socket else f"{address} (port {port})",
                 self.describe_security())
        if self.security.tls is None:
            log.warning("ADS is PLAINTEXT and UNAUTHENTICATED (--insecure-xds): whoever reaches %s can claim any"
                        " node and receive its workloads' private keys; for development only", address)
        return port

    def _add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Listen on ``address`` (TLS unless plaintext was chosen); returns the bound port (0: failed)."""
        tls = self.security.tls
        if tls is None:
            return server.add_insecure_port(address)
        try:
            credentials = tls.credentials()
        except ValueError as exc:  # CertificateAuthorityError (an expired CA), CredentialError (a bad --xds-san)
            raise OSError(f"cannot issue the xDS server's certificate: {exc}") from None
        return server.add_secure_port(address, credentials)

    def describe_security(self) -> str:
        mode = self.security.mode
        if mode == "tls":
            return "TLS, node client certificates required"
        if mode == "token":
            return "TLS, ServiceAccount bearer tokens required"
        return "plaintext, unauthenticated"

    @property
    def unix_socket(self) -> bool:
        return self.options.host.startswith(UNIX_PREFIX)

    @property
    def address(self) -> str:
        """What gRPC binds: ``host:port``, ``[v6]:port`` or ``unix:/path`` (host given as ``unix:/path``)."""
        return describe(self.options.host, self.options.port)

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

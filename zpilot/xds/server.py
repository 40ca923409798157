"""The ADS gRPC server: grpc.aio, cached bytes out, no config built here.

Both RPCs of ``envoy.service.discovery.v3.AggregatedDiscoveryService`` are registered with
identity (de)serializers: responses are already serialized by the cache (wire.py), and requests
are parsed by the stream so that a request that cannot be parsed gets a clear error on that
stream instead of a generic gRPC failure.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import grpc

from .. import contract
from .cache import SnapshotReader
from .delta import DeltaStream
from .observer import StreamObserver
from .sockets import UNIX_PREFIX, describe, ensure_bindable, owner_only
from .sotw import SotwStream
from .stream import Stream, StreamOptions

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerOptions:
    """gRPC settings, defaulting to what istiod uses (xds-protocol-notes.md)."""

    host: str = "0.0.0.0"  # or "unix:/path" for a Unix socket (port then unused)
    port: int = contract.PORT_XDS
    #: Delta requests on reconnect can exceed gRPC's 4 MiB default (every known resource's version).
    max_receive_message_bytes: int = 64 * MiB
    max_send_message_bytes: int = 512 * MiB
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
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
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
    streams do to ``observer`` (metrics, sync status: see observer.py)."""

    def __init__(
        self,
        cache: SnapshotReader,
        *,
        options: ServerOptions | None = None,
        observer: StreamObserver | None = None,
    ) -> None:
        self.cache = cache
        self.options = options if options is not None else ServerOptions()
        self.observer = observer if observer is not None else StreamObserver()
        self._stream_options = StreamOptions(control_plane_id=self.options.control_plane_id)
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def _serve(self, stream_class: type[Stream], requests, context: grpc.aio.ServicerContext) -> None:
        stream = stream_class(self.cache, self.observer, self._stream_options, context.peer() or "")
        await stream.run(requests, context)

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
                port = server.add_insecure_port(address)
            except RuntimeError as exc:  # grpc's way of saying the address is taken or invalid
                raise OSError(f"cannot bind the xDS server to {address}: {exc}") from None
            if port == 0:
                raise OSError(f"cannot bind the xDS server to {address}")
            await server.start()
        self._server = server
        self.port = None if self.unix_socket else port
        log.info("ADS server listening on %s", address if self.unix_socket else f"{address} (port {port})")
        return port

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

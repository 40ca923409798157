"""A minimal ADS client over grpc.aio for protocol tests: send requests (or raw bytes), read responses."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.protobuf import struct_pb2
from google.protobuf.message import Message

SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
_END = object()


def node(name: str, node_id: str | None = None) -> Node:
    metadata = struct_pb2.Struct()
    metadata.update({"NODE_NAME": name})
    return Node(id=node_id or f"ztunnel~{name}", metadata=metadata)


def tls_credentials(bundle_pem: bytes, client: Any = None) -> grpc.ChannelCredentials:
    """TLS to the ADS server, checked against ``bundle_pem``; with ``client`` (an IssuedCertificate,
    e.g. a node credential), presenting it."""
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=bundle_pem)
    return grpc.ssl_channel_credentials(root_certificates=bundle_pem, private_key=client.private_key_pem,
                                        certificate_chain=client.cert_chain_pem)


class AdsClient:
    """One ADS stream. ``await recv()`` returns the next response or raises the stream's RpcError.

    ``port`` is on 127.0.0.1 (or a whole target such as ``unix:/path``); with ``credentials``
    (:func:`tls_credentials`) the channel is TLS, the server checked for the name ``localhost``;
    ``metadata`` goes with the stream (e.g. ``[("authorization", "Bearer ...")]``)."""

    def __init__(self, port: int | str, *, delta: bool = False, options: list | None = None,
                 channel: grpc.aio.Channel | None = None, credentials: grpc.ChannelCredentials | None = None,
                 metadata: list | None = None) -> None:
        """A stream on a channel of its own, or on ``channel`` (then left open by :meth:`close`)."""
        target = f"127.0.0.1:{port}" if isinstance(port, int) else port
        self._own_channel = channel is None
        if channel is not None:
            self.channel = channel
        elif credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options or [])
        else:
            self.channel = grpc.aio.secure_channel(
                target, credentials, options=[("grpc.ssl_target_name_override", "localhost"), *(options or [])])
        self.delta = delta
        response = DeltaDiscoveryResponse if delta else DiscoveryResponse
        method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.call = self.channel.stream_stream(
            SERVICE + method, request_serializer=lambda b: b, response_deserializer=response.FromString
        )(self._requests(), metadata=metadata)
        # Reading in one task: cancelling a pending call.read() would cancel the whole RPC.
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    break
                self._responses.put_nowait(response)
        except grpc.aio.AioRpcError as exc:
            self._responses.put_nowait(exc)
            return
        except asyncio.CancelledError:
            return
        self._responses.put_nowait(_END)

    async def _requests(self):
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            yield item

    def send(self, request: Message | bytes) -> None:
        self._queue.put_nowait(request if isinstance(request, bytes) else request.SerializeToString())

    def request(self, type_url: str, *, names=(), nonce: str = "", version: str = "", node_name: str | None = None,
                error: str | None = None) -> None:
        req = DiscoveryRequest(type_url=type_url, resource_names=list(names), response_nonce=nonce,
                               version_info=version)
        self._send_as(req, node_name, error)

    def delta_request(self, type_url: str, *, subscribe=(), unsubscribe=(), nonce: str = "", initial=None,
                      node_name: str | None = None, error: str | None = None) -> None:
        req = DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(subscribe),
                                    resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce)
        if initial:
            req.initial_resource_versions.update(initial)
        self._send_as(req, node_name, error)

    def _send_as(self, req: Any, node_name: str | None, error: str | None) -> None:
        """Send ``req``, naming the node (first request) and carrying a NACK's error if given."""
        if node_name is not None:
            req.node.CopyFrom(node(node_name))
        if error is not None:
            req.error_detail.code = 3
            req.error_detail.message = error
        self.send(req)

    async def recv(self, timeout: float = 5.0) -> Any:
        item = await asyncio.wait_for(self._responses.get(), timeout)
        if item is _END:
            raise EOFError("stream ended")
        if isinstance(item, BaseException):
            raise item
        return item

    async def expect_silence(self, seconds: float = 0.3) -> None:
        try:
            item = await asyncio.wait_for(self._responses.get(), seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"expected no response, got {item}")

    async def status(self, timeout: float = 5.0) -> tuple[grpc.StatusCode, str]:
        """The stream's final status (drops responses until it ends)."""
        while True:
            item = await asyncio.wait_for(self._responses.get(), timeout)
            if isinstance(item, grpc.aio.AioRpcError):
                return item.code(), item.details() or ""
            if item is _END:
                return await self.call.code(), await self.call.details()

    def half_close(self) -> None:
        """End the request stream (the server reads EOF); responses can still arrive."""
        self._queue.put_nowait(_END)

    async def close(self) -> None:
        self._queue.put_nowait(_END)
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        if self._own_channel:
            await self.channel.close()

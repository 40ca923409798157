#!/usr/bin/env python3
"""Simulated ztunnels: real gRPC ADS clients (state of the world, like Envoy's default) that
subscribe as Envoy does and ACK every response.

Each client opens one ADS stream for its node, asks for every cluster and every listener
(wildcard), then for the endpoints of the EDS clusters its CDS responses name, and ACKs each
response with its version and nonce. As Envoy, it keeps one ClusterLoadAssignment per cluster:
an EDS response may carry only some of them (the server sends those that changed), and each
replaces its cluster's, leaving the others; a cluster no longer asked for drops its own. SDS is
not asked for (secrets do not change with the model). Run as a process of its own, so the
clients do not share the control plane's CPU and event loop:
``python3 bench/ztunnels.py --xds 127.0.0.1:PORT node-0 node-1 ...``. It writes one JSON line
per response received (node, type, monotonic time, bytes, resources in it, and for EDS the
assignments held after it, and the bytes this client received so far) and ``{"ready": node}``
once a node has ACKed CDS, EDS and LDS and holds the endpoints of every EDS cluster; it runs
until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import AsyncIterator

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import struct_pb2

METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
#: Responses at the reference size are megabytes (a node's listeners, every service's endpoints).
MAX_MESSAGE = 512 << 20


def _node(name: str) -> Node:
    metadata = struct_pb2.Struct()
    metadata.update({"NODE_NAME": name})
    return Node(id=f"ztunnel~{name}", metadata=metadata)


def assignment_name(value: bytes) -> str:
    """The ``cluster_name`` of a serialized ClusterLoadAssignment: its field 1, which a
    deterministic serialization writes first; read without parsing thousands of endpoints."""
    if value[:1] == b"\x0a":
        length, shift, at = 0, 0, 1
        while True:
            byte = value[at]
            length |= (byte & 0x7F) << shift
            at += 1
            if byte < 0x80:
                return value[at : at + length].decode("utf-8")
            shift += 7
    return ClusterLoadAssignment.FromString(value).cluster_name


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class Ztunnel:
    """One node's ADS stream."""

    def __init__(self, channel: grpc.aio.Channel, node: str) -> None:
        self.node = node
        self.channel = channel
        self.requests: asyncio.Queue[DiscoveryRequest] = asyncio.Queue()
        self.eds_names: list[str] = []
        #: cluster -> its serialized ClusterLoadAssignment, merged from EDS responses as Envoy does
        self.endpoints: dict[str, bytes] = {}
        self.acked: set[str] = set()
        self.received_bytes = 0

    async def _outgoing(self) -> AsyncIterator[bytes]:
        while True:
            yield (await self.requests.get()).SerializeToString()

    def ask(self, type_url: str, names: list[str] = (), *, version: str = "", nonce: str = "", first: bool = False) -> None:
        request = DiscoveryRequest(type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce)
        if first:
            request.node.CopyFrom(_node(self.node))
        self.requests.put_nowait(request)

    async def run(self) -> None:
        call = self.channel.stream_stream(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)(
            self._outgoing()
        )
        self.ask(CDS, first=True)
        self.ask(LDS)
        ready = False
        async for raw in call:
            received = time.monotonic()
            self.received_bytes += len(raw)
            response = DiscoveryResponse.FromString(raw)
            record = {"node": self.node, "type": response.type_url.rsplit(".", 1)[-1], "t": received,
                      "bytes": len(raw), "resources": len(response.resources), "version": response.version_info,
                      "received_bytes": self.received_bytes}
            if response.type_url == EDS:
                self.endpoints.update((assignment_name(r.value), r.value) for r in response.resources)
                record["held"] = len(self.endpoints)
            _emit(record)
            if response.type_url == CDS:
                names = sorted(
                    cluster.name
                    for cluster in (Cluster.FromString(r.value) for r in response.resources)
                    if cluster.type == Cluster.EDS
                )
                self.ask(CDS, version=response.version_info, nonce=response.nonce)
                if names != self.eds_names:  # a new set of EDS clusters: ask for their endpoints
                    self.eds_names = names
                    kept = set(names)
                    self.endpoints = {n: v for n, v in self.endpoints.items() if n in kept}
                    self.ask(EDS, names)
            else:
                names = self.eds_names if response.type_url == EDS else []
                self.ask(response.type_url, names, version=response.version_info, nonce=response.nonce)
            self.acked.add(response.type_url)
            if not ready and self.acked >= {CDS, LDS} and self.endpoints.keys() >= set(self.eds_names):
                ready = True
                _emit({"ready": self.node})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xds", required=True, help="the control plane's ADS address, host:port")
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args()
    # each ztunnel its own connection, as on a cluster (channels of one process would share one)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
               ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(args.xds, options=options) for _ in args.nodes]
    try:
        await asyncio.gather(*(Ztunnel(channel, node).run() for channel, node in zip(channels, args.nodes)))
    finally:
        for channel in channels:
            await channel.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

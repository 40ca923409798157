#!/usr/bin/env python3
"""Simulated ztunnels: real gRPC ADS clients (state of the world, like Envoy's default) that
subscribe as Envoy does and ACK every response.

Each client opens one ADS stream for its node, asks for every cluster and every listener
(wildcard), then for the endpoints of the EDS clusters its CDS responses name, and ACKs each
response with its version and nonce. SDS is not asked for (secrets do not change with the
model). Run as a process of its own, so the clients do not share the control plane's CPU and
event loop: ``python3 bench/ztunnels.py --xds 127.0.0.1:PORT node-0 node-1 ...``. It writes one
JSON line per response received (node, type, monotonic time, bytes) and ``{"ready": node}``
once a node has ACKed CDS, EDS and LDS; it runs until killed.
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
        self.acked: set[str] = set()

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
            response = DiscoveryResponse.FromString(raw)
            _emit({"node": self.node, "type": response.type_url.rsplit(".", 1)[-1], "t": received,
                   "bytes": len(raw), "version": response.version_info})
            if response.type_url == CDS:
                names = sorted(
                    cluster.name
                    for cluster in (Cluster.FromString(r.value) for r in response.resources)
                    if cluster.type == Cluster.EDS
                )
                self.ask(CDS, version=response.version_info, nonce=response.nonce)
                if names != self.eds_names:  # a new set of EDS clusters: ask for their endpoints
                    self.eds_names = names
                    self.ask(EDS, names)
            else:
                names = self.eds_names if response.type_url == EDS else []
                self.ask(response.type_url, names, version=response.version_info, nonce=response.nonce)
            self.acked.add(response.type_url)
            if not ready and self.acked >= {CDS, LDS} and (EDS in self.acked or not self.eds_names):
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

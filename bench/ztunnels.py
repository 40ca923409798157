#!/usr/bin/env python3
"""Simulated ztunnels: real gRPC ADS clients that subscribe as Envoy does and ACK every response,
over state of the world (Envoy's default, ``GRPC``) or, with ``--delta``, incremental xDS (a
bootstrap's ``DELTA_GRPC``, ``zpilot bootstrap --delta``).

Each client opens one ADS stream for its node, asks for every cluster and every listener
(wildcard), then for the endpoints of the EDS clusters its CDS responses name, and ACKs each
response with its nonce (SotW: and its version). As Envoy, it keeps one ClusterLoadAssignment per
cluster: an EDS response may carry only some of them (the server sends those that changed), and
each replaces its cluster's, leaving the others; a cluster no longer asked for drops its own.

- SotW: a CDS or LDS response holds every resource; the EDS request names every EDS cluster (a
  new list when they change, sent as Envoy does with the last EDS response's version and nonce),
  and so does each EDS ACK.
- Delta: each response carries what changed and ``removed_resources``; the client keeps what it
  holds of each type (name -> version), applies both, subscribes EDS to the EDS clusters that
  came and unsubscribes those that went, and ACKs with the nonce alone.

SDS is not asked for (secrets do not change with the model). Run as a process of its own, so the
clients do not share the control plane's event loop, and with ``--nice 19`` (as bench/scale.py runs
it, in the control plane's session: a nice value ranks a process only among those of its session's
scheduler autogroup) so that they take only the CPU the control plane leaves:
``python3 bench/ztunnels.py --xds 127.0.0.1:PORT [--delta] [--nice N] node-0 node-1 ...``. It writes one JSON
line per response received (node, type, monotonic time, bytes, resources in it, and for EDS the
assignments held after it, and the bytes this client received so far; delta: the names removed)
and ``{"ready": node}`` once a node has ACKed CDS, EDS and LDS and holds the endpoints of every
EDS cluster; on SIGUSR1, ``{"holds": node, "eds": digest}`` for each node (:func:`eds_digest` of the
assignments it holds, to compare with what the server says it has); it runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from typing import AsyncIterator, Iterable

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.protobuf import struct_pb2
from google.protobuf.message import Message

SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
#: Responses at the reference size are megabytes (a node's listeners, every service's endpoints).
MAX_MESSAGE = 512 << 20
#: Envoy's HTTP/2 codec opens a stream window and a connection window of 256 MiB (its
#: Http2ProtocolOptions ``initial_stream_window_size`` and ``initial_connection_window_size``
#: defaults, which the xDS cluster of ``zpilot bootstrap`` leaves as they are).
ENVOY_WINDOW = 256 << 20


def channel_options(window: int = ENVOY_WINDOW) -> list[tuple[str, int]]:
    """A ztunnel's channel: its own connection, messages as large as a node's config, and the
    flow-control windows of Envoy's ADS connection.

    In gRPC's C-core the advertised windows follow ``grpc.http2.lookahead_bytes`` only while its
    BDP probing is off: with probing on (the default) the client advertises 4 MiB for the stream
    and the connection whatever the option says, then sizes them from its estimate; with probing
    off it advertises SETTINGS_INITIAL_WINDOW_SIZE = ``window`` and a connection WINDOW_UPDATE
    up to ``window`` (seen on the wire with grpcio 1.85: tests/bench/test_ztunnel_windows.py).
    ``window`` 0: gRPC's own defaults."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
               # each ztunnel its own connection, as on a cluster (channels of one process would share one)
               ("grpc.use_local_subchannel_pool", 1)]
    if window:
        options += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", window)]
    return options


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


def is_eds(value: bytes) -> bool:
    """Whether a serialized Cluster gets its endpoints from EDS."""
    return Cluster.FromString(value).type == Cluster.EDS


def eds_digest(versions: Iterable[tuple[str, str]]) -> str:
    """One hash of (cluster, assignment version) pairs, in any order. A version is the server's
    (``zpilot.xds.snapshot.content_version``: the first 16 hex digits of the SHA-256 of the
    serialized assignment), which a client computes from the bytes it holds (:func:`content_hash`)."""
    lines = sorted(f"{name}\t{version}" for name, version in versions)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def content_hash(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:16]


_pending: list[str] = []


def _emit(record: dict) -> None:
    """One JSON line, written with the others of the same event-loop turn: a write and a flush per
    response (300 per change at R) was CPU taken from the cores the control plane measures on."""
    if not _pending:
        asyncio.get_running_loop().call_soon(_flush)
    _pending.append(json.dumps(record))


def _flush() -> None:
    sys.stdout.write("\n".join(_pending) + "\n")
    sys.stdout.flush()
    _pending.clear()


class Ztunnel:
    """One node's ADS stream; what both protocols share (subclasses: how requests and responses look)."""

    method = ""
    response_type: type[Message] = DiscoveryResponse

    def __init__(self, channel: grpc.aio.Channel, node: str) -> None:
        self.node = node
        self.channel = channel
        self.requests: asyncio.Queue[Message] = asyncio.Queue()
        self.eds_names: list[str] = []
        #: cluster -> its serialized ClusterLoadAssignment, merged from EDS responses as Envoy does
        self.endpoints: dict[str, bytes] = {}
        self._hashes: dict[str, tuple[bytes, str]] = {}  # name -> (the bytes held, their content hash)
        self.acked: set[str] = set()
        self.received_bytes = 0

    async def _outgoing(self) -> AsyncIterator[bytes]:
        while True:
            yield (await self.requests.get()).SerializeToString()

    def send(self, request: Message, first: bool = False) -> None:
        if first:
            request.node.CopyFrom(_node(self.node))
        self.requests.put_nowait(request)

    def start(self) -> None:
        """The first requests: every cluster, every listener."""
        raise NotImplementedError

    def handle(self, response: Message, record: dict) -> None:
        """Apply one response (adding what to report to ``record``) and answer it."""
        raise NotImplementedError

    def set_eds_clusters(self, names: Iterable[str]) -> tuple[set[str], set[str]] | None:
        """The EDS clusters are now ``names``: (came, went) when that changed (the endpoints of
        those that went are dropped), else None."""
        names = sorted(names)
        if names == self.eds_names:
            return None
        before, after = set(self.eds_names), set(names)
        self.eds_names = names
        self.endpoints = {n: v for n, v in self.endpoints.items() if n in after}
        return after - before, before - after

    def report_holdings(self) -> None:
        hashes = {}
        for name, value in self.endpoints.items():
            known = self._hashes.get(name)
            hashes[name] = known if known is not None and known[0] is value else (value, content_hash(value))
        self._hashes = hashes
        _emit({"holds": self.node, "eds": eds_digest((name, h) for name, (_, h) in hashes.items())})

    async def run(self) -> None:
        call = self.channel.stream_stream(
            SERVICE + self.method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )(self._outgoing())
        self.start()
        ready = False
        async for raw in call:
            received = time.monotonic()
            self.received_bytes += len(raw)
            response = self.response_type.FromString(raw)
            record = {"node": self.node, "type": response.type_url.rsplit(".", 1)[-1], "t": received,
                      "bytes": len(raw), "resources": len(response.resources),
                      "received_bytes": self.received_bytes}
            self.handle(response, record)
            if response.type_url == EDS:
                record["held"] = len(self.endpoints)
            _emit(record)
            self.acked.add(response.type_url)
            if not ready and self.acked >= {CDS, LDS} and self.endpoints.keys() >= set(self.eds_names):
                ready = True
                _emit({"ready": self.node})


class SotwZtunnel(Ztunnel):
    """State of the world: every request names what it wants, every ACK its version."""

    method = "StreamAggregatedResources"
    response_type = DiscoveryResponse

    def ask(self, type_url: str, names: Iterable[str] = (), *, version: str = "", nonce: str = "",
            first: bool = False) -> None:
        self.send(DiscoveryRequest(type_url=type_url, resource_names=list(names), version_info=version,
                                   response_nonce=nonce), first)

    def start(self) -> None:
        #: the last EDS response's (version, nonce): Envoy sends them with every EDS request of the
        #: stream, a changed list of names included
        self.eds_seen = ("", "")
        self.ask(CDS, first=True)
        self.ask(LDS)

    def handle(self, response: DiscoveryResponse, record: dict) -> None:
        record["version"] = response.version_info
        if response.type_url == EDS:
            self.endpoints.update((assignment_name(r.value), r.value) for r in response.resources)
            self.eds_seen = (response.version_info, response.nonce)
        if response.type_url == CDS:
            clusters = (Cluster.FromString(r.value) for r in response.resources)
            changed = self.set_eds_clusters(c.name for c in clusters if c.type == Cluster.EDS)
            self.ask(CDS, version=response.version_info, nonce=response.nonce)
            if changed is not None:  # a new set of EDS clusters: ask for their endpoints
                version, nonce = self.eds_seen
                self.ask(EDS, self.eds_names, version=version, nonce=nonce)
        else:
            names = self.eds_names if response.type_url == EDS else []
            self.ask(response.type_url, names, version=response.version_info, nonce=response.nonce)


class DeltaZtunnel(Ztunnel):
    """Incremental: responses carry changes and removals; EDS (un)subscribed name by name."""

    method = "DeltaAggregatedResources"
    response_type = DeltaDiscoveryResponse

    def __init__(self, channel: grpc.aio.Channel, node: str) -> None:
        super().__init__(channel, node)
        #: what the client holds of each type, name -> version (Envoy's initial_resource_versions on a reconnect)
        self.held: dict[str, dict[str, str]] = {CDS: {}, EDS: {}, LDS: {}}
        self.eds_clusters_held: set[str] = set()

    def start(self) -> None:
        # a first request that names nothing: wildcard (every cluster, every listener)
        self.send(DeltaDiscoveryRequest(type_url=CDS), first=True)
        self.send(DeltaDiscoveryRequest(type_url=LDS))

    def handle(self, response: DeltaDiscoveryResponse, record: dict) -> None:
        type_url = response.type_url
        record["version"] = response.system_version_info
        record["removed"] = len(response.removed_resources)
        held = self.held.setdefault(type_url, {})
        for r in response.resources:
            held[r.name] = r.version
        for name in response.removed_resources:
            held.pop(name, None)
        if type_url == EDS:
            self.endpoints.update((r.name, r.resource.value) for r in response.resources)
            for name in response.removed_resources:
                self.endpoints.pop(name, None)
        self.send(DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce))  # the ACK
        if type_url == CDS:
            for r in response.resources:
                if is_eds(r.resource.value):
                    self.eds_clusters_held.add(r.name)
                else:
                    self.eds_clusters_held.discard(r.name)
            self.eds_clusters_held.difference_update(response.removed_resources)
            changed = self.set_eds_clusters(self.eds_clusters_held)
            if changed is not None:
                came, went = changed
                for name in went:
                    self.held[EDS].pop(name, None)
                self.send(DeltaDiscoveryRequest(type_url=EDS, resource_names_subscribe=sorted(came),
                                                resource_names_unsubscribe=sorted(went)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xds", required=True, help="the control plane's ADS address, host:port")
    parser.add_argument("--delta", action="store_true", help="incremental xDS (DeltaAggregatedResources)")
    parser.add_argument("--window", type=int, default=ENVOY_WINDOW, metavar="BYTES",
                        help="HTTP/2 stream and connection flow-control windows the clients open (default: Envoy's"
                             " 256 MiB; 0: gRPC's own, 4 MiB then sized by its BDP probing)")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run at this nice value (bench/scale.py: 19, so that the clients, which stand for other "
                             "machines, take only the CPU the control plane on the same cores leaves)")
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args()
    if args.nice:
        os.nice(args.nice)  # before gRPC starts its threads: they inherit it
    kind = DeltaZtunnel if args.delta else SotwZtunnel
    options = channel_options(args.window)
    channels = [grpc.aio.insecure_channel(args.xds, options=options) for _ in args.nodes]
    ztunnels = [kind(channel, node) for channel, node in zip(channels, args.nodes)]
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: [ztunnel.report_holdings() for ztunnel in ztunnels])
    try:
        await asyncio.gather(*(ztunnel.run() for ztunnel in ztunnels))
    finally:
        for channel in channels:
            await channel.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

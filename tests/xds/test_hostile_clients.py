"""A remote client can neither flood the log nor stall the server (issue 11.5).

In the first landing requested names, ``node.id`` and NACK texts were logged verbatim (a 60 MiB
name made 540 MiB of log in 20 s), a delta request of 500k ``initial_resource_versions`` held
the event loop for seconds, and 5,000 streams on one connection were all served at once. Each
test sends what a hostile client would, over real gRPC, and checks outcomes: what was refused
and why, how many bytes were logged, how many streams were served, what another client got.
"""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from zpilot.xds.limits import Limits
from zpilot.xds.observer import StreamInfo, StreamObserver
from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE

from .ads_client import AdsClient, node
from .e2e_util import debug_json
from .envoy_util import eventually
from .test_protocol_sotw import names

MiB = 1024 * 1024


class LogBytes(logging.Handler):
    """Every record of the ``zpilot`` loggers, measured as a log pipeline would store it: the
    message as formatted by the log call, plus every ``extra`` field."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.sizes: list[tuple[int, str]] = []  # (bytes, the start of the message)
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        extras = sum(len(str(getattr(record, key, ""))) for key in ("node", "conn", "peer", "type_url",
                                                                   "version", "nonce"))
        self.sizes.append((len(message) + extras, message[:80]))
        self.levels.append(record.levelno)

    @property
    def total(self) -> int:
        return sum(size for size, _ in self.sizes)

    @property
    def largest(self) -> tuple[int, str]:
        return max(self.sizes, default=(0, ""))


@pytest.fixture
def log_bytes():
    handler = LogBytes()
    logger = logging.getLogger("zpilot")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # every line a client can cause, debug ones included
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
async def clients():
    made: list[AdsClient] = []

    def make(port: int, **kw) -> AdsClient:
        client = AdsClient(port, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def sotw_request(**fields) -> DiscoveryRequest:
    request = DiscoveryRequest(type_url=fields.pop("type_url", CLUSTER_TYPE), **fields)
    return request


async def test_what_a_client_sends_is_bounded_in_the_log_and_in_syncz(fake_plane, clients, log_bytes):
    plane, _ = await fake_plane()
    big = "x" * MiB
    refused = []
    # A node id, a resource name, a type URL and a NODE_NAME far longer than any real one: refused.
    for request in (
        sotw_request(node=node("a", node_id=big)),
        sotw_request(node=node("a"), resource_names=["c1", big]),
        sotw_request(node=node("a"), type_url="type.googleapis.com/" + big),
        sotw_request(node=node(big, node_id="short")),
    ):
        client = clients(plane.xds_port)
        client.send(request)
        refused.append(await client.status())
    assert [code for code, _ in refused] == [grpc.StatusCode.INVALID_ARGUMENT] * 4
    assert "node id of 1048576 characters; the limit is 4096" in refused[0][1]
    assert "a resource name of 1048576 characters; the limit is 4096" in refused[1][1]
    assert "type URL, nonce or version of 1048596 characters" in refused[2][1]
    assert "node name of 1048576 characters: a Kubernetes node name has at most 253" in refused[3][1]

    # Values within the limits, still long: a 4,000-character node id, a user agent of 1 MiB,
    # a NACK of 1 MiB sent 50 times for the same response, stale nonces of 4,000 characters.
    request = sotw_request(node=node("a", node_id="i" * 4000))
    request.node.user_agent_name, request.node.user_agent_version = "u" * MiB, "1.40"
    client = clients(plane.xds_port)
    client.send(request)
    response = await client.recv()
    for _ in range(50):
        client.request(CLUSTER_TYPE, nonce=response.nonce, version=response.version_info, error=big)
        client.request(CLUSTER_TYPE, nonce="n" * 4000, version=response.version_info, error=big)
    client.request(ENDPOINT_TYPE, names=[f"{i:03d}" + "e" * 4000 for i in range(200)])
    await client.recv()  # answered: none of those names exist

    async def nacked():
        [conn] = await debug_json(plane.debug_port, "/debug/syncz", node="a")
        [cds] = [t for t in conn["types"] if t["type"] == "CDS"]
        assert cds["nack_count"] == 50, cds["nack_count"]
        return conn

    conn = await eventually(nacked)
    [cds] = [t for t in conn["types"] if t["type"] == "CDS"]
    assert cds["last_nack"]["error"].startswith("xxx") and len(cds["last_nack"]["error"]) < 4200
    assert conn["node_id"] == "i" * 4000 and conn["user_agent"].startswith("uuu") and len(conn["user_agent"]) < 200
    syncz = json.dumps(await debug_json(plane.debug_port, "/debug/syncz"))
    connections = json.dumps(await debug_json(plane.debug_port, "/debug/connections"))
    assert len(syncz) < 900_000 and len(connections) < 10_000  # 200 names of 4 KB are 800 KB: listed, no more

    # 4 MiB of client text went into 5 refused streams, 100 NACKs, 50 stale requests and a request
    # naming 200 long names: each log line stays short, and the NACK is logged once, not 50 times.
    size, start = log_bytes.largest
    assert size < 3000, (size, start)
    assert log_bytes.total < 64 * 1024, log_bytes.total
    nacks = [level for (_, start), level in zip(log_bytes.sizes, log_bytes.levels) if "rejected CDS" in start]
    assert sorted(nacks) == [logging.DEBUG] * 49 + [logging.WARNING]


async def test_too_many_names_are_refused_before_any_work(fake_plane, clients):
    plane, world = await fake_plane(limits=Limits(max_resource_names=100))
    probe = clients(plane.xds_port)
    probe.request(CLUSTER_TYPE, node_name="a")
    await probe.recv()
    cases = {
        "resource_names: 101 entries": sotw_request(node=node("a"), type_url=ENDPOINT_TYPE,
                                                    resource_names=[f"c{i}" for i in range(101)]),
        "initial_resource_versions: 101 entries": DeltaDiscoveryRequest(
            type_url=CLUSTER_TYPE, node=node("a"), initial_resource_versions={f"c{i}": "v" for i in range(101)}),
        "resource_names_subscribe and _unsubscribe: 101 entries": DeltaDiscoveryRequest(
            type_url=ENDPOINT_TYPE, node=node("a"), resource_names_subscribe=[f"c{i}" for i in range(60)],
            resource_names_unsubscribe=[f"d{i}" for i in range(41)]),
    }
    for message, request in cases.items():
        client = clients(plane.xds_port, delta=isinstance(request, DeltaDiscoveryRequest))
        client.send(request)
        code, details = await client.status()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert details == f"{message}; the limit is 100 (zpilot serve --max-resource-names)"
    # A delta subscription adds up over requests: bounded as a whole.
    client = clients(plane.xds_port, delta=True)
    client.delta_request(ENDPOINT_TYPE, subscribe=[f"c{i}" for i in range(60)], node_name="a")
    await client.recv()
    client.delta_request(ENDPOINT_TYPE, subscribe=[f"e{i}" for i in range(60)])
    code, details = await client.status()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == "subscription to 120 EDS names; the limit is 100 (zpilot serve --max-resource-names)"
    assert plane.metrics.value("zpilot_xds_rejected_requests_total", reason="too_many_names") == 4
    # Refused before the stream was ever served: only the probe and the last client were opened.
    assert sum(plane.metrics.value("zpilot_xds_streams_opened_total", mode=m) for m in ("sotw", "delta")) == 2
    world.nodes["a"].clusters["c4"] = ["10.0.0.4"]
    await plane.update(world.index())
    assert names(await probe.recv()) == ["c1", "c2", "c4"]


async def test_half_a_million_initial_versions_are_refused_while_another_client_is_served(fake_plane, clients):
    """The first landing's 3.2 s stall: a delta request reporting 350,000 tiny versions (3.9 MiB,
    under the request size limit). Refused by count from a decoding that builds no map."""
    plane, world = await fake_plane()
    probe = clients(plane.xds_port)
    probe.request(CLUSTER_TYPE, node_name="a")
    first = await probe.recv()
    probe.request(CLUSTER_TYPE, nonce=first.nonce, version=first.version_info)
    hostile = DeltaDiscoveryRequest(type_url=CLUSTER_TYPE, node=node("b"))
    for i in range(350_000):
        hostile.initial_resource_versions[str(i)] = ""
    attackers = [clients(plane.xds_port, delta=True) for _ in range(3)]
    for attacker in attackers:
        attacker.send(hostile)
    world.nodes["a"].clusters["c4"] = ["10.0.0.4"]
    await plane.update(world.index())
    assert names(await probe.recv()) == ["c1", "c2", "c4"]
    for attacker in attackers:
        code, details = await attacker.status()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details == ("initial_resource_versions: 350000 entries;"
                           " the limit is 20000 (zpilot serve --max-resource-names)")
    assert plane.registry.connected_nodes() == {"a"}


async def test_node_metadata_is_never_decoded_into_a_map(fake_plane, clients):
    """A Struct is a map too: 300,000 metadata fields are refused by count, and a NODE_NAME whose
    value nests a large Struct is not decoded at all (only a string is read there)."""
    plane, _ = await fake_plane()
    flood = sotw_request(node=node("a"))
    for i in range(300_000):
        flood.node.metadata.fields[str(i)].null_value = 0
    assert flood.ByteSize() < 4 * MiB
    client = clients(plane.xds_port)
    client.send(flood)
    assert await client.status() == (grpc.StatusCode.INVALID_ARGUMENT,
                                     "node metadata has 300001 fields; the limit is 1000")
    nested = sotw_request(node=node("a"))
    inner = nested.node.metadata.fields["NODE_NAME"].struct_value
    for i in range(300_000):
        inner.fields[str(i)].null_value = 0
    client = clients(plane.xds_port)
    client.send(nested)
    assert await client.status() == (grpc.StatusCode.INVALID_ARGUMENT,
                                     "node metadata NODE_NAME must be a non-empty string")


class MostStreams(StreamObserver):
    """The most streams of each node open at one time."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self.most: dict[str, int] = {}

    def stream_opened(self, stream: StreamInfo) -> None:
        self.open[stream.node] = self.open.get(stream.node, 0) + 1
        self.most[stream.node] = max(self.most.get(stream.node, 0), self.open[stream.node])

    def stream_closed(self, stream: StreamInfo) -> None:
        self.open[stream.node] -= 1


async def test_one_connection_gets_a_bounded_number_of_streams(fake_plane):
    """20 streams on one HTTP/2 connection with a limit of 4: 4 are served; the others wait for
    one of them to end (or, opened before the client learnt the limit, are refused by HTTP/2
    with REFUSED_STREAM, which gRPC reports as UNAVAILABLE); a client on another connection is
    served meanwhile. Never more than 4 of the connection's streams are served at once."""
    plane, _ = await fake_plane(limits=Limits(max_streams_per_connection=4))
    most = MostStreams()
    plane.ads.observer.add(most)
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
    shared = grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}", options=options)
    flood = [AdsClient(plane.xds_port, channel=shared) for _ in range(20)]
    probe = AdsClient(plane.xds_port, options=options)
    try:
        for client in flood:
            client.request(CLUSTER_TYPE, node_name="b")
        probe.request(CLUSTER_TYPE, node_name="a")
        assert names(await probe.recv()) == ["c1", "c2"]
        first = dict(zip(flood, await asyncio.gather(*(outcome(c) for c in flood))))
        served = [c for c in flood if first[c] == "answered"]
        assert len(served) == 4 and most.most["b"] == 4, first.values()
        for client in served:
            await client.close()
        # Slots freed: streams still waiting may now be served (or refused), 4 at a time at most.
        later = await asyncio.gather(*(outcome(c) for c in flood if first[c] == "waiting"))
        assert set(later) <= {"answered", "refused", "waiting"} and most.most["b"] == 4, later
    finally:
        for client in [*flood, probe]:
            await client.close()
        await shared.close()


async def outcome(client: AdsClient) -> str:
    """``answered``, ``waiting`` (for a slot on its connection) or ``refused`` (REFUSED_STREAM)."""
    try:
        await client.recv(timeout=1.0)
    except asyncio.TimeoutError:
        return "waiting"
    except grpc.aio.AioRpcError as exc:
        # HTTP/2 error code 7 is REFUSED_STREAM: the server did not take the stream at all. (gRPC's
        # client reports it as UNAVAILABLE, or as INTERNAL when it was still sending the request.)
        refused = "RST_STREAM with error code 7" in exc.details() or "SendMessageOperation" in exc.debug_error_string()
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL) and refused, exc
        return "refused"
    return "answered"


async def test_streams_over_the_server_limit_are_refused(fake_plane, clients):
    plane, _ = await fake_plane(limits=Limits(max_streams=3))
    options = [("grpc.use_local_subchannel_pool", 1)]
    served = [clients(plane.xds_port, options=options) for _ in range(3)]
    for client in served:
        client.request(CLUSTER_TYPE, node_name="a")
        await client.recv()
    # Refused before anything is read, so the stream sends nothing: grpc.aio's client reports
    # INTERNAL "Internal error from Core" instead of the server's status when its write of a request
    # fails because the server already ended the stream (grpc/grpc#36066; about 1 refusal in 300 on
    # a loaded machine). A request the server never reads would only race its trailers.
    extra = clients(plane.xds_port, options=options)
    assert await extra.status() == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "too many ADS streams on this server; the limit is 3 (zpilot serve --max-streams)")
    assert plane.metrics.value("zpilot_xds_rejected_requests_total", reason="too_many_streams") == 1
    await served[0].close()

    async def freed():
        return plane.ads.open_streams == 2

    await eventually(freed)
    again = clients(plane.xds_port, options=options)
    again.request(CLUSTER_TYPE, node_name="a")
    assert names(await again.recv()) == ["c1", "c2"]

"""Prometheus metrics of the control plane (prometheus-client), one registry per instance.

Each :class:`Metrics` owns its :class:`~prometheus_client.CollectorRegistry` instead of using
the library's process-global one, so two control planes in one process (tests, benchmarks)
never share or collide on a metric. The ADS streams report to it as a
:class:`~zpilot.xds.observer.StreamObserver`; the producer counts its own work directly.

Names follow Prometheus conventions: counters end in ``_total``, durations are ``_seconds``,
sizes ``_bytes``. Label values come from fixed sets only (type short names, protocol mode,
refusal reason, outcome): never a node, resource name or anything else a client chose.
"""

from __future__ import annotations

import bisect
import collections
import time
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from .auth import DENIAL_REASONS
from .observer import Response, StreamInfo, StreamObserver
from .order import SHORT_NAMES

#: Push latency / generation buckets in seconds: sub-millisecond up to past the 10 s debounce ceiling.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

def observe_all(histogram: Histogram, amounts: list[float]) -> None:
    """``histogram.observe(amount)`` for each of ``amounts`` (one per node a change stored: a
    hundred), each bucket and the sum incremented once, not once per amount (each a lock taken and
    the buckets walked in Python). The sum is added up first: the same to a float's rounding."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or getattr(histogram, "_labelnames", ()):
        for amount in amounts:  # not the prometheus-client this was written against, or a labelled parent
            histogram.observe(amount)
        return
    if not amounts:
        return
    total.inc(sum(amounts))
    # the first bucket whose bound is at least the amount, as ``observe`` finds it (a NaN is in none)
    for i, n in collections.Counter(bisect.bisect_left(bounds, a) for a in amounts if a == a).items():
        buckets[i].inc(n)


#: The media type of :meth:`Metrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def type_label(type_url: str) -> str:
    """``CDS``, ``EDS``, ``SDS`` or ``LDS``; ``other`` for anything else (never the client's string)."""
    return SHORT_NAMES.get(type_url, "other")


class _ResponseMetrics:
    """The three metrics every response counts in (responses, their bytes, push latency), as a
    custom collector: plain numbers added on the event loop, made into samples when scraped. A
    change is a response on each of a hundred streams; prometheus-client's own metrics took a
    lock and a check per call, three calls per response (about a fifth of a stream's Python work
    to send a pushed endpoint update at R)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}  # (type, mode) -> responses
        self.bytes: dict[str, int] = {}  # type -> bytes
        #: type -> [count in each bucket, not cumulative (the last one: +Inf)], sum
        self.latency: dict[str, tuple[list[int], list[float]]] = {}
        #: When each series was first counted in (the ``_created`` samples prometheus-client writes).
        self.created: dict[object, float] = {}

    def add(self, kind: str, mode: str, size: int, latency: float | None) -> None:
        key = (kind, mode)
        count = self.counts.get(key)
        if count is None:  # a new series (a few: served types x protocols)
            count = 0
            self.created.setdefault(key, time.time())
            self.created.setdefault(kind, time.time())
        self.counts[key] = count + 1
        self.bytes[kind] = self.bytes.get(kind, 0) + size
        series = self.latency.get(kind)
        if series is None:  # with the type's first response, at count 0 (docs/xds-server.md: rate() reads 0)
            series = self.latency[kind] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
            self.created[("latency", kind)] = time.time()
        if latency is not None:
            series[0][bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1  # le: a value on a bound is in it
            series[1][0] += latency

    def describe(self) -> Iterator[Metric]:
        return self._families(empty=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(empty=False)

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        responses = CounterMetricFamily("zpilot_xds_responses",
                                        "xDS responses sent, by type and protocol", labels=["type", "mode"])
        sizes = CounterMetricFamily("zpilot_xds_response_bytes", "bytes of xDS responses sent, by type",
                                    labels=["type"])
        latency = HistogramMetricFamily(
            "zpilot_xds_push_latency_seconds",
            "from the first sight of a model change to the response delivering it to a stream, by type",
            labels=["type"])
        if not empty:
            created = self.created
            for (kind, mode), count in list(self.counts.items()):  # a copy: a scrape may run off the loop
                responses.add_metric([kind, mode], count, created=created.get((kind, mode)))
            for kind, total in list(self.bytes.items()):
                sizes.add_metric([kind], total, created=created.get(kind))
            for kind, (buckets, total) in list(self.latency.items()):
                cumulative, running = [], 0
                for bound, count in zip([*map(float, LATENCY_BUCKETS), float("inf")], list(buckets)):
                    running += count
                    cumulative.append((_bound_text(bound), running))
                latency.add_metric([kind], cumulative, total[0])
                latency.samples.append(Sample("zpilot_xds_push_latency_seconds_created", {"type": kind},
                                              created.get(("latency", kind), 0.0), None, None))
        yield responses
        yield sizes
        yield latency


class _TlsHandshakes:
    """``zpilot_xds_tls_handshakes_total``: a count kept by gRPC's certificate fetcher, on gRPC's own thread,
    read here when scraped (no observer event: observers run on the event loop's thread)."""

    def __init__(self, handshakes: Callable[[], int]) -> None:
        self._handshakes = handshakes

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "zpilot_xds_tls_handshakes",
            "TLS handshakes begun on the ADS port: one per connection accepted, whatever its outcome (gRPC reports"
            " none)",
            value=self._handshakes())


def _bound_text(bound: float) -> str:
    """A bucket's ``le`` as prometheus-client writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics(StreamObserver):
    """Every metric the control plane exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # -- ADS streams (reported through the observer methods below) --------------------------
        self.streams = Gauge("zpilot_xds_streams", "open ADS streams, by protocol", ["mode"], registry=r)
        self.streams_opened = Counter(
            "zpilot_xds_streams_opened_total", "ADS streams opened (first request named a node)", ["mode"], registry=r
        )
        self.requests = Counter(
            "zpilot_xds_requests_total", "requests received on ADS streams, by type and protocol", ["type", "mode"],
            registry=r,
        )
        #: zpilot_xds_responses_total, zpilot_xds_response_bytes_total, zpilot_xds_push_latency_seconds
        self.sent = _ResponseMetrics()
        r.register(self.sent)
        self.acks = Counter("zpilot_xds_acks_total", "responses the client accepted, by type", ["type"], registry=r)
        self.nacks = Counter(
            "zpilot_xds_nacks_total", "responses the client rejected (error_detail set), by type", ["type"], registry=r
        )
        self.stale_requests = Counter(
            "zpilot_xds_stale_requests_total", "requests ignored for a stale nonce, by type", ["type"], registry=r
        )
        self.rejected_requests = Counter(
            "zpilot_xds_rejected_requests_total",
            "requests that ended their stream: unparseable, unknown_type, no_node, no_type, too_many_names,"
            " too_long, too_many_streams",
            ["reason"], registry=r,
        )
        self.denied_streams = Counter(
            "zpilot_xds_access_denied_total",
            "ADS streams refused for their credential before anything was sent: no_credential,"
            " invalid_credential, not_a_node_credential, node_mismatch, review_unavailable, revoked_credential (also"
            " an open stream ended by a revocation)",
            ["reason"], registry=r,
        )
        self.unserved = Counter(
            "zpilot_xds_unserved_resource_names_total",
            "requested names never in the node's config on that stream (for SDS: not authorized), by type",
            ["type"], registry=r,
        )
        self.unknown_nodes = Counter(
            "zpilot_xds_unknown_node_streams_total",
            "times a stream's node was found missing from the model (it is served an empty config)",
            registry=r,
        )
        #: (type URL, mode) -> the series a request of them counts in, and type URL -> the ACK
        #: series: a change is answered by an ACK on each of a hundred streams, each looked up by
        #: its labels otherwise (a locked lookup).
        self._request_series: dict[tuple[str, str], Counter] = {}
        self._ack_series: dict[str, Counter] = {}
        # -- producer and cache (counted by the producer) --------------------------------------
        self.resources = Gauge(
            "zpilot_xds_resources", "resources in the cache over all nodes, by type", ["type"], registry=r
        )
        self.node_snapshots = Counter(
            "zpilot_snapshot_updates_total", "node snapshots produced, by outcome (changed, unchanged)", ["outcome"],
            registry=r,
        )
        self.generation = Histogram(
            "zpilot_snapshot_generation_seconds", "time to translate and serialize one node's config",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.model_updates = Counter("zpilot_model_updates_total", "model changes handed to the producer", registry=r)
        self.producer_errors = Counter(
            "zpilot_producer_errors_total", "nodes whose config could not be produced (the last good one stays)",
            registry=r,
        )

    def count_tls_handshakes(self, handshakes: Callable[[], int]) -> None:
        """Export ``zpilot_xds_tls_handshakes_total``, read from ``handshakes`` at each scrape (the ADS port's
        :attr:`ServerTls.handshakes <zpilot.xds.security.ServerTls.handshakes>`). Unlabelled: nothing a
        client sends or chooses is in it."""
        self.registry.register(_TlsHandshakes(handshakes))

    def render(self) -> bytes:
        """The registry in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when it was never recorded), e.g.
        ``value("zpilot_xds_nacks_total", type="CDS")``."""
        sample = self.registry.get_sample_value(name, labels)
        return 0.0 if sample is None else sample

    # -- StreamObserver -----------------------------------------------------------------------

    def stream_opened(self, stream: StreamInfo) -> None:
        self.streams.labels(stream.mode).inc()
        self.streams_opened.labels(stream.mode).inc()

    def stream_closed(self, stream: StreamInfo) -> None:
        self.streams.labels(stream.mode).dec()

    def stream_refused(self, stream: StreamInfo | None, reason: str, message: str) -> None:
        self.rejected_requests.labels(reason).inc()

    def access_denied(self, peer: str, node: str | None, reason: str, message: str) -> None:
        self.denied_streams.labels(reason if reason in DENIAL_REASONS else "other").inc()

    def node_known(self, stream: StreamInfo, known: bool) -> None:
        if not known:
            self.unknown_nodes.inc()

    def request_received(self, stream: StreamInfo, type_url: str) -> None:
        key = (type_url, stream.mode)
        series = self._request_series.get(key)
        if series is None:  # a few keys (served types x protocols, "other"): looked up once, not per request
            series = self._request_series[key] = self.requests.labels(type_label(type_url), stream.mode)
        series.inc()

    def response_sent(self, stream: StreamInfo, response: Response) -> None:
        self.sent.add(type_label(response.type_url), stream.mode, response.bytes, response.push_latency)

    def ack(self, stream: StreamInfo, type_url: str, version: str, nonce: str) -> None:
        series = self._ack_series.get(type_url)
        if series is None:
            series = self._ack_series[type_url] = self.acks.labels(type_label(type_url))
        series.inc()

    def nack(self, stream: StreamInfo, type_url: str, version: str, nonce: str, code: int, message: str) -> None:
        self.nacks.labels(type_label(type_url)).inc()

    def stale_request(self, stream: StreamInfo, type_url: str, nonce: str) -> None:
        self.stale_requests.labels(type_label(type_url)).inc()

    def unserved_names(self, stream: StreamInfo, type_url: str, names: list[str]) -> None:
        self.unserved.labels(type_label(type_url)).inc(len(names))

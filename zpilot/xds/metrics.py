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

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .auth import DENIAL_REASONS
from .observer import Response, StreamInfo, StreamObserver
from .order import SHORT_NAMES

#: Push latency / generation buckets in seconds: sub-millisecond up to past the 10 s debounce ceiling.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: The media type of :meth:`Metrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def type_label(type_url: str) -> str:
    """``CDS``, ``EDS``, ``SDS`` or ``LDS``; ``other`` for anything else (never the client's string)."""
    return SHORT_NAMES.get(type_url, "other")


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
        self.responses = Counter(
            "zpilot_xds_responses_total", "xDS responses sent, by type and protocol", ["type", "mode"], registry=r
        )
        self.response_bytes = Counter(
            "zpilot_xds_response_bytes_total", "bytes of xDS responses sent, by type", ["type"], registry=r
        )
        self.push_latency = Histogram(
            "zpilot_xds_push_latency_seconds",
            "from the first sight of a model change to the response delivering it to a stream, by type",
            ["type"], buckets=LATENCY_BUCKETS, registry=r,
        )
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
            " invalid_credential, not_a_node_credential, node_mismatch, review_unavailable",
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
        #: (type URL, mode) -> the series a response of them counts in: a change is a response on
        #: each of a hundred streams, each looked up by its labels otherwise (three locked lookups).
        self._response_series: dict[tuple[str, str], tuple] = {}
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
        self.requests.labels(type_label(type_url), stream.mode).inc()

    def response_sent(self, stream: StreamInfo, response: Response) -> None:
        key = (response.type_url, stream.mode)
        series = self._response_series.get(key)
        if series is None:  # a few keys (served types x protocols): looked up once, not per response
            kind = type_label(response.type_url)
            series = self._response_series[key] = (
                self.responses.labels(kind, stream.mode), self.response_bytes.labels(kind),
                self.push_latency.labels(kind),
            )
        responses, response_bytes, push_latency = series
        responses.inc()
        response_bytes.inc(response.bytes)
        if response.push_latency is not None:
            push_latency.observe(response.push_latency)

    def ack(self, stream: StreamInfo, type_url: str, version: str, nonce: str) -> None:
        self.acks.labels(type_label(type_url)).inc()

    def nack(self, stream: StreamInfo, type_url: str, version: str, nonce: str, code: int, message: str) -> None:
        self.nacks.labels(type_label(type_url)).inc()

    def stale_request(self, stream: StreamInfo, type_url: str, nonce: str) -> None:
        self.stale_requests.labels(type_label(type_url)).inc()

    def unserved_names(self, stream: StreamInfo, type_url: str, names: list[str]) -> None:
        self.unserved.labels(type_label(type_url)).inc(len(names))

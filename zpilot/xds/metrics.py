"""Prometheus metrics of the control plane, rendered in the text exposition format.

Written here rather than pulled in from prometheus_client: the server needs four counters, a
few gauges and two histograms, and owning the registry keeps tests free of process-global
state (each server gets its own :class:`Metrics`).
"""

from __future__ import annotations

import math
import threading
from typing import Iterable, Sequence

LabelValues = tuple[str, ...]

#: Push latency / generation buckets in seconds: sub-millisecond up to the 10 s debounce ceiling.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> LabelValues:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self._samples()

    def _samples(self) -> Iterable[str]:  # pragma: no cover - abstract
        return ()


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> Iterable[str]:
        for key, value in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.label_names, key)} {_number(value)}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value

    def dec(self, *labels: str, amount: float = 1.0) -> None:
        self.inc(*labels, amount=-amount)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, *labels: str) -> int:
        counts = self._counts.get(self._key(labels))
        return counts[-1] if counts else 0

    def _samples(self) -> Iterable[str]:
        for key in sorted(self._counts):
            counts = self._counts[key]
            for bound, n in zip(self.buckets, counts):
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.label_names, key, le)} {n}"
            le = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.label_names, key, le)} {counts[-1]}"
            yield f"{self.name}_sum{_labels(self.label_names, key)} {_number(self._sums[key])}"
            yield f"{self.name}_count{_labels(self.label_names, key)} {counts[-1]}"


class Metrics:
    """Every metric the control plane exports (one instance per server)."""

    def __init__(self) -> None:
        self.pushes = Counter("zpilot_xds_pushes_total", "xDS responses sent, by type and protocol", ["type", "mode"])
        self.push_bytes = Counter("zpilot_xds_push_bytes_total", "bytes of xDS responses sent, by type", ["type"])
        self.push_latency = Histogram(
            "zpilot_xds_push_latency_seconds",
            "time from the model change a snapshot answers to its response being sent, by type",
            ["type"],
        )
        self.nacks = Counter("zpilot_xds_nacks_total", "responses the client rejected (error_detail set), by type", ["type"])
        self.acks = Counter("zpilot_xds_acks_total", "responses the client accepted, by type", ["type"])
        self.rejected_requests = Counter(
            "zpilot_xds_rejected_requests_total",
            "requests refused: unknown type URL, unparseable, no node, ...",
            ["reason"],
        )
        self.unserved_names = Counter(
            "zpilot_xds_unserved_resource_names_total",
            "requested resource names the node's config does not have (for secrets: not authorized)",
            ["type"],
        )
        self.stale_requests = Counter("zpilot_xds_stale_requests_total", "requests ignored for a stale nonce", ["type"])
        self.connections = Gauge("zpilot_xds_connections", "open ADS streams, by protocol", ["mode"])
        self.connections_total = Counter("zpilot_xds_connections_total", "ADS streams ever opened", ["mode"])
        self.unknown_nodes = Counter("zpilot_xds_unknown_node_streams_total", "streams from a node the model lacks")
        self.resources = Gauge("zpilot_xds_resources", "resources in the cache over all nodes, by type", ["type"])
        self.node_snapshots = Counter(
            "zpilot_snapshot_updates_total", "snapshots produced, by outcome (changed / unchanged)", ["outcome"]
        )
        self.generation = Histogram(
            "zpilot_snapshot_generation_seconds", "time to translate and serialize one node's config"
        )
        self.model_updates = Counter("zpilot_model_updates_total", "model changes handed to the producer")
        self.producer_errors = Counter(
            "zpilot_producer_errors_total", "nodes whose config could not be produced (the last good one stays)"
        )

    def all(self) -> list[_Metric]:
        return [m for m in vars(self).values() if isinstance(m, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"

"""Connection limits and idle timeouts of the data path, set explicitly for a node proxy.

Envoy's defaults suit one service's sidecar, not a proxy that carries every pod of a node:
its circuit breakers allow 1,024 connections, pending requests and requests per cluster, so a
node's 1,025th concurrent tunnelled connection was refused (``upstream_rq_active_overflow``:
76 of 1,100 in the first landing's world). And its HTTP connection manager closes a stream
idle for 5 minutes (``stream_idle_timeout``), which on the inbound (HBONE) listener is a whole tunnelled
TCP connection: a database connection quiet for 5 minutes was cut. Every data-path cluster and
every proxy filter here gets the values of one :class:`DataPathLimits`, which ``zpilot serve``
and ``zpilot render`` take as flags (docs/operations.md, "Limits and timeouts").
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import duration_pb2, wrappers_pb2

from envoy.config.cluster.v3 import circuit_breaker_pb2
from envoy.config.core.v3 import protocol_pb2

#: Envoy's thresholds are uint32.
MAX_THRESHOLD = 2**32 - 1
#: Longest idle timeout accepted (a year); 0 disables it instead.
MAX_IDLE_TIMEOUT = 365 * 24 * 3600


@dataclass(frozen=True)
class DataPathLimits:
    """What one ztunnel allows per cluster, and how long a connection may sit idle.

    A tunnelled connection is one connection on the service-port cluster (to the internal
    listener) and one request (an HTTP/2 CONNECT stream) on the tunnel cluster, so the
    connection and request limits bound concurrent connections through a node alike.
    ``idle_timeout`` 0 means connections are never closed for being idle.
    """

    max_connections: int = 100_000
    max_pending_requests: int = 100_000
    max_requests: int = 100_000
    idle_timeout: float = 3600.0  # seconds

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_pending_requests", "max_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THRESHOLD:
                raise ValueError(f"{name} must be a whole number from 1 to {MAX_THRESHOLD}, not {value!r}")
        if not isinstance(self.idle_timeout, (int, float)) or not 0 <= self.idle_timeout <= MAX_IDLE_TIMEOUT:
            raise ValueError(f"idle_timeout must be from 0 to {MAX_IDLE_TIMEOUT} seconds, not {self.idle_timeout!r}")


def circuit_breakers(limits: DataPathLimits) -> circuit_breaker_pb2.CircuitBreakers:
    """Thresholds of the default priority: zpilot routes nothing at high priority."""
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                max_connections=wrappers_pb2.UInt32Value(value=limits.max_connections),
                max_pending_requests=wrappers_pb2.UInt32Value(value=limits.max_pending_requests),
                max_requests=wrappers_pb2.UInt32Value(value=limits.max_requests),
            )
        ]
    )


def idle_timeout(limits: DataPathLimits) -> duration_pb2.Duration:
    """The idle timeout as a Duration (0s: disabled, for tcp_proxy and the HTTP connection manager alike)."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(limits.idle_timeout * 1_000_000_000))
    return duration


def http_idle_options(limits: DataPathLimits) -> protocol_pb2.HttpProtocolOptions:
    """HTTP connection idle timeout (no open streams), downstream and upstream of the tunnel."""
    return protocol_pb2.HttpProtocolOptions(idle_timeout=idle_timeout(limits))

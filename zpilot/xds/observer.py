"""What an ADS stream reports as it runs, and to whom (go-control-plane's server callbacks).

The stream core (stream.py, sotw.py, delta.py) decides what to send and when; everything that
only watches (the Prometheus metrics, the sync status behind /debug/syncz) is a
:class:`StreamObserver`. The core calls one observer and knows nothing of what is behind it;
:class:`Observers` hands each event to several. A new consumer of stream events is a new
observer, never a new call in the protocol code.

Every value an event carries about the client (node id, names, nonces, NACK text, user agent) is
as the client sent it, within the limits of limits.py (each at most ``max_name_length``
characters, at most ``max_resource_names`` names; a NACK's text cut at ``NACK_MESSAGE_CHARS``);
observers that label metrics must map it to a bounded set (the type URL's short name, never a
resource name), and observers that log it bound it again (``zpilot.logs.bounded``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamInfo:
    """Who is on the other end of one stream (known once its first request named the node)."""

    id: str  # ``conn-N``, unique in this process
    node: str  # the Kubernetes node name the stream serves
    node_id: str  # the client's xDS ``Node.id``, as sent
    mode: str  # "sotw" or "delta"
    peer: str  # gRPC's peer string of the connection
    user_agent: str = ""  # the node's ``user_agent_name/user_agent_version`` (bounded), e.g. envoy/1.40.0


@dataclass(frozen=True)
class Response:
    """One response sent on a stream."""

    type_url: str
    version: str  # SotW ``version_info`` / delta ``system_version_info``
    nonce: str
    resources: int  # resources in the response (delta: only the changed ones)
    bytes: int  # serialized size
    #: Seconds from the model change this response delivers to its sending; None when the
    #: response delivers no change (the first of its type on the stream, or an answer to a
    #: request from the same snapshot).
    push_latency: float | None = None


class StreamObserver:
    """Receives a stream's events; every method does nothing unless overridden.

    Called on the event loop's thread, in the order things happen on the stream, and must not
    block: the stream waits for each call.
    """

    def stream_opened(self, stream: StreamInfo) -> None:
        """The first request named a valid node: the stream is now served."""

    def stream_closed(self, stream: StreamInfo) -> None:
        """The stream ended (the client left, the connection failed, or it was refused)."""

    def stream_refused(self, stream: StreamInfo | None, reason: str, message: str) -> None:
        """A request ended the stream with an error; ``stream`` is None before the node was known.
        ``reason`` is one of a fixed set (``unparseable``, ``unknown_type``, ``no_node``, ``no_type``,
        ``too_many_names``, ``too_long``; ``too_many_streams`` with ``stream`` None, from the server)."""

    def access_denied(self, peer: str, node: str | None, reason: str, message: str) -> None:
        """A stream's credential did not allow it (auth.py); nothing was sent. ``node`` is the node
        it asked for (None when refused before its first request was read); ``reason`` is one of
        ``zpilot.xds.auth.DENIAL_REASONS``."""

    def node_known(self, stream: StreamInfo, known: bool) -> None:
        """Whether the model has the stream's node (unknown ones are served an empty config);
        reported at the first response and on every change."""

    def request_received(self, stream: StreamInfo, type_url: str) -> None:
        """A request of a served type arrived (ACK, NACK, new subscription or stale)."""

    def subscription_changed(self, stream: StreamInfo, type_url: str, names: frozenset[str] | None) -> None:
        """The stream's subscription to a type is now ``names`` (None: wildcard, empty: none).
        Reported only when it changed: a request that leaves it as it was costs no copy."""

    def response_sent(self, stream: StreamInfo, response: Response) -> None:
        """A response is being written (reported just before the write: the client's answer can
        arrive while the write is awaited)."""

    def ack(self, stream: StreamInfo, type_url: str, version: str, nonce: str) -> None:
        """The client accepted the response ``nonce`` (of ``version``)."""

    def nack(self, stream: StreamInfo, type_url: str, version: str, nonce: str, code: int, message: str) -> None:
        """The client rejected the response ``nonce``; ``version`` is the rejected response's
        (empty when the nonce is not the last one sent)."""

    def stale_request(self, stream: StreamInfo, type_url: str, nonce: str) -> None:
        """A request answering an older response than the last one sent: ignored."""

    def unserved_names(self, stream: StreamInfo, type_url: str, names: list[str]) -> None:
        """The client asked for names its node's config does not have and never had on this stream
        (for SDS: a secret this node is not authorized for). A name that was served before and is
        now gone is normal churn and not reported here."""


class Observers(StreamObserver):
    """Hands every event to each observer in turn.

    An observer that raises is a bug in that observer: it is logged, and neither the stream nor
    the other observers notice.
    """

    def __init__(self, *observers: StreamObserver) -> None:
        self._observers = list(observers)

    def add(self, observer: StreamObserver) -> None:
        self._observers.append(observer)

    def _each(self, event: str, *args: object) -> None:
        for observer in self._observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                log.exception("stream observer %s failed on %s", type(observer).__name__, event)

    def stream_opened(self, stream: StreamInfo) -> None:
        self._each("stream_opened", stream)

    def stream_closed(self, stream: StreamInfo) -> None:
        self._each("stream_closed", stream)

    def stream_refused(self, stream: StreamInfo | None, reason: str, message: str) -> None:
        self._each("stream_refused", stream, reason, message)

    def access_denied(self, peer: str, node: str | None, reason: str, message: str) -> None:
        self._each("access_denied", peer, node, reason, message)

    def node_known(self, stream: StreamInfo, known: bool) -> None:
        self._each("node_known", stream, known)

    def request_received(self, stream: StreamInfo, type_url: str) -> None:
        self._each("request_received", stream, type_url)

    def subscription_changed(self, stream: StreamInfo, type_url: str, names: frozenset[str] | None) -> None:
        self._each("subscription_changed", stream, type_url, names)

    def response_sent(self, stream: StreamInfo, response: Response) -> None:
        self._each("response_sent", stream, response)

    def ack(self, stream: StreamInfo, type_url: str, version: str, nonce: str) -> None:
        self._each("ack", stream, type_url, version, nonce)

    def nack(self, stream: StreamInfo, type_url: str, version: str, nonce: str, code: int, message: str) -> None:
        self._each("nack", stream, type_url, version, nonce, code, message)

    def stale_request(self, stream: StreamInfo, type_url: str, nonce: str) -> None:
        self._each("stale_request", stream, type_url, nonce)

    def unserved_names(self, stream: StreamInfo, type_url: str, names: list[str]) -> None:
        self._each("unserved_names", stream, type_url, names)

"""What each ADS stream was sent and what its client made of it: the data behind /debug/syncz.

:class:`StatusRegistry` is a :class:`~zpilot.xds.observer.StreamObserver`: it builds this
picture from the events the streams report and is read by the debug API only.

ACKs are tracked here, on the server, never read back from Envoy's config_dump: Envoy keeps the
old ``version_info`` there when a pushed resource's content is unchanged (xds-protocol-notes.md).

What a client sent arrives within the limits of limits.py; a subscription is still shown by its
first :data:`SHOWN_NAMES` names (and its count), so one syncz answer stays small.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .observer import Response, StreamInfo, StreamObserver
from .order import PUSH_ORDER, short_name


#: Subscribed names /debug/syncz lists per type (sorted); ``subscribed_count`` has them all.
SHOWN_NAMES = 1000


def _wall() -> float:
    return time.time()


@dataclass
class Nack:
    version: str  # the version the client rejected (the response's, not the request's version_info)
    nonce: str
    error: str
    code: int
    at: float = field(default_factory=_wall)


@dataclass
class TypeStatus:
    """One type on one stream."""

    type_url: str
    subscribed: frozenset[str] | None = None  # None: wildcard
    last_sent_version: str = ""
    last_sent_nonce: str = ""
    last_sent_at: float | None = None
    last_sent_resources: int = 0
    sent_count: int = 0
    acked_version: str = ""
    acked_nonce: str = ""
    acked_at: float | None = None
    last_nack: Nack | None = None
    nack_count: int = 0

    @property
    def state(self) -> str:
        """SYNCED, NACKED, STALE (sent, not yet answered), NOT_SENT as istioctl proxy-status says, or
        UNSUBSCRIBED: the client named no resource of this type any more, and answers nothing."""
        if self.subscribed is not None and not self.subscribed:
            return "UNSUBSCRIBED"
        if not self.last_sent_nonce:
            return "NOT_SENT"
        if self.last_nack is not None and self.last_nack.nonce == self.last_sent_nonce:
            return "NACKED"
        if self.acked_nonce == self.last_sent_nonce:
            return "SYNCED"
        return "STALE"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": short_name(self.type_url),
            "type_url": self.type_url,
            "state": self.state,
            "subscribed": "*" if self.subscribed is None else sorted(self.subscribed)[:SHOWN_NAMES],
            "subscribed_count": None if self.subscribed is None else len(self.subscribed),
            "last_sent_version": self.last_sent_version,
            "last_sent_nonce": self.last_sent_nonce,
            "last_sent_at": self.last_sent_at,
            "last_sent_resources": self.last_sent_resources,
            "sent_count": self.sent_count,
            "acked_version": self.acked_version,
            "acked_nonce": self.acked_nonce,
            "acked_at": self.acked_at,
            "nack_count": self.nack_count,
            "last_nack": None
            if self.last_nack is None
            else {
                "version": self.last_nack.version,
                "nonce": self.last_nack.nonce,
                "error": self.last_nack.error,
                "code": self.last_nack.code,
                "at": self.last_nack.at,
            },
        }


@dataclass
class ConnectionStatus:
    """One ADS stream."""

    id: str
    node: str
    mode: str  # "sotw" or "delta"
    peer: str = ""
    node_id: str = ""
    user_agent: str = ""
    known_node: bool = True
    connected_at: float = field(default_factory=_wall)
    types: dict[str, TypeStatus] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # refused requests on this stream, newest last (bounded)

    def type(self, type_url: str) -> TypeStatus:
        status = self.types.get(type_url)
        if status is None:
            status = self.types[type_url] = TypeStatus(type_url)
        return status

    def record_error(self, message: str, keep: int = 20) -> None:
        self.errors.append(message)
        del self.errors[:-keep]

    @property
    def synced(self) -> bool:
        return bool(self.types) and all(t.state in ("SYNCED", "UNSUBSCRIBED") for t in self.types.values())

    def to_json(self) -> dict[str, Any]:
        order = {t: i for i, t in enumerate(PUSH_ORDER)}
        return {
            "id": self.id,
            "node": self.node,
            "node_id": self.node_id,
            "user_agent": self.user_agent,
            "known_node": self.known_node,
            "mode": self.mode,
            "peer": self.peer,
            "connected_at": self.connected_at,
            "synced": self.synced,
            "types": [
                self.types[t].to_json() for t in sorted(self.types, key=lambda t: (order.get(t, len(order)), t))
            ],
            "errors": list(self.errors),
        }


class StatusRegistry(StreamObserver):
    """Open streams by id, each with what it was sent and what its client answered."""

    def __init__(self) -> None:
        self._connections: dict[str, ConnectionStatus] = {}

    def _type(self, stream: StreamInfo, type_url: str) -> TypeStatus | None:
        status = self._connections.get(stream.id)
        return None if status is None else status.type(type_url)

    # -- StreamObserver -----------------------------------------------------------------------

    def stream_opened(self, stream: StreamInfo) -> None:
        self._connections[stream.id] = ConnectionStatus(
            id=stream.id, node=stream.node, mode=stream.mode, peer=stream.peer, node_id=stream.node_id,
            user_agent=stream.user_agent,
        )

    def stream_closed(self, stream: StreamInfo) -> None:
        self._connections.pop(stream.id, None)

    def stream_refused(self, stream: StreamInfo | None, reason: str, message: str) -> None:
        status = self._connections.get(stream.id) if stream is not None else None
        if status is not None:
            status.record_error(message)

    def node_known(self, stream: StreamInfo, known: bool) -> None:
        status = self._connections.get(stream.id)
        if status is not None:
            status.known_node = known

    def subscription_changed(self, stream: StreamInfo, type_url: str, names: frozenset[str] | None) -> None:
        ts = self._type(stream, type_url)
        if ts is not None:
            ts.subscribed = names

    def response_sent(self, stream: StreamInfo, response: Response) -> None:
        ts = self._type(stream, response.type_url)
        if ts is not None:
            ts.last_sent_version, ts.last_sent_nonce = response.version, response.nonce
            ts.last_sent_at, ts.last_sent_resources = time.time(), response.resources
            ts.sent_count += 1

    def ack(self, stream: StreamInfo, type_url: str, version: str, nonce: str) -> None:
        ts = self._type(stream, type_url)
        if ts is not None:
            ts.acked_version, ts.acked_nonce, ts.acked_at = version, nonce, time.time()

    def nack(self, stream: StreamInfo, type_url: str, version: str, nonce: str, code: int, message: str) -> None:
        ts = self._type(stream, type_url)
        if ts is not None:
            ts.last_nack = Nack(version=version, nonce=nonce, error=message, code=code)
            ts.nack_count += 1

    # -- reading ------------------------------------------------------------------------------

    def connections(self, node: str | None = None) -> list[ConnectionStatus]:
        items = sorted(self._connections.values(), key=lambda c: (c.node, c.connected_at, c.id))
        return [c for c in items if node is None or c.node == node]

    def connected_nodes(self) -> set[str]:
        return {c.node for c in self._connections.values()}

    def __len__(self) -> int:
        return len(self._connections)

"""What each ADS stream was sent and what its client made of it: the data behind /debug/syncz.

ACKs are tracked here, on the server, never read back from Envoy's config_dump: Envoy keeps the
old ``version_info`` there when a pushed resource's content is unchanged (xds-protocol-notes.md).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from .order import PUSH_ORDER, short_name

_ids = itertools.count(1)


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
    subscribed: list[str] | None = None  # None: wildcard
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
        if self.subscribed == []:
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
            "subscribed": "*" if self.subscribed is None else sorted(self.subscribed),
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

    node: str
    mode: str  # "sotw" or "delta"
    peer: str = ""
    node_id: str = ""
    known_node: bool = True
    id: str = field(default_factory=lambda: f"conn-{next(_ids)}")
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


class StatusRegistry:
    """Open streams by id. Streams register on their first request and remove themselves on close."""

    def __init__(self) -> None:
        self._connections: dict[str, ConnectionStatus] = {}

    def add(self, status: ConnectionStatus) -> None:
        self._connections[status.id] = status

    def remove(self, status: ConnectionStatus) -> None:
        self._connections.pop(status.id, None)

    def connections(self, node: str | None = None) -> list[ConnectionStatus]:
        items = sorted(self._connections.values(), key=lambda c: (c.node, c.connected_at, c.id))
        return [c for c in items if node is None or c.node == node]

    def connected_nodes(self) -> set[str]:
        return {c.node for c in self._connections.values()}

    def __len__(self) -> int:
        return len(self._connections)

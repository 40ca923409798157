"""State-of-the-world ADS (StreamAggregatedResources), following xds-protocol-notes.md.

Per type the stream remembers the subscription (wildcard or names), the last response's version
and nonce. A request is an ACK or a NACK by ``error_detail`` alone; a request whose nonce is
not the last one sent is stale and ignored; a request with no nonce (first request, reconnect)
is always answered. A NACKed version is never sent again: the type is sent again only when its
content (or the subscription) changes. After every CDS response EDS is answered again, since a
warming cluster waits for a new ClusterLoadAssignment even when nothing changed (envoy#13009).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from . import wire
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, PUSH_ORDER, SECRET_TYPE, WILDCARD_TYPES, short_name
from .snapshot import Snapshot, names_version
from .stream import Stream, log

WILDCARD_NAME = "*"


@dataclass
class _TypeState:
    type_url: str
    subscribed: bool = False  # a request for this type was seen and not unsubscribed
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    ever_named: bool = False  # after an explicit name, an empty list means "none", not "all"
    pending: bool = False  # a request (or a CDS push, for EDS) wants an answer regardless of versions
    sent_version: str | None = None
    sent_nonce: str = ""

    def set_names(self, requested: list[str]) -> bool:
        """Apply a request's resource names; True when the subscription changed."""
        before = (self.subscribed, self.wildcard, frozenset(self.names))
        names = set(requested)
        if self.type_url in WILDCARD_TYPES:
            if not names and not self.ever_named:
                self.wildcard, self.names = True, set()  # legacy wildcard
            else:
                self.ever_named = self.ever_named or bool(names - {WILDCARD_NAME})
                self.wildcard = WILDCARD_NAME in names
                self.names = names - {WILDCARD_NAME}
        else:
            self.wildcard, self.names = False, names
        self.subscribed = self.wildcard or bool(self.names)
        return before != (self.subscribed, self.wildcard, frozenset(self.names))


class SotwStream(Stream):
    mode = "sotw"
    request_type = DiscoveryRequest

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._types: dict[str, _TypeState] = {t: _TypeState(t) for t in PUSH_ORDER}

    def handle(self, request: DiscoveryRequest) -> bool:
        self.check_type(request.type_url)
        self.note_requested(request.type_url)
        state = self._types[request.type_url]
        nonce = request.response_nonce
        if not nonce and request.version_info and self._nonce == 0:
            self.client_reconnected()
        if request.HasField("error_detail"):
            if nonce and nonce != state.sent_nonce:
                self.record_stale(request.type_url, nonce)
            else:
                self.record_nack(request.type_url, nonce, request.error_detail.code, request.error_detail.message)
            return False  # never resend what was rejected; a config change will send again
        if nonce and nonce != state.sent_nonce:
            self.record_stale(request.type_url, nonce)
            if not request.resource_names and request.type_url not in WILDCARD_TYPES and state.subscribed:
                # An unsubscription (a node's last EDS cluster went away) overtaken by our response:
                # honour it, or the type would wait forever for an ACK the client will never send.
                state.set_names([])
                assert self.status is not None
                self.status.type(request.type_url).subscribed = []
            return False
        if nonce:
            self.record_ack(request.type_url, nonce)
        changed = state.set_names(list(request.resource_names))
        assert self.status is not None
        self.status.type(request.type_url).subscribed = None if state.wildcard else sorted(state.names)
        if not state.subscribed:
            state.pending = False  # unsubscribed from everything: nothing to answer
            return False
        if not nonce or changed:
            state.pending = True
            return True
        return False

    async def respond(self, snapshot: Snapshot, snapshot_changed: bool) -> None:
        for type_url in PUSH_ORDER:
            state = self._types[type_url]
            if not state.subscribed:
                continue
            resources = snapshot.resources(type_url)
            if state.wildcard:
                count, version, entries = len(resources.items), resources.version, None
            else:
                selected = resources.select(state.names)
                count, version, entries = len(selected), names_version(selected), selected
            if not state.pending and version == state.sent_version:
                continue
            if state.pending and self.hold(type_url):
                continue
            pushed = not state.pending
            if state.pending and not state.wildcard:
                self._note_unserved(type_url, state.names - set(resources.items))
            state.pending = False
            nonce = self.next_nonce()
            data = wire.discovery_response_from_entries(
                version_info=version,
                entries=resources.all_entries if entries is None else b"".join(r.entry for r in entries),
                type_url=type_url,
                nonce=nonce,
                control_plane_id=self.options.control_plane_id,
            )
            state.sent_version, state.sent_nonce = version, nonce
            # Book-keeping first: the client's answer can arrive while the write is awaited.
            self.record_sent(
                type_url, version=version, nonce=nonce, count=count, size=len(data), snapshot=snapshot,
                pushed=pushed,
            )
            await self.write(data)
            if type_url == CLUSTER_TYPE and self._types[ENDPOINT_TYPE].subscribed:
                self._types[ENDPOINT_TYPE].pending = True

    def _note_unserved(self, type_url: str, missing: set[str]) -> None:
        if not missing:
            return
        self.metrics.unserved_names.inc(short_name(type_url), amount=len(missing))
        level = log.warning if type_url == SECRET_TYPE else log.info
        level(
            "node=%s asked for %s %s that its config does not have%s: not served",
            self.node, short_name(type_url), sorted(missing),
            " (a secret of an identity without a pod on this node)" if type_url == SECRET_TYPE else "",
            extra=self.log_fields(type_url),
        )

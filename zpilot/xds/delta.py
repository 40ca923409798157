"""Incremental ADS (DeltaAggregatedResources), following xds-protocol-notes.md.

Per type the stream tracks what the client has: name -> version, seeded from
``initial_resource_versions`` on a new stream and updated with every response. A response then
carries only resources whose content hash differs from the client's, and ``removed_resources``
for names the client has (or asked for) that the node's config does not contain. Subscription
changes are applied even when the request's nonce is stale. As in SotW, a NACKed version is not
sent again; after clusters change, their endpoints are sent again so warming clusters complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

from . import wire
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, PUSH_ORDER, SECRET_TYPE, WILDCARD_TYPES, short_name
from .snapshot import Snapshot
from .stream import Stream, log

WILDCARD_NAME = "*"


@dataclass
class _TypeState:
    type_url: str
    started: bool = False  # the first request of this type was seen
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # what the client has: name -> version
    force: set[str] = field(default_factory=set)  # names to send even if the client has that version
    missing_reported: set[str] = field(default_factory=set)  # requested names already answered as removed
    sent_nonce: str = ""
    dirty: bool = False  # the subscription changed: recompute even without a snapshot change

    @property
    def subscribed(self) -> bool:
        return self.wildcard or bool(self.names)


class DeltaStream(Stream):
    mode = "delta"
    request_type = DeltaDiscoveryRequest

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._types: dict[str, _TypeState] = {t: _TypeState(t) for t in PUSH_ORDER}

    def handle(self, request: DeltaDiscoveryRequest) -> bool:
        self.check_type(request.type_url)
        self.note_requested(request.type_url)
        state = self._types[request.type_url]
        if request.initial_resource_versions and self._nonce == 0:
            self.client_reconnected()
        nonce = request.response_nonce
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = set(request.resource_names_unsubscribe)
        if not state.started:
            state.started = True
            state.known = dict(request.initial_resource_versions)
            if request.type_url in WILDCARD_TYPES and not subscribe:
                state.wildcard = True  # legacy wildcard: a first request that names nothing
            state.dirty = True
        # Subscription changes count even on a stale nonce or a NACK.
        if WILDCARD_NAME in subscribe:
            state.wildcard = True
        if WILDCARD_NAME in unsubscribe:
            state.wildcard = False
        subscribe.discard(WILDCARD_NAME)
        unsubscribe.discard(WILDCARD_NAME)
        new_names = subscribe - state.names
        state.names |= subscribe
        state.names -= unsubscribe
        for name in unsubscribe:
            state.known.pop(name, None)  # the client dropped it; no removal notice is owed
            state.missing_reported.discard(name)
        if new_names:
            # A (re-)subscribed name is answered even if the client reports that version already.
            state.force |= {n for n in new_names if n not in state.known}
            state.missing_reported -= new_names
        if new_names or unsubscribe:
            state.dirty = True
        assert self.status is not None
        self.status.type(request.type_url).subscribed = None if state.wildcard else sorted(state.names)
        if nonce:
            if nonce != state.sent_nonce:
                self.record_stale(request.type_url, nonce)
            elif request.HasField("error_detail"):
                self.record_nack(request.type_url, nonce, request.error_detail.code, request.error_detail.message)
            else:
                self.record_ack(request.type_url, nonce)
        elif request.HasField("error_detail"):
            self.record_nack(request.type_url, nonce, request.error_detail.code, request.error_detail.message)
        return state.dirty

    async def respond(self, snapshot: Snapshot, snapshot_changed: bool) -> None:
        for type_url in PUSH_ORDER:
            state = self._types[type_url]
            if not state.started or not (state.dirty or snapshot_changed or state.force):
                continue
            if self.hold(type_url):
                continue
            pushed = not state.dirty
            state.dirty = False
            resources = snapshot.resources(type_url)
            items = resources.items
            if state.wildcard:
                wanted = set(items) | state.names
            else:
                wanted = set(state.names)
            send = sorted(
                n for n in wanted if n in items and (state.known.get(n) != items[n].version or n in state.force)
            )
            removed = sorted(n for n in state.known if n not in items or n not in wanted)
            missing = sorted(n for n in wanted if n not in items and n not in state.known
                             and n not in state.missing_reported)
            state.force.clear()
            if missing:
                self._note_unserved(type_url, missing)
                state.missing_reported.update(missing)
            if not send and not removed and not missing:
                continue
            nonce = self.next_nonce()
            data = wire.delta_discovery_response_from_entries(
                system_version_info=resources.version,
                entries=b"".join(items[n].delta_entry for n in send),
                removed=removed + missing,
                type_url=type_url,
                nonce=nonce,
                control_plane_id=self.options.control_plane_id,
            )
            for n in send:
                state.known[n] = items[n].version
            for n in removed:
                state.known.pop(n, None)
            state.sent_nonce = nonce
            # Book-keeping first: the client's answer can arrive while the write is awaited.
            self.record_sent(
                type_url, version=resources.version, nonce=nonce, count=len(send), size=len(data),
                snapshot=snapshot, pushed=pushed,
            )
            await self.write(data)
            if removed or missing:
                log.info("node=%s %s removed_resources=%s", self.node, short_name(type_url), removed + missing,
                         extra=self.log_fields(type_url, version=resources.version, nonce=nonce))
            if type_url == CLUSTER_TYPE and send:
                eds = self._types[ENDPOINT_TYPE]
                eds.force |= set(send) & (eds.names | (set(snapshot.resources(ENDPOINT_TYPE).items)
                                                       if eds.wildcard else set()))

    def _note_unserved(self, type_url: str, missing: list[str]) -> None:
        self.metrics.unserved_names.inc(short_name(type_url), amount=len(missing))
        level = log.warning if type_url == SECRET_TYPE else log.info
        level("node=%s asked for %s %s that its config does not have: answered as removed",
              self.node, short_name(type_url), missing, extra=self.log_fields(type_url))

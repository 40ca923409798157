"""Incremental ADS (DeltaAggregatedResources), following xds-protocol-notes.md.

Per type the stream's :class:`~zpilot.xds.subscription.Subscription` (shared with SotW) also
tracks what the client has: name -> version, seeded from ``initial_resource_versions`` on a new
stream and updated with every response. A response then
carries only resources whose content hash differs from the client's, and ``removed_resources``
for names the client has (or asked for) that the node's config does not contain (once: a name
stays removed until it is served again or subscribed again). Subscription
changes are applied even when the request's nonce is stale. As in SotW, a NACKed version is not
sent again; after clusters change, their endpoints are sent again so warming clusters complete.
"""

from __future__ import annotations

import grpc

from . import wire
from .decode import Request, RequestError
from .limits import explain
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, PUSH_ORDER, short_name
from .snapshot import Snapshot
from .stream import Stream, log, loggable_names


class DeltaStream(Stream):
    mode = "delta"

    def handle(self, request: Request) -> bool:
        sub = self.accept(request.type_url)
        if request.initial_versions and self._nonce == 0:
            self.client_reconnected()
        nonce = request.nonce
        # Subscription changes count even on a stale nonce or a NACK.
        if sub.apply_delta(request.subscribe, request.unsubscribe, request.initial_versions):
            sub.pending = True
        limit = self.options.limits.max_resource_names
        if len(sub.names) > limit:  # delta subscriptions add up over requests: bound the sum too
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"subscription to {len(sub.names)} {short_name(request.type_url)} names; "
                f"{explain('max_resource_names', limit)}",
                "too_many_names",
            )
        self.report_subscription(sub)
        if nonce and nonce != sub.sent_nonce:
            self.record_stale(request.type_url, nonce)
        elif request.nack is not None:
            self.record_nack(sub, nonce, request.nack.code, request.nack.message)
        elif nonce:
            self.record_ack(sub, nonce)
        return sub.pending

    async def respond(self, snapshot: Snapshot, snapshot_changed: bool) -> None:
        for type_url in PUSH_ORDER:
            sub = self.subscriptions[type_url]
            if not sub.started or not (sub.pending or snapshot_changed or sub.force):
                continue
            if self.hold(type_url):
                continue
            latency = self.push_latency(sub, snapshot)
            sub.pending = False
            resources = snapshot.resources(type_url)
            items = resources.items
            wanted = sub.wanted(items)
            send = sorted(
                n for n in wanted if n in items and (sub.known.get(n) != items[n].version or n in sub.force)
            )
            removed = sorted(n for n in sub.known if n not in items or n not in wanted)
            missing = sorted(n for n in sub.names - set(items) - set(sub.known) if n not in sub.missing_reported)
            sub.force.clear()
            self.note_missing(sub, missing, "answered as removed")
            if not send and not removed and not missing:
                continue
            nonce = self.next_nonce()
            chunks = wire.delta_discovery_response_chunks(
                system_version_info=resources.version,
                entries=[part for n in send for part in items[n].delta_parts],
                removed=removed + missing,
                type_url=type_url,
                nonce=nonce,
                control_plane_id=self.options.control_plane_id,
            )
            for n in send:
                sub.known[n] = items[n].version
            for n in removed:
                sub.known.pop(n, None)
            sub.sent(resources.version, nonce, send, removed)
            # Reported first: the client's answer can arrive while the write is awaited.
            self.record_sent(type_url, version=resources.version, nonce=nonce, count=len(send),
                             size=sum(map(len, chunks)), push_latency=latency)
            await self.write(chunks)
            del chunks
            if removed or missing:
                log.info("node=%s %s removed_resources=%s", self.node, short_name(type_url),
                         loggable_names(removed + missing),
                         extra=self.log_fields(type_url, version=resources.version, nonce=nonce))
            if type_url == CLUSTER_TYPE and send:
                eds = self.subscriptions[ENDPOINT_TYPE]
                eds.force |= set(send) & eds.wanted(snapshot.resources(ENDPOINT_TYPE).items)

"""State-of-the-world ADS (StreamAggregatedResources), following xds-protocol-notes.md.

Per type the stream's :class:`~zpilot.xds.subscription.Subscription` (shared with delta) holds
the requested names (or wildcard), the last response's version and nonce. A request is an ACK or a NACK by ``error_detail`` alone; a request whose nonce is
not the last one sent is stale and ignored; a request with no nonce (first request, reconnect)
is always answered. A NACKed version is never sent again: the type is sent again only when its
content (or the subscription) changes. After every CDS response EDS is answered again, since a
warming cluster waits for a new ClusterLoadAssignment even when nothing changed (envoy#13009).
"""

from __future__ import annotations

from . import wire
from .decode import Request
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, PUSH_ORDER, WILDCARD_TYPES
from .snapshot import Snapshot, names_version
from .stream import Stream


class SotwStream(Stream):
    mode = "sotw"

    def handle(self, request: Request) -> bool:
        sub = self.accept(request.type_url)
        nonce = request.nonce
        if not nonce and request.version_info and self._nonce == 0:
            self.client_reconnected()
        if request.nack is not None:
            if nonce and nonce != sub.sent_nonce:
                self.record_stale(request.type_url, nonce)
            else:
                self.record_nack(sub, nonce, request.nack.code, request.nack.message)
            return False  # never resend what was rejected; a config change will send again
        if nonce and nonce != sub.sent_nonce:
            self.record_stale(request.type_url, nonce)
            if not request.names and request.type_url not in WILDCARD_TYPES and sub.subscribed:
                # An unsubscription (a node's last EDS cluster went away) overtaken by our response:
                # honour it, or the type would wait forever for an ACK the client will never send.
                sub.set_names([])
                sub.pending = False
                self.report_subscription(sub)
            return False
        if nonce:
            self.record_ack(sub, nonce)
        changed = sub.set_names(request.names)
        self.report_subscription(sub)
        if not sub.subscribed:
            sub.pending = False  # unsubscribed from everything: nothing to answer
            return False
        if not nonce or changed:
            sub.pending = True
            sub.missing_reported.clear()  # a new ask: the names it lacks are reported for it
            return True
        return False

    async def respond(self, snapshot: Snapshot, snapshot_changed: bool) -> None:
        for type_url in PUSH_ORDER:
            sub = self.subscriptions[type_url]
            if not sub.started:
                continue
            if sub.pending and self.hold(type_url):
                continue
            latency = self.push_latency(sub, snapshot)
            if not sub.subscribed:
                continue
            resources = snapshot.resources(type_url)
            if sub.wildcard:
                served = list(resources.items)
                count, version, entries = len(served), resources.version, None
            else:
                selected = resources.select(sub.names)
                served = [r.name for r in selected]
                count, version, entries = len(selected), names_version(selected), selected
            if not sub.pending and version == sub.sent_version:
                continue
            sub.pending = False
            self.note_missing(sub, sub.names - set(resources.items), "not served")
            nonce = self.next_nonce()
            data = wire.discovery_response_from_entries(
                version_info=version,
                entries=resources.all_entries if entries is None else b"".join(p for r in entries for p in r.parts),
                type_url=type_url,
                nonce=nonce,
                control_plane_id=self.options.control_plane_id,
            )
            sub.sent(version, nonce, served)
            # Reported first: the client's answer can arrive while the write is awaited.
            self.record_sent(type_url, version=version, nonce=nonce, count=count, size=len(data),
                             push_latency=latency)
            await self.write(data)
            if type_url == CLUSTER_TYPE and self.subscriptions[ENDPOINT_TYPE].subscribed:
                self.subscriptions[ENDPOINT_TYPE].pending = True

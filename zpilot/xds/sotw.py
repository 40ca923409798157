"""State-of-the-world ADS (StreamAggregatedResources), following xds-protocol-notes.md.

Per type the stream's :class:`~zpilot.xds.subscription.Subscription` (shared with delta) holds
the requested names (or wildcard), the last response's version and nonce. A request is an ACK or a NACK by ``error_detail`` alone; a request whose nonce is
not the last one sent is stale and ignored; a request with no nonce (first request, reconnect)
is always answered. A NACKed version is never sent again: the type is sent again only when its
content (or the subscription) changes.

LDS and CDS responses carry every resource (a missing one is deleted). An EDS response carries
only the ClusterLoadAssignments whose content differs from what this stream last sent of them
(``Subscription.known``): Envoy applies each assignment a response carries to its cluster and
leaves the others as they are, so one changed service port costs one assignment per stream, not
every one. A request that needs an answer is answered with every subscribed assignment when it
is the stream's first or a reconnect (no nonce); when it changes the name list of an open stream
(a cluster added or removed), with the newly named assignments and those that changed, since
Envoy keeps the ones it has (a service added is one assignment per stream, not every one). After a CDS response, the assignments of the clusters
it added or changed are sent again even when they did not change, since such a cluster warms
until it gets one (envoy#13009); an unchanged cluster is not touched by Envoy and needs nothing.
``version_info`` is always that of every subscribed assignment together.

A response is booked before it is written as far as its answer is matched against it (version,
nonce; for EDS, the assignments the client holds, which its requests are read against); the names
a full state (CDS, LDS) carries, thousands at R, are booked once gRPC has it: a pod's own node's
CDS is the first response of its change, and that bookkeeping (0.6-0.8 ms) held the other 99
streams' sends. A full state of every resource is booked as those resources
(``Subscription.sent_whole``), not name by name: the clusters the next CDS adds or changes (whose
endpoints are then due) are found from them by ``TypeResources.changes_since``, known for the
shared sets a node's clusters are composed of.
"""

from __future__ import annotations

from typing import Any

from . import wire
from .decode import NamesBytes, Request, decode_sotw
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, PARTIAL_TYPES, PUSH_ORDER, SERVED_TYPES, WILDCARD_TYPES
from .snapshot import Snapshot, TypeResources, names_version
from .stream import Stream


class SotwStream(Stream):
    mode = "sotw"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per served type, the last request's names and the bytes they were in (at most a request's size each).
        self._names_bytes: dict[str, NamesBytes] = {}

    def decode(self, raw: bytes) -> Request:
        # An ACK repeats the names of the request before it: not decoded again (decode.decode_sotw).
        request, names = decode_sotw(raw, self.options.limits, self._names_bytes)
        if request.type_url in SERVED_TYPES:
            if names is None:
                self._names_bytes.pop(request.type_url, None)
            else:
                self._names_bytes[request.type_url] = names
        return request

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
            if request.type_url in PARTIAL_TYPES and sub.known:
                # Not answered, but the client may have let go of the assignments this request lacks
                # (a cluster removed) and ask for them again before it answers our response: they are
                # no longer counted as held, and sent again while still subscribed.
                lacking = sub.known.keys() - set(request.names)
                sub.let_go(lacking)
                sub.force |= lacking & sub.names
            if not request.names and request.type_url not in WILDCARD_TYPES and sub.subscribed:
                # An unsubscription (a node's last EDS cluster went away) overtaken by our response:
                # honour it, or the type would wait forever for an ACK the client will never send.
                sub.set_names([])
                sub.pending = False
                sub.forget_known()
                self.report_subscription(sub)
            return False
        if nonce:
            self.record_ack(sub, nonce)
        before = sub.names
        changed = sub.set_names(request.names)
        self.report_subscription(sub)
        if not sub.subscribed:
            sub.pending = False  # unsubscribed from everything: nothing to answer
            return False
        if nonce and request.type_url in PARTIAL_TYPES:
            # EDS on an open stream: the client holds what this stream sent it and did not let go of,
            # so a changed name list (a service added) is answered with the new names and whatever
            # changed, not every assignment again; names only let go need no answer (as istiod)
            if changed:
                sub.missing_reported.clear()
                sub.let_go(sub.known.keys() - sub.names)
                sub.force |= sub.names - before
            sub.pending = bool(sub.force)
            return sub.pending
        if not nonce or changed:
            sub.missing_reported.clear()  # a new ask: the names it lacks are reported for it
            sub.pending = True
            sub.forget_known()  # and it is answered with everything subscribed
            return True
        return False

    async def respond(self, snapshot: Snapshot, snapshot_changed: bool) -> None:
        for type_url in PUSH_ORDER:
            sub = self.subscriptions[type_url]
            if not sub.started:
                continue
            if sub.pending and self.hold(type_url):
                continue
            pushed = self.pushed(sub, snapshot)
            if not sub.subscribed:
                continue
            resources = snapshot.resources(type_url)
            known_of = sub.known_of
            if known_of is not None and not (sub.pending or sub.force):
                # The client has every one of known_of, which are the very names it asks for: unless
                # names came or went (then below), what changed since is all it needs.
                if known_of is resources:
                    continue
                changed, removed = resources.changes_since(known_of)  # type: ignore[arg-type]
                if not removed and len(resources.items) == len(known_of.items):  # type: ignore[attr-defined]
                    sub.known_of = resources
                    if changed:
                        await self._send(sub, type_url, resources.version, changed, pushed)
                    continue
            if (sub.wildcard and not sub.pending and type_url not in PARTIAL_TYPES
                    and resources.version == sub.sent_version):
                if sub.sent_whole is not None:
                    sub.sent_whole = resources  # the same content: held as these, the older ones let go
                continue  # it has them all: told before listing thousands of them, for every stream a change wakes
            # every served one, by name (EDS: a node's Envoy asks for the assignment of each EDS cluster)
            every = not sub.wildcard and sub.names == resources.items.keys()
            if sub.wildcard or every:
                selected, version = list(resources.items.values()), resources.version
            else:
                selected = resources.select(sub.names)
                version = names_version(selected)
            if type_url in PARTIAL_TYPES:
                for name in sub.known.keys() - resources.items.keys():
                    del sub.known[name]  # gone from the config: sent again if it comes back
                send = [r for r in selected if sub.known.get(r.name) != r.version or r.name in sub.force]
                sub.force.clear()
                sub.known_of = resources if every else None  # after this, the client has every one it asks for
                if not sub.pending and not send:
                    continue
                entries = [part for r in send for part in r.parts]
            elif not sub.pending and version == sub.sent_version:
                if sub.sent_whole is not None and every:
                    sub.sent_whole = resources  # (as above)
                continue
            else:
                send = selected
                entries = resources.entry_chunks() if sub.wildcard else [part for r in send for part in r.parts]
            sub.pending = False
            if not every and sub.names:  # (a wildcard's full state: nothing to look through)
                self.note_missing(sub, [n for n in sub.names if n not in resources.items], "not served")
            whole = resources if sub.wildcard or every else None
            await self._send(sub, type_url, version, send, pushed, entries, whole)

    async def _send(
        self, sub, type_url: str, version: str, send: list, pushed: float | None, entries: list | None = None,
        whole: TypeResources | None = None,
    ) -> None:
        """Send ``send`` (its response ``entries``, when already joined) as the response of
        ``version``, and book what the client now has. ``pushed``: the time of the model change
        this response pushes, if it is a push; ``whole``: the resources ``send`` is every one of
        (a full state's), if it is."""
        if entries is None:
            entries = [part for r in send for part in r.parts]
        nonce = self.next_nonce()
        chunks = wire.discovery_response_chunks(
            version_info=version, entries=entries, type_url=type_url, nonce=nonce,
            control_plane_id=self.options.control_plane_id,
        )
        del entries
        partial = type_url in PARTIAL_TYPES
        if partial:  # what the client holds of them is read as its requests are handled: booked first
            sub.known.update((r.name, r.version) for r in send)
            sub.sent(version, nonce, [r.name for r in send])
        else:
            # A full state (CDS, LDS) carries thousands of names at R (a pod's own node: its CDS
            # first, ahead of the 99 other streams of the change): only what its answer is matched
            # against (version, nonce) is booked before the write; which names it carries, after.
            sub.sent(version, nonce, ())
        # Reported first: the client's answer can arrive while the write is awaited.
        self.record_sent(type_url, version=version, nonce=nonce, count=len(send), size=sum(map(len, chunks)),
                         pushed=pushed)
        await self.write(chunks)
        del chunks
        if partial:
            return
        # Every subscribed one is in every response: the client now holds ``send``. A full state
        # of every resource (a wildcard's: a pod's own node's CDS, 2,100 clusters at R) is booked
        # as those resources, not name by name: what the next one changes is then found from them
        # (``TypeResources.changes_since``, known for the shared sets), ahead of the node's next
        # response of the change.
        warming = None
        if type_url == CLUSTER_TYPE:  # only a CDS response makes EDS due again: the clusters it adds or changes
            before = sub.sent_whole
            if whole is not None and before is not None:
                warming = [r.name for r in whole.changes_since(before)[0]]  # type: ignore[arg-type]
            else:
                warming = [r.name for r in send if sub.held_version(r.name) != r.version]
        sub.sent_whole = whole
        if whole is not None:
            sub.known = {}  # held as sent_whole
            sub.sent(version, nonce, whole.items.keys())
        else:
            sub.known = {r.name: r.version for r in send}
            sub.sent(version, nonce, [r.name for r in send])
        eds = self.subscriptions[ENDPOINT_TYPE]
        if warming and eds.subscribed:
            # A cluster Envoy added or changed warms until its assignment comes (envoy#13009).
            eds.force |= eds.names.intersection(warming)


"""Incremental ADS (DeltaAggregatedResources), following xds-protocol-notes.md.

Per type the stream's :class:`~zpilot.xds.subscription.Subscription` (shared with SotW) also
tracks what the client has: name -> version, seeded from ``initial_resource_versions`` on a new
stream and updated with every response. A response then
carries only resources whose content hash differs from the client's, and ``removed_resources``
for names the client has (or asked for) that the node's config does not contain (once: a name
stays removed until it is served again or subscribed again). Subscription
changes are applied even when the request's nonce is stale. As in SotW, a NACKed version is not
sent again; after clusters change, their endpoints are sent again so warming clusters complete.

What a response carries (:func:`due`) is found in one of two ways with the same result. Once a
response (or a look that found nothing to send) has brought the client up to some resources of
the node, ``Subscription.known_of`` names them: the next response needs only what changed between
them and the node's current resources, which ``TypeResources.changes_since`` finds once for every
stream (a node's, and the nodes sharing both sets), filtered by what this stream wants. Names
subscribed since (``Subscription.fresh``: a service added, its clusters' endpoints) are compared
one by one, names unsubscribed are simply no longer wanted. Otherwise every wanted and every held
name is compared with the current resources (a new stream or a reconnect, wildcard turned on or
off): at R that is 2,100 EDS names; done for each of 100 streams on every subscription change, it
was most of the serving CPU of a service added.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from operator import attrgetter

import grpc

from . import wire
from .decode import Request, RequestError
from .limits import explain
from .order import CLUSTER_TYPE, ENDPOINT_TYPE, PUSH_ORDER, short_name
from .snapshot import CachedResource, Snapshot, TypeResources
from .stream import Stream, log, loggable_names
from .subscription import Subscription


@dataclass(frozen=True)
class Due:
    """What one delta response of a type carries: resources (by name), and names removed (held
    by the client but gone or no longer wanted; ``missing``: asked for, never held, not served)."""

    send: list[CachedResource]
    removed: list[str]
    missing: list[str]

    def __bool__(self) -> bool:
        return bool(self.send or self.removed or self.missing)


def due(sub: Subscription, resources: TypeResources, *, shared: bool = True) -> Due:
    """What the client needs of ``resources`` (names sorted): from the changes since what it is
    known to have been brought up to (``shared``, when that applies), else by comparing every name."""
    if shared and sub.known_of is not None:
        return _since(sub, resources, sub.known_of)  # type: ignore[arg-type]
    return _compared(sub, resources)


def _since(sub: Subscription, resources: TypeResources, before: TypeResources) -> Due:
    """``known`` is exactly the wanted ones of ``before`` but for the names subscribed since
    (``Subscription.fresh``), and every other name wanted but not in it was answered already
    (``Subscription.known_of``): the others need what changed since, the fresh ones are compared."""
    items = resources.items
    if before is resources:
        changed: list[CachedResource] = []
        gone: list[str] = []
    else:
        changed, gone = resources.changes_since(before)
    fresh = sub.fresh
    if sub.wildcard:  # wanted: every one there is (an added one too); the client had all of before's
        send = list(changed)
        removed = sorted(gone)
    else:
        names = sub.names
        send = [r for r in changed if r.name in names and r.name not in fresh]
        removed = [n for n in gone if n in names and n not in fresh]
    missing: list[str] = []
    if fresh:  # as _compared does, for these few
        known, force = sub.known, sub.force
        for n in fresh:
            r = items.get(n)
            if r is not None:
                if known.get(n) != r.version or n in force:
                    send.append(r)
            elif n in known:
                removed.append(n)
            elif n not in sub.missing_reported:
                missing.append(n)
    if sub.force:
        sending = {r.name for r in send}
        send += [items[n] for n in sub.force if n not in sending and n in items and (sub.wildcard or n in sub.names)]
    send.sort(key=_name)
    removed.sort()
    missing.sort()
    return Due(send, removed, missing)


def _compared(sub: Subscription, resources: TypeResources) -> Due:
    """Every wanted and every held name compared with ``resources`` (a new stream: 2,100 per type
    at R, so walked in the resources' own order, nearly sorted already, and sorted at the end)."""
    items = resources.items
    known, force, names = sub.known, sub.force, sub.names
    if sub.wildcard:  # wanted: every one there is, and the names asked for
        if not known and not force:  # a new stream (not a reconnect): all of them
            send = list(items.values())
        else:
            send = [r for n, r in items.items() if known.get(n) != r.version or n in force]
        removed = [n for n in known if n not in items]
    else:
        if len(names) * 4 < len(items):
            send = [r for n in names if (r := items.get(n)) is not None and (known.get(n) != r.version or n in force)]
        else:
            send = [r for n, r in items.items() if n in names and (known.get(n) != r.version or n in force)]
        removed = [n for n in known if n not in items or n not in names]
    reported = sub.missing_reported
    missing = [n for n in names if n not in items and n not in known and n not in reported]
    send.sort(key=_name)
    removed.sort()
    missing.sort()
    return Due(send, removed, missing)


_name, _version = attrgetter("name"), attrgetter("version")


def settle(sub: Subscription, resources: TypeResources, answer: Due) -> None:
    """Book ``answer`` as the client's (before it is written: a request read meanwhile finds it
    booked): what it now holds, brought up to ``resources``."""
    sub.known.update(zip(map(_name, answer.send), map(_version, answer.send)))
    for n in answer.removed:
        sub.known.pop(n, None)
    sub.force.clear()
    sub.fresh.clear()
    sub.known_of = resources


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
            pushed = self.pushed(sub, snapshot)
            resources = snapshot.resources(type_url)
            if sub.known_of is resources and not (sub.pending or sub.force or sub.fresh):
                continue  # it holds these very resources: nothing due (most types of most streams, each change)
            answer = due(sub, resources)
            sub.pending = False
            if answer.missing:  # only for names asked for since the last look: nothing to report on most
                self.note_missing(sub, answer.missing, "answered as removed")
            settle(sub, resources, answer)
            if not answer:
                continue
            send, removed = answer.send, answer.removed + answer.missing
            nonce = self.next_nonce()
            chunks = wire.delta_discovery_response_chunks(
                system_version_info=resources.version,
                entries=resources.delta_entry_chunks() if len(send) == len(resources.items)
                else [part for r in send for part in r.delta_parts],  # every one: a shared set joined once
                removed=removed,
                type_url=type_url,
                nonce=nonce,
                control_plane_id=self.options.control_plane_id,
            )
            names = [r.name for r in send]
            sub.sent(resources.version, nonce, names, answer.removed)
            # Reported first: the client's answer can arrive while the write is awaited.
            self.record_sent(type_url, version=resources.version, nonce=nonce, count=len(send),
                             size=sum(map(len, chunks)), pushed=pushed)
            await self.write(chunks)
            del chunks
            if removed and log.isEnabledFor(logging.INFO):  # (its names made only for a line written)
                log.info("node=%s %s removed_resources=%s", self.node, short_name(type_url), loggable_names(removed),
                         extra=self.log_fields(type_url, version=resources.version, nonce=nonce))
            if type_url == CLUSTER_TYPE and names:
                # A cluster Envoy added or changed warms until its endpoints come (envoy#13009).
                eds = self.subscriptions[ENDPOINT_TYPE]
                if eds.wildcard:
                    endpoints = snapshot.resources(ENDPOINT_TYPE).items
                    eds.force.update(n for n in names if n in eds.names or n in endpoints)
                else:  # (a new stream's 2,100 clusters: found without a Python loop)
                    eds.force |= eds.names.intersection(names)

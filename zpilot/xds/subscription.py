"""One stream's subscription to one type: what the client asked for and what it was sent.

State of the world and delta share it. They differ only in how a request changes it
(:meth:`Subscription.set_names` replaces the names, :meth:`Subscription.apply_delta` adds and
removes) and in how a response is shaped; what is tracked is the same: requested names or
wildcard, the last response's version and nonce, what the client has (name -> version: each
response carries only what differs, in delta and in SotW EDS), what is due regardless of
versions, which names this stream was ever served (so a name that disappeared from the config is churn, not an
unauthorized request), and which model change the type was last brought up to (so push latency
is measured once per change and type).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping

from .order import WILDCARD_TYPES

WILDCARD_NAME = "*"


@dataclass
class Subscription:
    type_url: str
    started: bool = False  # a request of this type was seen on the stream
    wildcard: bool = False
    names: set[str] = field(default_factory=set)  # explicitly requested names ("*" excluded)
    #: SotW: after an explicit name, an empty list means "none" instead of the legacy wildcard.
    ever_named: bool = False
    #: Answer even when versions are unchanged: a new subscription, or EDS after a CDS response
    #: (a warming cluster waits for its endpoints even when they did not change, envoy#13009).
    pending: bool = False
    #: Names to send even if the client has that version (delta: re-subscribed; both: the
    #: endpoints of a cluster a CDS response added or changed, which warms until they come).
    force: set[str] = field(default_factory=set)
    #: What the client has, name -> version. Delta: seeded from ``initial_resource_versions``.
    #: SotW: what this stream last sent of each resource (cleared on a new ask, whose answer
    #: carries everything subscribed).
    known: dict[str, str] = field(default_factory=dict)
    #: The resources (a ``TypeResources``) that ``known`` holds every subscribed one of, at
    #: their versions, when it does: the next response then needs only what changed since, found
    #: once for every stream (``TypeResources.changes_since``), not by going through them all.
    #: Delta: ``known`` is then exactly the subscribed ones of them (but for ``fresh``), and every
    #: other subscribed name they lack was already answered as removed; reset when wildcard is
    #: turned on or off.
    known_of: object | None = None
    #: Delta, not wildcard: names subscribed since ``known_of`` was set, which the client was not
    #: brought up to with the others; the next response compares these one by one (a service
    #: added: its two EDS names, not the 2,000 others).
    fresh: set[str] = field(default_factory=set)
    #: SotW full state (CDS, LDS): the resources (a ``TypeResources``) the last response carried
    #: every one of, when it did (``known`` is then empty: the client holds these).
    sent_whole: object | None = None
    sent_version: str | None = None
    sent_nonce: str = ""
    #: Names sent on this stream at any time (bounded by the node's config over the stream's life).
    ever_served: set[str] = field(default_factory=set)
    #: Requested names already reported missing (delta: answered as removed); reported again only
    #: when asked for again (a new SotW request list, a delta re-subscription) or after being served.
    missing_reported: set[str] = field(default_factory=set)
    #: ``changed_at`` of the snapshot this type was last brought up to date with.
    seen_changed_at: float | None = None
    #: Bumped whenever ``wildcard`` or ``names`` change: the stream reports the subscription to
    #: its observer only then, never copying a large subscription for a request that kept it.
    revision: int = 0
    #: SotW: the last request's names as sent, to tell an ACK that repeats them (an EDS ACK names
    #: every assignment, 2,100 at R) without building a set of them.
    requested: tuple[str, ...] | None = None

    @property
    def subscribed(self) -> bool:
        return self.wildcard or bool(self.names)

    def view(self) -> frozenset[str] | None:
        """The subscription as observers get it: None for wildcard, else the names."""
        return None if self.wildcard else frozenset(self.names)

    def wanted(self, available: Iterable[str]) -> set[str]:
        """The names to serve out of ``available``: all of them (and the named ones) for wildcard."""
        return set(available) | self.names if self.wildcard else set(self.names)

    # -- requests -------------------------------------------------------------------------------

    def set_names(self, requested: Iterable[str]) -> bool:
        """SotW: a request's ``resource_names`` replace the subscription; True when it changed."""
        requested = tuple(requested)
        # The same list as the last request: the same subscription. An ACK's names are the very
        # tuple of the request before (decode.decode_sotw): told without comparing 2,100 names.
        if requested is self.requested or requested == self.requested:
            return False
        self.requested = requested
        before_wildcard, before_names = self.wildcard, self.names  # replaced below, never changed in place
        names = set(requested)
        self.started = True
        if self.type_url in WILDCARD_TYPES:
            if not names and not self.ever_named:
                self.wildcard, self.names = True, set()  # legacy wildcard
            else:
                self.ever_named = self.ever_named or bool(names - {WILDCARD_NAME})
                self.wildcard = WILDCARD_NAME in names
                self.names = names - {WILDCARD_NAME}
        else:
            self.wildcard, self.names = False, names
        self.missing_reported &= self.names
        changed = before_wildcard != self.wildcard or before_names != self.names
        self.revision += changed
        return changed

    def apply_delta(
        self, subscribe: Iterable[str], unsubscribe: Iterable[str], initial: Mapping[str, str]
    ) -> bool:
        """Delta: a request's (un)subscriptions; the first request also says what the client has.
        True when the subscription changed (it then needs an answer)."""
        subscribe, unsubscribe = set(subscribe), set(unsubscribe)
        changed = False
        first = not self.started
        if first:
            self.started = True
            self.known = dict(initial)
            if self.type_url in WILDCARD_TYPES and not subscribe:
                self.wildcard = True  # legacy wildcard: a first request that names nothing
            changed = True
        wildcard = self.wildcard
        if WILDCARD_NAME in subscribe:
            wildcard = True
        if WILDCARD_NAME in unsubscribe:
            wildcard = False
        toggled = wildcard != self.wildcard
        changed = changed or toggled
        revised = toggled
        self.wildcard = wildcard
        subscribe.discard(WILDCARD_NAME)
        unsubscribe.discard(WILDCARD_NAME)
        new_names = subscribe - self.names
        revised = revised or bool(new_names) or bool(unsubscribe & self.names)
        self.names |= subscribe
        self.names -= unsubscribe
        self.revision += revised
        for name in unsubscribe:
            self.known.pop(name, None)  # the client dropped it; no removal notice is owed
        self.missing_reported -= unsubscribe | new_names
        # A (re-)subscribed name is answered even if the client reports that version already.
        self.force |= {n for n in new_names if n not in self.known}
        changed = changed or bool(new_names or unsubscribe)
        if changed:
            if self.known_of is not None and not (first or toggled or wildcard):
                # names came or went: the client still holds exactly the others' versions of known_of
                self.fresh |= new_names
                self.fresh -= unsubscribe
            else:  # the first request, or wildcard on or off: the next response goes through everything
                self.known_of = None
                self.fresh.clear()
        return changed

    def let_go(self, names: Iterable[str]) -> None:
        """SotW EDS: the client let go of ``names`` (each held): no longer counted as held, so
        sent again if asked for again."""
        for name in names:
            del self.known[name]
        self.known_of = None

    def held_version(self, name: str) -> str | None:
        """SotW: the version of ``name`` the client holds, as this stream last sent it (None: none)."""
        if self.sent_whole is not None:
            held = self.sent_whole.items.get(name)  # type: ignore[attr-defined]
            return None if held is None else held.version
        return self.known.get(name)

    def forget_known(self) -> None:
        """SotW, a new ask: its answer carries everything subscribed, whatever was sent before."""
        self.known.clear()
        self.known_of = None
        self.sent_whole = None
        self.force.clear()

    # -- responses ------------------------------------------------------------------------------

    def bring_up_to(self, changed_at: float) -> bool:
        """The type is being brought up to date with the snapshot of the model change at
        ``changed_at``; True when that change is new to this type on this stream (a push), False
        for the stream's first look at the type and for another look at the same snapshot."""
        new = self.seen_changed_at is not None and changed_at != self.seen_changed_at
        self.seen_changed_at = changed_at
        return new

    def new_missing(self, missing: Iterable[str]) -> tuple[list[str], list[str]]:
        """Of requested names the config lacks, those not reported yet, split into (never served
        on this stream, served before and removed since); both are now reported."""
        fresh = set(missing) - self.missing_reported
        self.missing_reported |= fresh
        return sorted(fresh - self.ever_served), sorted(fresh & self.ever_served)

    def sent(self, version: str, nonce: str, served: Collection[str], removed: Collection[str] = ()) -> None:
        """Book-keeping of a response carrying ``served`` (and, delta, ``removed``)."""
        self.sent_version, self.sent_nonce = version, nonce
        self.ever_served.update(served)
        if self.missing_reported:
            self.missing_reported.difference_update(served)
        if removed:
            # A removal of a name the client still asks for tells it the name is gone: not again.
            self.missing_reported |= self.names.intersection(removed)

"""What a delta response carries, found from the changes shared by every stream (``due``'s fast
path, ``Subscription.known_of``) or by comparing every name: always the same answer.

The fast path is right only while its precondition holds (the client holds exactly the wanted
resources of what it was last brought up to, but for the names subscribed since, and wildcard was
not turned on or off since); these
tests drive one subscription through both ways side by side and compare every answer."""

from __future__ import annotations

import random

import pytest

from zpilot.xds.delta import Due, due, settle
from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE
from zpilot.xds.snapshot import CachedResource, TypeResources
from zpilot.xds.subscription import Subscription


def resources(type_url: str, versions: dict[str, str]) -> TypeResources:
    return TypeResources.of_cached(
        type_url, {n: CachedResource(n, type_url, v, (f"{n}={v}".encode(),), 0) for n, v in sorted(versions.items())}
    )


def shape(answer: Due) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    return [(r.name, r.version) for r in answer.send], answer.removed, answer.missing


class Pair:
    """One stream's subscription kept twice: answered from shared changes, and by comparing."""

    def __init__(self, type_url: str) -> None:
        self.fast, self.full = Subscription(type_url), Subscription(type_url)
        self.shortcuts = 0
        self.nonce = 0

    def request(self, subscribe=(), unsubscribe=(), initial=None) -> None:
        for sub in (self.fast, self.full):
            if sub.apply_delta(subscribe, unsubscribe, initial or {}):
                sub.pending = True  # as DeltaStream.handle

    def force(self, *names: str) -> None:
        """As after a CDS response: these are sent even at the version the client has."""
        for sub in (self.fast, self.full):
            sub.force.update(names)

    def respond(self, current: TypeResources) -> Due:
        """One look at ``current``, as DeltaStream.respond: both ways must give the same answer."""
        self.shortcuts += self.fast.known_of is not None
        answers = []
        for sub, shared in ((self.fast, True), (self.full, False)):
            answer = due(sub, current, shared=shared)
            sub.pending = False
            sub.new_missing(answer.missing)
            settle(sub, current, answer)
            if answer:
                sub.sent(current.version, str(self.nonce), [r.name for r in answer.send], answer.removed)
            answers.append(answer)
        self.nonce += 1
        fast, full = answers
        assert shape(fast) == shape(full)
        assert self.fast.known == self.full.known and self.fast.missing_reported == self.full.missing_reported
        return fast


def test_a_removed_resource_is_removed_once() -> None:
    p = Pair(ENDPOINT_TYPE)
    p.request(subscribe=["a", "b"])
    p.respond(resources(ENDPOINT_TYPE, {"a": "1", "b": "1"}))
    answer = p.respond(resources(ENDPOINT_TYPE, {"a": "1"}))
    assert shape(answer) == ([], ["b"], []) and p.shortcuts == 1
    assert not p.respond(resources(ENDPOINT_TYPE, {"a": "1", "x": "1"}))  # and not again
    assert shape(p.respond(resources(ENDPOINT_TYPE, {"a": "1", "b": "2"}))) == ([("b", "2")], [], [])


def test_a_resource_outside_the_subscription_is_not_sent_nor_removed() -> None:
    p = Pair(ENDPOINT_TYPE)
    p.request(subscribe=["a"])
    p.respond(resources(ENDPOINT_TYPE, {"a": "1", "z": "1"}))
    assert not p.respond(resources(ENDPOINT_TYPE, {"a": "1", "z": "2", "y": "1"}))
    assert not p.respond(resources(ENDPOINT_TYPE, {"a": "1"}))
    assert shape(p.respond(resources(ENDPOINT_TYPE, {"a": "2"}))) == ([("a", "2")], [], [])
    assert p.shortcuts == 3


def test_wildcard_gets_every_added_changed_and_removed_one() -> None:
    p = Pair(CLUSTER_TYPE)
    p.request()  # a first request naming nothing: wildcard
    p.respond(resources(CLUSTER_TYPE, {"a": "1", "b": "1"}))
    answer = p.respond(resources(CLUSTER_TYPE, {"a": "2", "c": "1"}))
    assert shape(answer) == ([("a", "2"), ("c", "1")], ["b"], []) and p.shortcuts == 1


def test_a_forced_name_is_sent_again_at_the_version_the_client_has() -> None:
    p = Pair(ENDPOINT_TYPE)
    p.request(subscribe=["a", "b"])
    same = resources(ENDPOINT_TYPE, {"a": "1", "b": "1", "c": "1"})
    p.respond(same)
    p.force("b", "c", "gone")  # clusters b, c, gone sent: only the wanted ones that exist come
    assert shape(p.respond(same)) == ([("b", "1")], [], [])
    p.force("a")
    assert shape(p.respond(resources(ENDPOINT_TYPE, {"a": "1", "b": "2"}))) == ([("a", "1"), ("b", "2")], [], [])
    assert p.shortcuts == 2


def test_a_stream_that_missed_versions_gets_what_changed_since_the_one_it_has() -> None:
    p = Pair(ENDPOINT_TYPE)
    p.request(subscribe=["a", "b", "c"])
    p.respond(resources(ENDPOINT_TYPE, {"a": "1", "b": "1"}))
    resources(ENDPOINT_TYPE, {"a": "2", "b": "1", "c": "1"})  # a version this stream never looked at
    answer = p.respond(resources(ENDPOINT_TYPE, {"a": "2", "c": "1"}))
    assert shape(answer) == ([("a", "2"), ("c", "1")], ["b"], []) and p.shortcuts == 1


def test_names_subscribed_on_an_open_stream_are_compared_alone() -> None:
    """A service added: Envoy subscribes to its clusters' endpoints. The answer is found from the
    shared changes plus the new names, not by going through every name the stream has."""
    p = Pair(ENDPOINT_TYPE)
    p.request(subscribe=["a", "c"])
    current = resources(ENDPOINT_TYPE, {"a": "1", "b": "1", "c": "1"})
    p.respond(current)
    p.request(subscribe=["b", "nope"], unsubscribe=["a"])
    changed = resources(ENDPOINT_TYPE, {"a": "2", "b": "1", "c": "2"})
    assert shape(p.respond(changed)) == ([("b", "1"), ("c", "2")], [], ["nope"]) and p.shortcuts == 1
    p.request(subscribe=["a"], initial={"a": "2"})  # a version reported after the first request counts for nothing
    assert shape(p.respond(changed)) == ([("a", "2")], [], []) and p.shortcuts == 2
    assert not p.respond(resources(ENDPOINT_TYPE, {"a": "2", "b": "1", "c": "2"})) and p.shortcuts == 3


def test_wildcard_turned_on_or_off_is_answered_by_comparing_every_name() -> None:
    p = Pair(CLUSTER_TYPE)
    p.request(subscribe=["a"])
    current = resources(CLUSTER_TYPE, {"a": "1", "b": "1"})
    p.respond(current)
    p.request(subscribe=["*"])
    assert shape(p.respond(current)) == ([("b", "1")], [], []) and p.shortcuts == 0
    p.request(unsubscribe=["*"])
    assert shape(p.respond(current)) == ([], ["b"], []) and p.shortcuts == 0
    assert not p.respond(resources(CLUSTER_TYPE, {"a": "1"})) and p.shortcuts == 1


@pytest.mark.parametrize("type_url", [ENDPOINT_TYPE, CLUSTER_TYPE])
@pytest.mark.parametrize("seed", range(12))
def test_random_changes_and_subscriptions_give_the_same_answers(type_url: str, seed: int) -> None:
    """(Un)subscriptions, "*", forced names, config changes, versions a stream never looked at,
    a reconnect's initial versions: the fast path answers as the full comparison does, and the
    client holds exactly the wanted resources that exist."""
    rng = random.Random(seed)
    universe = [f"r{i}" for i in range(10)]
    p = Pair(type_url)
    held: dict[str, str] = {}
    initial = {n: rng.choice("12") for n in rng.sample(universe, 3)}
    p.request(subscribe=rng.sample(universe, 4) if type_url == ENDPOINT_TYPE else [], initial=initial)
    held.update(initial)
    current = resources(type_url, {n: "1" for n in rng.sample(universe, 6)})
    for _ in range(60):
        op = rng.choice(["change", "change", "change", "skip", "sub", "unsub", "force", "star"])
        if op in ("change", "skip"):
            versions = {n: r.version for n, r in current.items.items()}
            for n in rng.sample(universe, rng.randint(1, 3)):
                if rng.random() < 0.3:
                    versions.pop(n, None)
                else:
                    versions[n] = rng.choice("123")
            current = resources(type_url, versions)
            if op == "skip":
                continue  # this version is never looked at: the stream was busy
        elif op == "sub":
            p.request(subscribe=rng.sample(universe, rng.randint(1, 3)))
        elif op == "unsub":
            gone = rng.sample(universe, rng.randint(1, 3))
            p.request(unsubscribe=gone)
            for n in gone:
                held.pop(n, None)  # a client drops what it unsubscribed from
        elif op == "star":
            p.request(**{rng.choice(["subscribe", "unsubscribe"]): ["*"]})
        else:
            p.force(*rng.sample(universe, 2))
        answer = p.respond(current)
        held.update((r.name, r.version) for r in answer.send)
        for n in answer.removed + answer.missing:
            held.pop(n, None)
        sub = p.fast
        wanted = sub.wanted(current.items)
        assert held == {n: r.version for n, r in current.items.items() if n in wanted}
    assert p.shortcuts > 10

"""The source seam: debounce rule, problem tracking, and a feed turned into a stream of models."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from zpilot.kube.convert import namespace_from, node_from
from zpilot.kube.source import (
    Debouncer,
    FeedSource,
    ModelBuilder,
    ModelEvent,
    ObjectSink,
    OriginContent,
    ProblemTracker,
    SourceError,
    first_model,
)
from zpilot.model.problems import Problem, Severity


def test_debounce_waits_for_quiet():
    d = Debouncer(quiet=0.1, max_delay=10.0)
    assert d.due(0.0) is None and d.deadline() is None
    d.changed(1.0)
    assert d.due(1.05) is None
    d.changed(1.08)
    assert d.deadline() == pytest.approx(1.18)
    assert d.due(1.15) is None
    assert d.due(1.19) == 1.0  # reports when the burst began
    assert d.due(5.0) is None  # and resets


def test_debounce_fires_at_max_delay_under_constant_change():
    d = Debouncer(quiet=0.1, max_delay=10.0)
    t = 0.0
    fired = None
    while fired is None:
        d.changed(t)
        t += 0.05
        fired = d.due(t)
    assert fired == 0.0 and 10.0 <= t < 10.1


def test_debounce_waits_for_what_is_still_being_written_up_to_max_delay():
    d = Debouncer(quiet=0.1, max_delay=10.0)
    d.changed(0.0)
    assert d.due(1.0, settling=True) is None
    assert d.deadline(settling=True) == 10.0
    assert d.due(10.0, settling=True) == 0.0


def problem(subject: str, reason: str, where: str = "", severity: Severity = Severity.ERROR) -> Problem:
    return Problem(severity, subject, reason, where)


def test_problems_are_reported_once_and_resolved_when_gone(caplog):
    tracker = ProblemTracker(logging.getLogger("test.problems"))
    bad_pod = problem("Pod default/x", "spec.containers is missing or empty: skipped", "a.yaml doc 1")
    no_ip = problem("Pod default/y", "running pod has no IP: skipped", severity=Severity.WARNING)
    with caplog.at_level(logging.INFO, logger="test.problems"):
        assert tracker.report([bad_pod, no_ip]) == ([bad_pod, no_ip], [])
        # the same problems again, one of them now read from another document: nothing new
        moved = problem("Pod default/x", "spec.containers is missing or empty: skipped", "a.yaml doc 4")
        assert tracker.report([moved, no_ip]) == ([], [])
        new, resolved = tracker.report([no_ip])
        assert new == [] and [p.subject for p in resolved] == ["Pod default/x"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "error: a.yaml doc 1 (Pod default/x): spec.containers is missing or empty: skipped",
        "warning: Pod default/y: running pod has no IP: skipped",
        "resolved: Pod default/x: spec.containers is missing or empty: skipped",
    ]
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING, logging.INFO]


def node(name: str):
    return node_from({"kind": "Node", "metadata": {"name": name}})


def namespace(name: str):
    return namespace_from({"kind": "Namespace", "metadata": {"name": name}})


class ScriptedFeed:
    """A feed whose steps the test runs: a stand-in for a watch, where objects arrive as events."""

    def __init__(self) -> None:
        self.sink: ObjectSink | None = None
        self.ready = asyncio.Event()
        self.finish = asyncio.Event()

    async def run(self, sink: ObjectSink) -> None:
        self.sink = sink
        sink.set("Node/a", OriginContent((("Node a", node("a")),)))
        sink.synced()
        self.ready.set()
        await self.finish.wait()


async def next_event(events, timeout: float = 5.0) -> ModelEvent:
    return await asyncio.wait_for(anext(events), timeout)


async def test_a_feed_becomes_debounced_whole_models():
    feed = ScriptedFeed()
    source = FeedSource(lambda: feed, name="scripted", quiet=0.05, max_delay=5.0)
    events = source.events()
    try:
        first = await next_event(events)
        assert first.initial and [n.name for n in first.index.cluster.nodes] == ["a"]
        sink = feed.sink
        assert sink is not None
        # a burst of three changes: one model with all of them
        sink.set("Node/b", OriginContent((("Node b", node("b")),)))
        sink.set("Namespace/mesh", OriginContent((("Namespace mesh", namespace("mesh")),)))
        sink.remove("Node/a")
        second = await next_event(events)
        assert not second.initial
        assert [n.name for n in second.index.cluster.nodes] == ["b"]
        assert [n.name for n in second.index.cluster.namespaces] == ["mesh"]
        assert second.changed_at >= first.changed_at
        # an origin that cannot be read keeps its objects, and says so
        sink.keep("Node/b", problem("Node b", "cannot decode"))
        third = await next_event(events)
        assert [n.name for n in third.index.cluster.nodes] == ["b"]
        assert [str(p) for p in third.index.problems if p.subject == "Node b"] == [
            "error: Node b: cannot decode; keeping the 1 object of its last good read until it reads again"]
        # the same object from two origins: the first (in origin order) wins, the other is named
        sink.set("Node/b-again", OriginContent((("elsewhere", node("b")),)))
        fourth = await next_event(events)
        assert [n.name for n in fourth.index.cluster.nodes] == ["b"]
        assert any(str(p) == "error: elsewhere (Node b): duplicate of Node b: skipped" for p in fourth.index.problems)
    finally:
        await events.aclose()


async def test_a_change_waits_for_an_origin_still_being_written():
    feed = ScriptedFeed()
    source = FeedSource(lambda: feed, name="scripted", quiet=0.01, max_delay=30.0)
    events = source.events()
    try:
        await next_event(events)
        sink = feed.sink
        assert sink is not None
        sink.changing("Node/c")
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)  # twenty quiet windows: still nothing, the origin is not readable yet
        assert not pending.done()
        sink.set("Node/c", OriginContent((("Node c", node("c")),)))
        event = await asyncio.wait_for(pending, 5)
        assert sorted(n.name for n in event.index.cluster.nodes) == ["a", "c"]
    finally:
        await events.aclose()


async def test_nothing_new_is_no_event_and_a_finite_feed_ends_the_stream():
    class Finite:
        async def run(self, sink: ObjectSink) -> None:
            sink.set("Node/a", OriginContent((("Node a", node("a")),)))
            sink.synced()
            sink.set("Node/a", OriginContent((("Node a", node("a")),)))  # the same again: no event

    events = [e async for e in FeedSource(Finite, name="finite", quiet=0.01).events()]
    assert [e.initial for e in events] == [True]


async def test_a_feed_that_cannot_start_is_an_error_of_the_stream():
    class Broken:
        async def run(self, sink: ObjectSink) -> None:
            raise SourceError("no such directory")

    with pytest.raises(SourceError, match="no such directory"):
        await first_model(FeedSource(Broken, name="broken"))


async def test_no_garbage_collection_from_a_models_build_until_its_consumer_has_taken_it(monkeypatch):
    """The build runs with the collector paused, and the pause lasts until the consumer asks for the
    next model (by then the producer's own pause holds it off until the change is sent)."""
    during: list[bool] = []
    real = ModelBuilder.build

    def build(self, contents, *rest):
        during.append(gc.isenabled())
        return real(self, contents, *rest)

    monkeypatch.setattr(ModelBuilder, "build", build)
    assert gc.isenabled()
    feed = ScriptedFeed()
    events = FeedSource(lambda: feed, name="scripted", quiet=0.01, max_delay=5.0).events()
    try:
        await next_event(events)
        assert during == [False] and not gc.isenabled()  # the consumer holds the model
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.05)  # the consumer asked for the next one: nothing is due yet
        assert not pending.done() and gc.isenabled()
        assert feed.sink is not None
        feed.sink.set("Node/b", OriginContent((("Node b", node("b")),)))
        await asyncio.wait_for(pending, 5)
        assert during == [False, False] and not gc.isenabled()
    finally:
        await events.aclose()
    assert gc.isenabled()  # a stream closed while its consumer held a model ends the pause too

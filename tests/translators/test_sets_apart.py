"""A node translated with its shared sets apart (``NodeView.sets_apart``: the producer's
``translate_parts``) holds what a node translated with the sets copied in holds, and is refused where
that one is: a set's member replaced by the layout, or a name in two sets with two messages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests
from zpilot.model.index import MeshIndex
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.translators.context import NodeView
from zpilot.translators.fragments import Fragments
from zpilot.translators.node import _check_sets, translate_view
from zpilot.translators.resources import CLUSTER_TYPE, ENDPOINT_TYPE, NodeResources

MESSAGES = {"M1": Cluster(name="one"), "M2": Cluster(name="two"), "M3": Cluster(name="three")}
M1, M2, M3 = MESSAGES


def _set(members: tuple[tuple[str, str], ...], _step: int) -> dict[str, Cluster]:
    """A shared set: each name's message, the very object (by its label: what the memo keys it by)."""
    return {name: MESSAGES[label] for name, label in members}


#: Steps: ("set", members) adds a shared set, ("own", name, message) writes a cluster of the node's own.
CASES = {
    "own replaces a member after": [("set", (("a", M1), ("b", M2))), ("own", "a", M3)],
    "own written before, the set's after": [("own", "a", M3), ("set", (("a", M1),))],
    "two sets, two messages": [("set", (("a", M1),)), ("set", (("a", M2), ("c", M3)))],
    "two sets, one message": [("set", (("a", M1),)), ("set", (("a", M1), ("c", M3)))],
    "own is the member itself": [("set", (("a", M1),)), ("own", "a", M1)],
    "own between two sets": [("set", (("a", M1),)), ("own", "a", M3), ("set", (("a", M1),))],
    "own between, then replaced": [("set", (("a", M1),)), ("own", "a", M3), ("set", (("a", M1),)), ("own", "a", M2)],
    "apart": [("set", (("a", M1),)), ("set", (("b", M2),)), ("own", "c", M3)],
}


def _run(steps, sets_apart: bool):
    """The node's clusters as served (its own, then each set's: a later one's name is its), or the refusal."""
    view = NodeView(SimpleNamespace(node="n"), (), Fragments(), sets_apart=sets_apart)  # type: ignore[arg-type]
    out = NodeResources(node="n")
    for i, step in enumerate(steps):
        if step[0] == "set":
            view.add_resources(out, CLUSTER_TYPE, _set, step[1], i)  # (i: a set of its own in the memo)
        else:
            out.clusters[step[1]] = MESSAGES[step[2]]
    try:
        _check_sets(view, out)
    except ValueError as exc:
        return "refused" if "replaced by the layout" in str(exc) else exc
    served = dict(out.clusters)
    for resource_set in view.resource_sets:
        served.update(resource_set.resources)
    return {name: id(message) for name, message in sorted(served.items())}, sets_apart and sorted(out.clusters)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sets_apart_are_checked_as_copied(case: str) -> None:
    copied, apart = _run(CASES[case], False), _run(CASES[case], True)
    if copied == "refused":
        assert apart == "refused"
        return
    assert apart != "refused" and apart[0] == copied[0]
    members = {name for step in CASES[case] if step[0] == "set" for name, _ in step[1]}
    assert not set(apart[1]) & members  # the node's own holds no set's member


def test_translated_apart_is_translated_copied() -> None:
    """At a small scale, every node: the resources of a translation with its sets copied in are its
    own and its sets' members (the very messages) of the one with them apart."""
    index = MeshIndex.build(synthetic_cluster(synthetic_manifests(Shape())))
    translator = IncrementalTranslator(TranslateOptions(layout="linear"))
    inputs = translator.inputs(index)
    for node, node_input in inputs.items():
        apart = translator.translate_parts(node_input)
        whole = translate_view(NodeView.for_input(node_input, translator.fragments, whole_listeners=False))
        assert apart.sets_apart and not whole.sets_apart
        for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE):
            own = apart.resources.by_type()[type_url]
            served = dict(own)
            for resource_set in apart.resource_sets:
                if resource_set.type_url == type_url:
                    assert not own.keys() & resource_set.resources.keys()
                    served.update(resource_set.resources)
            held = whole.resources.by_type()[type_url]
            assert served.keys() == held.keys(), node
            assert all(served[name] is held[name] for name in held), node
        assert apart.resource_sets, node

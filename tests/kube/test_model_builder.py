"""The source's models, each built from the last (``ModelBuilder``): the changed origins' objects
patched into the last cluster when nothing else can change, merged over again otherwise, and
always the model ``build_model`` makes from nothing (tests/properties/test_incremental_model.py
draws random cases)."""

from __future__ import annotations

from zpilot.kube.source import ModelBuilder, OriginContent, build_model
from zpilot.model import MeshIndex, Namespace, Node, Workload
from zpilot.model.objects import frozen_labels
from zpilot.model.problems import Problem, Severity

AMBIENT = frozen_labels({"istio.io/dataplane-mode": "ambient"})


def pod(name: str, ip: str) -> Workload:
    return Workload(name, "shop", f"uid-{name}", (ip,), "n1", "sa", frozen_labels({"app": "web"}))


def origin(name: str, *objects, problems: tuple[Problem, ...] = ()) -> tuple[str, OriginContent, None]:
    return name, OriginContent(tuple((name, obj) for obj in objects), problems), None


BASE = [origin("n1", Node("n1", ("172.18.0.2",))), origin("shop", Namespace("shop", AMBIENT)),
        origin("pod-b", pod("b", "10.0.0.2")), origin("pod-d", pod("d", "10.0.0.4"))]


def both(builder: ModelBuilder, contents: list) -> MeshIndex:
    built = builder.build(sorted(contents, key=lambda c: c[0]))
    fresh = build_model(sorted(contents, key=lambda c: c[0]))
    assert built.cluster == fresh.cluster
    assert list(built.problems) == list(fresh.problems)
    assert built.meshed_workloads() == fresh.meshed_workloads()
    return built


def test_a_changed_origin_is_patched_into_the_last_cluster() -> None:
    builder = ModelBuilder()
    before = both(builder, BASE)
    after = both(builder, BASE + [origin("pod-c", pod("c", "10.0.0.3"))])
    assert [w.name for w in after.cluster.workloads] == ["b", "c", "d"]
    assert after.cluster.nodes is before.cluster.nodes  # not merged again: the same tuple
    again = both(builder, BASE)
    assert [w.name for w in again.cluster.workloads] == ["b", "d"]


def test_duplicates_and_problems_are_merged_again_and_reported() -> None:
    builder = ModelBuilder()
    both(builder, BASE)
    twice = both(builder, BASE + [origin("pod-b-again", pod("b", "10.0.0.9"))])
    assert any("duplicate of" in p.reason for p in twice.problems)
    both(builder, BASE)
    warned = Problem(Severity.WARNING, "Pod shop/x", "something about x")
    with_problem = both(builder, BASE + [origin("pod-x", pod("x", "10.0.0.5"), problems=(warned,))])
    assert warned in list(with_problem.problems)
    assert warned not in list(both(builder, BASE).problems)
    failed = Problem(Severity.ERROR, "pod-d", "cannot be read")
    kept = both(builder, BASE[:-1] + [(BASE[-1][0], BASE[-1][1], failed)])
    assert any("keeping the 1 object" in p.reason for p in kept.problems)
    both(builder, BASE)


def test_the_same_list_changed_in_place_is_merged_again() -> None:
    """``ModelBuilder.build`` keeps the list it is given (not copied): one given again after being
    changed in place must not be taken for the unchanged contents (its common ends with itself)."""
    builder = ModelBuilder()
    contents = sorted(BASE, key=lambda c: c[0])
    before = builder.build(contents)
    assert [w.name for w in before.cluster.workloads] == ["b", "d"]
    contents.append(origin("pod-x", pod("x", "10.0.0.5")))
    contents.sort(key=lambda c: c[0])
    after = builder.build(contents)
    assert [w.name for w in after.cluster.workloads] == ["b", "d", "x"]
    assert after.cluster == build_model(contents).cluster

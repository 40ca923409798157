#!/usr/bin/env python3
"""What one pod change costs before anything is translated, step by step, at issue 13's R.

    python3 bench/model_churn.py              # R: 100 nodes, 10,000 pods, 1,000 services x 2 ports
    python3 bench/model_churn.py --nodes 10   # R scaled to 10 nodes (100 pods, 10 services per node)

Run by hand; it prints milliseconds per change (median and worst of ``--rounds``) and asserts
nothing. A pod added behind an existing service (``zpilot.synthetic.extra_pod``), then deleted (and,
for comparison, a service added and a DENY policy added, each kept):

- ``index``: ``MeshIndex.build(cluster, previous=last)``, as ``bench/scale.py``'s churn builds it;
- ``config nodes``, ``mesh input``, ``node inputs``: the producer's planning
  (``IncrementalTranslator.inputs``: which nodes get config, ``MeshInput.of``, ``node_inputs``);
- ``source``: a burst through the kube source as ``zpilot serve`` runs it (``ObjectSink.contents``
  with one origin per object, as the API watch reads them, and the origins it says were touched,
  then ``ModelBuilder.build``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zpilot.kube.convert_policy import KIND_CONVERTERS  # noqa: E402
from zpilot.kube.source import ModelBuilder, ObjectSink, OriginContent  # noqa: E402
from zpilot.kube.store import key_of  # noqa: E402
from zpilot.model.index import MeshIndex  # noqa: E402
from zpilot.synthetic import (  # noqa: E402
    Shape,
    extra_pod,
    extra_policy,
    extra_service,
    synthetic_cluster,
    synthetic_manifests,
)
from zpilot.translators import TranslateOptions  # noqa: E402
from zpilot.translators.inputs import MeshInput, config_nodes, node_inputs  # noqa: E402


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class Steps:
    """Milliseconds per step, per kind of change."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], list[float]] = {}

    def timed(self, kind: str, step: str, call):
        started = time.perf_counter()
        result = call()
        self.times.setdefault((kind, step), []).append(time.perf_counter() - started)
        return result

    def table(self) -> str:
        lines = [f"{'change':<12} {'step':<14} {'median ms':>10} {'max ms':>8}"]
        for (kind, step), values in self.times.items():
            lines.append(f"{kind:<12} {step:<14} {_ms(statistics.median(values)):>10} {_ms(max(values)):>8}")
        return "\n".join(lines)


def planning(steps: Steps, kind: str, index: MeshIndex, state: dict) -> None:
    """The producer's planning, as ``IncrementalTranslator.inputs`` does it, step by step."""
    nodes = steps.timed(kind, "config nodes", lambda: sorted(config_nodes(index)))
    mesh = steps.timed(kind, "mesh input", lambda: MeshInput.of(index, state.get("mesh")))
    if mesh == state.get("mesh"):
        mesh = state["mesh"]
    state["mesh"] = mesh
    state["inputs"] = steps.timed(
        kind, "node inputs", lambda: node_inputs(index, nodes, state["options"], mesh, state.get("inputs"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100, help="R scaled to this many nodes (100: R itself)")
    parser.add_argument("--rounds", type=int, default=20, help="pod adds and deletes each (20)")
    args = parser.parse_args()
    shape = Shape.reference().scaled(args.nodes)
    print(f"cluster: {shape.describe()}", flush=True)
    cluster = synthetic_cluster(synthetic_manifests(shape))
    started = time.perf_counter()
    index = MeshIndex.build(cluster)
    print(f"cold index: {_ms(time.perf_counter() - started)} ms", flush=True)

    steps = Steps()
    state: dict = {"options": TranslateOptions()}
    planning(steps, "cold", index, state)
    sink = ObjectSink(quiet=0.1, max_delay=10.0)
    for obj in (o for name in ("nodes", "namespaces", "service_accounts", "workloads", "services")
                for o in getattr(cluster, name)):
        sink.set("/".join(key_of(obj)), OriginContent((("api", obj),)))
    builder = ModelBuilder()
    builder.build(sink.contents(), sink.take_touched())

    for r in range(args.rounds):
        pod = KIND_CONVERTERS["Pod"](extra_pod(shape, r, (r * 7 + 3) % shape.nodes))
        origin = "/".join(key_of(pod))
        for kind, model in (("pod add", dataclasses.replace(cluster, workloads=cluster.workloads + (pod,))),
                            ("pod delete", cluster)):
            index = steps.timed(kind, "index", lambda: MeshIndex.build(model, previous=index))
            planning(steps, kind, index, state)
            if kind == "pod add":
                sink.set(origin, OriginContent((("api", pod),)))
            else:
                sink.remove(origin)
            contents, touched = steps.timed(kind, "source:sink", lambda: (sink.contents(), sink.take_touched()))
            steps.timed(kind, "source:build", lambda: builder.build(contents, touched))
    for r in range(max(args.rounds // 4, 1)):
        service = KIND_CONVERTERS["Service"](extra_service(shape, r))
        policy = KIND_CONVERTERS["AuthorizationPolicy"](extra_policy(shape, r * 13 + 5))
        cluster = dataclasses.replace(cluster, services=cluster.services + (service,))
        with_policy = dataclasses.replace(cluster, authorization_policies=cluster.authorization_policies + (policy,))
        for kind, model in (("service add", cluster), ("policy add", with_policy)):
            index = steps.timed(kind, "index", lambda: MeshIndex.build(model, previous=index))
            planning(steps, kind, index, state)
        cluster = with_policy
    print(steps.table())


if __name__ == "__main__":
    main()

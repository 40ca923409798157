"""A node whose input changed in its endpoints alone (``IncrementalTranslator.endpoints_only``) gets
the very listeners and clusters it had: the producer then makes its endpoints and nothing else
(``Producer.with_new_endpoints``), so the layout's shape must name everything else it reads.

Random hostile clusters and random changes, as test_incremental_model.py draws them, plus pods
coming, going and turning unready or terminating behind a service inside their nodes' pod CIDRs (the churn that
changes other nodes' endpoints alone, about one such node in each example's steps): at each step,
every node said to change in its endpoints alone is translated from its old and its new input,
and all but the endpoints must be byte for byte the same (and the endpoints' names too: the
clusters that want them did not change).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from zpilot.kube.source import ModelBuilder, OriginContent
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.translators.resources import ENDPOINT_TYPE

from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.model.objects import Workload, frozen_labels

from .test_incremental_model import EXPLORE, _variant, histories

#: Nodes with pod CIDRs of their own, an enrolled namespace and a service: the pods that come and
#: go inside them are what most churn is, and only endpoints change for the other nodes.
CIDR_NODES = ("churn-a", "churn-b")
CHURN_DOCS = [
    *({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
       "spec": {"podCIDRs": [f"10.{200 + i}.0.0/16"]},
       "status": {"addresses": [{"type": "InternalIP", "address": f"172.19.0.{i + 1}"}]}}
      for i, name in enumerate(CIDR_NODES)),
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "churn", "labels": {"istio.io/dataplane-mode": "ambient"}}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "churn"},
     "spec": {"clusterIP": "10.96.9.9", "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
]


def _churn_pod(i: int, node: int, account: str) -> Workload:
    """A ready pod behind the service, inside its node's pod CIDR."""
    return Workload(f"web-{i}", "churn", f"uid-web-{i}", (f"10.{200 + node}.0.{i + 1}",), CIDR_NODES[node], account,
                    frozen_labels({"app": "web"}))


@st.composite
def churning(draw: st.DrawFn) -> tuple[list[tuple[str, Any]], list[list[int]]]:
    """:func:`histories`, with pods coming, going, turning unready inside their nodes' pod CIDRs."""
    pool, steps, _seen = draw(histories())
    first = len(pool)
    pool = pool + [(f"churn-{i}", KIND_CONVERTERS[d["kind"]](d)) for i, d in enumerate(CHURN_DOCS)]
    for i in range(draw(st.integers(2, 6))):
        node, account = draw(st.integers(0, 1)), draw(st.sampled_from(["web", "web", "other"]))
        pool.append((f"churn-pod-{i}", _churn_pod(i, node, account)))
    extra = len(pool) - first
    out = [steps[0] + [1] * extra]
    for step in steps[1:]:
        churn = list(out[-1][len(step):])
        for _ in range(draw(st.integers(0, 2))):
            at = draw(st.integers(len(CHURN_DOCS), extra - 1))
            # gone, there, an equal copy, unready (_variant), terminating (_terminating)
            churn[at] = draw(st.sampled_from([0, 1, 2, 3, 4]))
        out.append(step + churn)
    return pool, out


def _terminating(obj: Any) -> Any:
    """A pod turned terminating (its readiness as it was): another object unchanged."""
    return replace(obj, terminating=not obj.terminating) if isinstance(obj, Workload) else obj


def _serialized(translated) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {name: m.SerializeToString(deterministic=True) for name, m in messages.items()}
        for type_url, messages in translated.resources.by_type().items()
    }


@settings(max_examples=200 if EXPLORE else 40, deadline=None, derandomize=not EXPLORE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(churning())
def test_a_change_in_endpoints_alone_leaves_every_other_resource_as_it_was(
    history: tuple[list[tuple[str, Any]], list[list[int]]],
) -> None:
    pool, steps = history
    variants = {(i, n): _variant(obj, n) for i, (_origin, obj) in enumerate(pool) for n in (0, 1)}
    variants.update({(i, 2): _terminating(obj) for i, (_origin, obj) in enumerate(pool)})
    builder = ModelBuilder()
    translator = IncrementalTranslator(TranslateOptions())
    before: dict = {}
    for step in steps:
        contents = []
        for i, ((origin, obj), choice) in enumerate(zip(pool, step)):
            if choice == 0:
                continue
            chosen = obj if choice == 1 else variants[(i, choice - 2)]
            contents.append((origin, OriginContent(((origin, chosen),)), None))
        inputs = translator.inputs(builder.build(contents))
        for node, new in inputs.items():
            old = before.get(node)
            if old is None or old == new or not translator.endpoints_only(old, new):
                continue
            event("endpoints alone changed")
            then, now = _serialized(translator.translate(old)), _serialized(translator.translate(new))
            then_endpoints, now_endpoints = then.pop(ENDPOINT_TYPE), now.pop(ENDPOINT_TYPE)
            assert now == then, f"node {node}: endpoints alone changed, yet other resources differ"
            assert now_endpoints.keys() == then_endpoints.keys()
            made = translator.endpoints(new)
            assert {n: m.SerializeToString(deterministic=True) for s in made.sets for n, m in s.resources.items()} == (
                now_endpoints
            ), f"node {node}: its endpoints made alone differ from its translation's"
        before = inputs

"""A node whose input changed in its endpoints alone (``IncrementalTranslator.endpoints_only``) gets
the very listeners and clusters it had: the producer then makes its endpoints and nothing else
(``Producer.with_new_endpoints``), so the layout's shape must name everything else it reads.

Random hostile clusters and random changes, as test_incremental_model.py draws them: at each step,
every node said to change in its endpoints alone is translated from its old and its new input,
and all but the endpoints must be byte for byte the same (and the endpoints' names too: the
clusters that want them did not change).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings

from zpilot.kube.source import ModelBuilder, OriginContent
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.translators.resources import ENDPOINT_TYPE

from .test_incremental_model import EXPLORE, _variant, histories


def _serialized(translated) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {name: m.SerializeToString(deterministic=True) for name, m in messages.items()}
        for type_url, messages in translated.resources.by_type().items()
    }


@settings(max_examples=200 if EXPLORE else 40, deadline=None, derandomize=not EXPLORE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(histories())
def test_a_change_in_endpoints_alone_leaves_every_other_resource_as_it_was(
    history: tuple[list[tuple[str, Any]], list[list[int]]],
) -> None:
    pool, steps = history
    variants = {(i, n): _variant(obj, n) for i, (_origin, obj) in enumerate(pool) for n in (0, 1)}
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

"""A node's inbound listeners, served from their pieces across changes, are byte for byte what
translating the node whole gives, with the same versions.

A cold generation builds each node's inbound listeners whole; from a node's first change on,
the producer keeps its pods' chains serialized (``SerializedChains``), each with its
consistency facts, derived from the node's previous ones: the chains of the pods that changed
are made, the others' bytes and facts kept as they are; a listener's bytes are its own part's
joined with its pods' chains', its facts its own part's joined with each chain's
(translators/inbound.py, xds/resource_store.py). A long-lived producer is fed random histories
(test_incremental_producer.py's: hostile clusters, pods coming, going, turning unready, moving
to another node, changing identity) with policies over the churning pods coming and going too;
at every step each node's served listeners must be the deterministic serialization of the
node translated alone, whole, versioned by its content (``snapshot.records_version`` for the
inbound listeners: the same however they were made), whether what the next change would
pay once was paid ahead in idle time (``Producer.prepare_pending``, every other step) or not.
"""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf import any_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zpilot import contract
from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.kube.source import ModelBuilder
from zpilot.translators import IncrementalTranslator, TranslateOptions, translate_node
from zpilot.xds.order import LISTENER_TYPE
from zpilot.xds.push import Producer
from zpilot.xds.resource_store import BY_CHAINS
from zpilot.xds.snapshot import content_version, records_version
from zpilot.xds.snapshot_cache import SnapshotCache

from .test_incremental_model import EXPLORE
from .test_incremental_producer import changing, model_at

OPTIONS = TranslateOptions()

#: Policies over the churning pods (app=web in namespace churn): each changes their chains alone.
POLICIES = [
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "web-deny", "namespace": "churn"},
     "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "web"}},
              "rules": [{"from": [{"source": {"namespaces": ["elsewhere"]}}]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
     "metadata": {"name": "web-strict", "namespace": "churn"},
     "spec": {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}},
]


@st.composite
def with_policies(draw: st.DrawFn) -> tuple[list[tuple[str, list[Any]]], list[list[int]]]:
    """:func:`changing`'s histories, each step with or without each of :data:`POLICIES`."""
    slots, steps = draw(changing())
    slots = slots + [(f"policy-{i}", [KIND_CONVERTERS[doc["kind"]](doc)]) for i, doc in enumerate(POLICIES)]
    return slots, [step + [draw(st.integers(0, 1)) for _ in POLICIES] for step in steps]


def _served_listeners(producer: Producer, node: str) -> dict[str, tuple[bytes, str]]:
    items = producer.cache.get_snapshot(node).resources(LISTENER_TYPE).items
    return {name: (any_pb2.Any.FromString(resource.any).value, resource.version) for name, resource in items.items()}



@settings(max_examples=200 if EXPLORE else 25, deadline=None, derandomize=not EXPLORE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(with_policies())
def test_inbound_listeners_joined_from_their_pods_chains_are_the_whole_translation(
    history: tuple[list[tuple[str, list[Any]]], list[list[int]]],
) -> None:
    slots, steps = history
    builder = ModelBuilder()
    producer = Producer(SnapshotCache(), translate=IncrementalTranslator(OPTIONS))

    async def run() -> None:
        for i, step in enumerate(steps):
            index = model_at(builder, slots, step)
            await producer.update(index)
            assert not producer.failures
            if i % 2:  # every other step, what idle time pays ahead for the next is paid (Producer._prepare_ahead)
                await producer.prepare_pending()
            for node in producer.cache.nodes():
                whole = translate_node(index, node, OPTIONS).listeners
                served = _served_listeners(producer, node)
                assert served.keys() == whole.keys(), node
                for name, listener in whole.items():
                    data = listener.SerializeToString(deterministic=True)
                    # versioned by its content: the inbound listeners by their chains' hashes (made
                    # once per chain), alike whether served whole or joined from chains kept serialized
                    version = records_version(data, 3) if name in BY_CHAINS else content_version(data)
                    assert served[name] == (data, version), (node, name)
                assert {contract.INBOUND_LISTENER, contract.INBOUND_PLAINTEXT_LISTENER} <= served.keys()

    asyncio.run(run())

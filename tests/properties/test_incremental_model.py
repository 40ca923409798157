"""An index built from the previous one (and node inputs made from the previous ones) is exactly
what building from nothing gives, for random hostile clusters and random changes.

Each example draws two clusters (``clusters.py``) whose objects form a pool, plus a variant of some
objects (a pod relabelled, made unready, moved or given another address; a service or a policy
with another selector; a namespace enrolled or not; a node in another zone; an equal copy that is
another instance). A sequence of steps then picks, per object, absent / itself / its variant, and each
step's model is built twice from the origins' contents (one origin per object, as the API watch
reads them): from nothing (``build_model``), and from the previous step's (``ModelBuilder``, as
the source builds them: from contents made afresh, and from an ``ObjectSink``'s, whose unchanged
origins keep their entries, as the API watch leaves them, with the origins it says were touched). Everything the
index answers, its problems in their order, and every node's input must be equal (what it can
reach, as ``MeshInput`` compares: by what config reads of it). What an index says changed since
an earlier one of its lineage (``MeshIndex.changes_since``) must hold every difference; node inputs
made from older ones (a consumer that skipped some models) must equal those made from nothing too.
A second test churns plain pods alone, what the index and the node inputs patch in place.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.kube.source import ModelBuilder, ObjectSink, OriginContent, build_model
from zpilot.model.index import MeshIndex
from zpilot.model.objects import ContainerPort, Locality, Namespace, Node, Service, Workload, frozen_labels
from zpilot.model.policy import AuthorizationPolicy, PeerAuthentication
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.translators.inputs import MeshInput, NodeInput

from .clusters import GeneratedCluster, clusters

EXPLORE = os.environ.get("ZPILOT_HYPOTHESIS_EXPLORE") == "1"

#: Policies in the pool, so that policy answers (and competing PeerAuthentications) change too.
POLICY_DOCS: list[dict[str, Any]] = [
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "deny-a", "namespace": "istio-system"},
     "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "a"}},
              "rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
     "metadata": {"name": "strict", "namespace": "istio-system", "creationTimestamp": "2022-01-01T00:00:00Z"},
     "spec": {"mtls": {"mode": "STRICT"}}},
]


def _variant(obj: Any, n: int) -> Any:
    """Another version of ``obj`` (what an update of the same API object would bring)."""
    if n == 0:
        return copy.copy(obj)  # equal, another instance
    if isinstance(obj, Workload):
        return [
            replace(obj, labels=frozen_labels({**obj.labels, "app": "b" if obj.labels.get("app") == "a" else "a"})),
            replace(obj, ready=not obj.ready),
            replace(obj, ips=("10.0.0.1",) if obj.ips != ("10.0.0.1",) else ("10.0.0.2",)),
            replace(obj, node_name=None if obj.node_name else "ghost-node", terminating=not obj.terminating),
        ][n % 4]
    if isinstance(obj, Service):
        return replace(obj, selector=None if obj.selector else {"app": "b"}, node_local=not obj.node_local)
    if isinstance(obj, Namespace):
        enrolled = {"istio.io/dataplane-mode": "ambient"}
        return replace(obj, labels=frozen_labels({} if obj.enrolled else enrolled))
    if isinstance(obj, Node):
        return replace(obj, locality=Locality("r9", f"r9-{n}"))
    if isinstance(obj, (AuthorizationPolicy, PeerAuthentication)):
        if n == 0:
            return replace(obj, name=obj.name)  # another instance
        # another selector (a policy without one gets one): the workloads it decides for change
        return replace(obj, selector=frozen_labels({"app": "a" if (obj.selector or {}).get("app") == "b" else "b"}))
    return copy.copy(obj)


def _index_state(index: MeshIndex) -> dict[str, Any]:
    """Everything an index answers, as plain values."""
    return {
        "nodes": index.nodes,
        "namespaces": index.namespaces,
        "claims": index._other_claims,  # what a patch of this index reads: the counts kept apart
        "names": index._other_names,
        "by_label": {k: list(v) for k, v in index._by_label.items()},
        "meshed": index._meshed,
        "meshed_workloads": index.meshed_workloads(),
        "by_ip": index._by_ip,
        "by_node": dict(index._by_node),
        "scheduled_nodes": index.scheduled_nodes(),
        "endpoints": index._endpoints,
        "vips": index._vips,
        "services": index.services,
        "policies": (index.policies.authorization, index.policies.peer_authentication, index.policies._by_workload),
        "problems": list(index.problems),
    }


def _input_state(node_input: NodeInput) -> tuple:
    """A node's input: its own part by value; what it can reach as ``MeshInput`` compares it, by
    what config reads of it (the translator keeps the previous one when that is equal, by design)."""
    mesh = node_input.mesh
    ports = tuple(p._facts for p in mesh.service_ports)
    return (node_input.node, node_input.options, node_input.local_pods, node_input.policies,
            (mesh.cluster_domain, ports, mesh.vip_order, mesh.meshed_facts))


def _derived(mesh: MeshInput) -> tuple:
    """What a mesh derives of its service ports and a later mesh may carry over (asked for here, so
    that the next one does), each checked against the ports it is derived from."""
    served = mesh.served_ports(None)
    assert mesh.port_shapes == tuple(p.shape for p in mesh.service_ports)
    assert mesh.port_hashes == tuple(hash(p) for p in mesh.service_ports)
    assert served.port_hashes == tuple(hash(p) for p in served.ports)
    assert served._at == {id(p): j for j, p in enumerate(served.ports)}
    assert served.shape._shapes == tuple(p.shape for p in served.ports) and hash(served.shape) == hash(served.shape._shapes)
    return mesh.port_shapes, served.ports, served.shape._shapes


def _plain_pod(i: int, namespace: str, node: str, app: str, address: str | None = None,
               ports: tuple[ContainerPort, ...] = ()) -> Workload:
    """A running, ready pod with an address of its own: what most pod churn is."""
    return Workload(f"plain-{i}", namespace, f"uid-{i}", (address or f"10.2.0.{i + 1}",), node, "sa",
                    frozen_labels({"app": app}), ports)


#: What a plain pod's address may be besides its own: one an EndpointSlice may list (clusters.EXTERNAL_V4).
SLICE_ADDRESSES = ("192.168.9.1", "192.168.9.2")
#: A plain pod's container ports: none, or one a service's named targetPort may name (clusters.PORT_NAMES).
PLAIN_PORTS = ((), (ContainerPort(8080, "http"),), (ContainerPort(9090, "a"),))


History = tuple[list[tuple[str, Any]], list[list[int]], list[bool]]


@st.composite
def histories(draw: st.DrawFn, churn: bool = False) -> History:
    """A pool of (origin, object) with their variants, the choice of each object at each step
    (0 absent, 1 itself, 2 and 3 a variant), and which steps a consumer that skips models sees: the
    first step chooses for every object, each next one changes one to three of them (plain pods
    often, as they are what most churn is; ``churn``: plain pods only)."""
    docs = draw(clusters()).docs + draw(clusters()).docs + POLICY_DOCS
    pool: list[tuple[str, Any]] = []
    for i, doc in enumerate(docs):
        obj = KIND_CONVERTERS[doc["kind"]](doc)
        pool.append((f"doc-{i}", obj))
    namespaces = [o.name for _, o in pool if isinstance(o, Namespace)]
    node_names = [o.name for _, o in pool if isinstance(o, Node)] + ["ghost-node"]
    for i, name in enumerate(("older", "newer")):  # two competing for the pods app=a of one namespace
        doc = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": name, "namespace": draw(st.sampled_from(namespaces)),
                            "creationTimestamp": f"2022-01-0{i + 1}T00:00:00Z"},
               "spec": {"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}}}
        pool.append((f"selecting-{name}", KIND_CONVERTERS["PeerAuthentication"](doc)))
    plain = []
    # most often in a namespace with a service selecting pods, so that services change with them
    selecting = [o.namespace for _, o in pool if isinstance(o, Service) and o.selector] or namespaces
    if churn:  # in the mesh (a patch is for meshed pods), as most pods are
        enrolled = [o.name for _, o in pool if isinstance(o, Namespace) and o.enrolled] or namespaces
        selecting = [ns for ns in selecting if ns in enrolled] or enrolled
        namespaces = enrolled
    for i in range(draw(st.integers(1 if churn else 0, 6))):
        namespace = draw(st.sampled_from(selecting if draw(st.booleans()) else namespaces))
        address = draw(st.sampled_from([None, None, None, *SLICE_ADDRESSES]))
        pod = _plain_pod(i, namespace, draw(st.sampled_from(node_names)), draw(st.sampled_from(["a", "b"])),
                         address, draw(st.sampled_from(PLAIN_PORTS)))
        plain.append(len(pool))
        pool.append((f"plain-{i}", pod))
    pods_in = [o.namespace for _, o in pool if isinstance(o, Workload)] or namespaces
    doc = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",  # one namespace's alone
           "metadata": {"name": "allow-y", "namespace": draw(st.sampled_from(pods_in))},
           "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["y"]}}]}]}}
    pool.append(("namespace-policy", KIND_CONVERTERS["AuthorizationPolicy"](doc)))
    doc = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",  # some pods of one namespace
           "metadata": {"name": "deny-b", "namespace": draw(st.sampled_from(pods_in))},
           "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "b"}},
                    "rules": [{"from": [{"source": {"namespaces": ["z"]}}]}]}}
    pool.append(("selecting-policy", KIND_CONVERTERS["AuthorizationPolicy"](doc)))
    if churn and plain:
        targets = st.sampled_from(plain)
    else:  # plain pods and policies often (a policy changed alone is patched too)
        policies = [i for i, (_, obj) in enumerate(pool) if isinstance(obj, (AuthorizationPolicy, PeerAuthentication))]
        targets = st.one_of(st.integers(0, len(pool) - 1), st.sampled_from(policies),
                            *([st.sampled_from(plain)] if plain else []))
    choices = st.sampled_from([0, 1, 1, 1, 2, 3])
    first = draw(st.lists(choices, min_size=len(pool), max_size=len(pool)))
    if churn:  # the namespaces as they are
        first = [1 if isinstance(obj, Namespace) else choice for (_, obj), choice in zip(pool, first)]
    steps = [first]
    for _ in range(draw(st.integers(1, 8 if churn else 5))):
        step = list(steps[-1])
        for _ in range(draw(st.integers(1, 3))):
            step[draw(targets)] = draw(choices)
        steps.append(step)
    seen = [True] + draw(st.lists(st.booleans(), min_size=len(steps) - 1, max_size=len(steps) - 1))
    return pool, steps, seen


def _assert_changes_hold(index: MeshIndex, earlier: MeshIndex) -> None:
    """Whatever differs between ``earlier`` and ``index`` is in what ``index`` says changed since it."""
    changes = index.changes_since(earlier.generation)
    if changes.nodes is not None:
        for node in set(earlier._meshed_by_node) | set(index._meshed_by_node):
            if node in changes.nodes:
                continue
            pods = index.meshed_workloads_on(node)
            assert pods == earlier.meshed_workloads_on(node), node
            assert [index.policies_for(w) for w in pods] == [earlier.policies_for(w) for w in pods], node
    if changes.service_ports is not None:
        for key in earlier._endpoints.keys() | index._endpoints.keys():
            if key not in changes.service_ports:
                assert index._endpoints.get(key) == earlier._endpoints.get(key), key


SETTINGS = settings(max_examples=200 if EXPLORE else 40, deadline=None, derandomize=not EXPLORE,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(histories())
def test_incremental_model_and_inputs_equal_a_full_build(history: History) -> None:
    _check(history)


@SETTINGS
@given(histories(churn=True))
def test_pod_churn_patches_equal_a_full_build(history: History) -> None:
    _check(history)


def _check(history: History) -> None:
    pool, steps, seen = history
    variants = {(i, n): _variant(obj, n) for i, (_origin, obj) in enumerate(pool) for n in (0, 1)}
    builder, sink_builder = ModelBuilder(), ModelBuilder()
    sink = ObjectSink(quiet=0.1, max_delay=10.0)
    translator = IncrementalTranslator(TranslateOptions())
    skipping = IncrementalTranslator(TranslateOptions())  # sees only some models
    built: list[MeshIndex] = []
    last_step = [0] * len(pool)
    for step, sees in zip(steps, seen):
        contents = []
        for i, ((origin, obj), choice) in enumerate(zip(pool, step)):
            if choice == 0:
                if last_step[i] != 0:
                    sink.remove(origin)
                continue
            chosen = obj if choice == 1 else variants[(i, choice - 2)]
            contents.append((origin, OriginContent(((origin, chosen),)), None))
            if choice != last_step[i]:
                sink.set(origin, contents[-1][1])
        last_step = step
        contents.sort(key=lambda entry: entry[0])
        assert sink.contents() == contents
        full = build_model(contents)
        incremental = builder.build(contents)
        assert incremental.cluster == full.cluster
        assert _index_state(incremental) == _index_state(full)
        from_sink = sink_builder.build(sink.contents(), sink.take_touched())  # as FeedSource does
        assert from_sink.cluster == full.cluster
        assert _index_state(from_sink) == _index_state(full)
        for earlier in built:
            _assert_changes_hold(incremental, earlier)
        built.append(incremental)
        fresh = IncrementalTranslator(TranslateOptions()).inputs(full)
        kept = translator.inputs(incremental)
        assert {n: _input_state(i) for n, i in kept.items()} == {n: _input_state(i) for n, i in fresh.items()}
        assert kept == fresh
        if kept:  # what the mesh derives, carried from the last one (MeshInput._carried): as made anew
            mesh, fresh_mesh = next(iter(kept.values())).mesh, next(iter(fresh.values())).mesh
            assert _derived(mesh) == _derived(fresh_mesh)
        if sees:
            assert skipping.inputs(incremental) == fresh

"""Incremental generation: a model change rebuilds only the nodes whose input changed and, within
a node, only the pieces whose own inputs changed; what is shared stays one object.

The translator is instrumented (a memo that records every build, and which node's translation
asked for it), so these tests count what was built; none of them looks at time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.model.index import MeshIndex
from zpilot.model.objects import Cluster
from zpilot.synthetic import Shape, extra_pod, extra_service, node_name, synthetic_cluster, synthetic_manifests
from zpilot.translators import IncrementalTranslator, TranslateOptions, known_layouts, translate_node
from zpilot.translators import clusters as cluster_builders
from zpilot.translators import inbound
from zpilot.translators.fragments import Fragments
from zpilot.translators.inputs import MeshInput
from zpilot.translators.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE

SHAPE = Shape(nodes=3, pods=12, services=4, namespaces=1, ports_per_service=2, service_accounts_per_namespace=2)
LAYOUTS = known_layouts()


class RecordingFragments(Fragments):
    """A memo that records each build with the node whose translation asked for it."""

    def __init__(self) -> None:
        super().__init__()
        self.node = ""
        self.builds: list[tuple[str, str, tuple]] = []  # (node, builder, args)

    def build(self, builder, args, kwargs):
        self.builds.append((self.node, builder.__qualname__, args))
        return super().build(builder, args, kwargs)

    def by_node(self) -> Counter:
        return Counter(node for node, _, _ in self.builds)

    def of(self, node: str) -> list[str]:
        return [builder for n, builder, _ in self.builds if n == node]


class RecordingTranslator(IncrementalTranslator):
    """The translator ``zpilot serve`` uses, counting its calls per node."""

    def __init__(self, layout: str) -> None:
        self.memo = RecordingFragments()
        super().__init__(TranslateOptions(layout=layout), self.memo)
        self.calls: list[str] = []

    def translate(self, node_input):
        self.calls.append(node_input.node)
        self.memo.node = node_input.node
        return super().translate(node_input)

    def reset(self) -> None:
        self.calls.clear()
        self.memo.builds.clear()


def _index(docs) -> MeshIndex:
    return MeshIndex.build(synthetic_cluster(docs))


def _translate_all(translator: IncrementalTranslator, index: MeshIndex):
    return {node: translator.translate(node_input) for node, node_input in translator.inputs(index).items()}


def _serialized(resources) -> dict:
    return {
        (type_url, name): message.SerializeToString(deterministic=True)
        for type_url, messages in resources.by_type().items()
        for name, message in messages.items()
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_pod_added_on_one_node_rebuilds_no_other_nodes_listeners(layout: str) -> None:
    docs = synthetic_manifests(SHAPE)
    translator = RecordingTranslator(layout)
    before = _translate_all(translator, _index(docs))
    translator.reset()

    after = _translate_all(translator, _index(docs + [extra_pod(SHAPE, 0, node=0)]))
    a, others = node_name(0), [node_name(1), node_name(2)]
    # the pod is a destination everywhere, so every node's input changed...
    assert sorted(translator.calls) == sorted([a, *others])
    # ...but on the other nodes no inbound listener, no chain of theirs, no cluster is built again
    for node in others:
        built = translator.memo.of(node)
        assert not {"_hbone_listener", "_plaintext_listener"} & set(built), built
        assert not [b for b in built if b.startswith(("hbone_tunnel", "service_port", "_tunnel_listener"))], built
        for name in (inbound.contract.INBOUND_LISTENER, inbound.contract.INBOUND_PLAINTEXT_LISTENER):
            assert after[node].resources.listeners[name] is before[node].resources.listeners[name]
    # node A's own inbound listeners are rebuilt: the new pod has chains in them
    assert {"_hbone_listener", "_plaintext_listener"} <= set(translator.memo.of(a))
    # no service cluster is built again anywhere; endpoints only for the new pod's service
    assert "service_port" not in [b for _, b, _ in translator.memo.builds]
    # (one service port's endpoints are built from its name; a group of them from the memo and the mesh)
    endpoint_builds = [args[0] for _, b, args in translator.memo.builds if "endpoints" in b and isinstance(args[0], str)]
    assert endpoint_builds and all("svc-0." in name for name in endpoint_builds), endpoint_builds


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_change_no_other_node_can_see_translates_only_its_node(layout: str) -> None:
    """A pod relabelled without changing any service's endpoints: only its node is translated,
    and what comes out is the same config."""
    docs = synthetic_manifests(SHAPE)
    translator = RecordingTranslator(layout)
    before = _translate_all(translator, _index(docs))
    pod = next(d for d in docs if d["kind"] == "Pod" and d["spec"]["nodeName"] == node_name(1))
    pod["metadata"]["labels"] = {**pod["metadata"]["labels"], "version": "v2"}
    index = _index(docs)
    inputs = translator.inputs(index)
    changed = [node for node, node_input in inputs.items() if node_input != before[node].input]
    assert changed == [node_name(1)]
    assert inputs[node_name(0)].mesh is before[node_name(0)].input.mesh  # kept: equal
    translator.reset()
    again = translator.translate(inputs[node_name(1)])
    assert _serialized(again.resources) == _serialized(before[node_name(1)].resources)
    # rebuilt: the two inbound listeners holding the relabelled pod (a pod's policies follow its
    # labels); every other piece was found in the memo
    assert sorted(translator.memo.of(node_name(1))) == ["_hbone_listener", "_plaintext_listener"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [SHAPE, Shape(nodes=4, pods=40, services=9, namespaces=2, ports_per_service=3)])
def test_sharing_changes_nothing(layout: str, shape: Shape) -> None:
    """Through one memo, across model changes, every node's config is what translating it alone
    gives, byte for byte: no shared piece was changed by a node using it, and no memo key
    misses an input its piece depends on."""
    docs = synthetic_manifests(shape)
    translator = IncrementalTranslator(TranslateOptions(layout=layout))
    changes = [
        [],
        [extra_pod(shape, 0, node=0)],
        [extra_pod(shape, shape.services, node=1)],  # the same service's pod, moved: as many endpoints
        [extra_pod(shape, 0, node=0), extra_pod(shape, 1, node=1), extra_service(shape, 0)],
        [extra_service(shape, 0)],  # both pods gone again
    ]
    for extra in changes:
        index = _index(docs + extra)
        for node, translated in _translate_all(translator, index).items():
            alone = translate_node(index, node, TranslateOptions(layout=layout))
            assert _serialized(translated.resources) == _serialized(alone), node


@pytest.mark.parametrize("layout", LAYOUTS)
def test_identical_pieces_are_one_object_on_every_node(layout: str) -> None:
    translator = IncrementalTranslator(TranslateOptions(layout=layout))
    translated = _translate_all(translator, _index(synthetic_manifests(SHAPE)))
    first, *rest = translated.values()
    for other in rest:
        for name in (cluster_builders.names.PASSTHROUGH_CLUSTER, cluster_builders.names.VIRTUAL_INBOUND):
            assert other.resources.clusters[name] is first.resources.clusters[name]
    # a service's cluster is one object on every node that has it (per identity, in the article's layout)
    common = set.intersection(*(set(t.resources.clusters) for t in translated.values()))
    service_clusters = [n for n in common if "svc-" in n]
    assert service_clusters
    for name in service_clusters:
        assert len({id(t.resources.clusters[name]) for t in translated.values()}) == 1


def test_the_memo_lets_go_of_what_no_node_uses() -> None:
    """Fragments live while a node's translation holds them: a removed service's go with it."""
    docs = synthetic_manifests(SHAPE)
    translator = IncrementalTranslator(TranslateOptions(layout="article"))
    held = _translate_all(translator, _index(docs))
    gone = [d for d in docs if not (d["kind"] == "Service" and d["metadata"]["name"] == "svc-3")]
    held = _translate_all(translator, _index(gone))  # the previous translations are dropped here
    keys = [str(f.key) for f in translator.fragments._live.values()]
    assert keys and not [k for k in keys if "svc-3." in k]
    assert held  # (what keeps the current fragments)


def test_mesh_input_compares_by_what_config_reads() -> None:
    docs = synthetic_manifests(SHAPE)
    index = _index(docs)
    mesh = MeshInput.of(index)
    assert MeshInput.of(_index(docs)) == mesh and hash(MeshInput.of(_index(docs))) == hash(mesh)
    cluster = index.cluster
    relabelled = tuple(replace(w, labels={**w.labels, "team": "x"}) for w in cluster.workloads)
    assert MeshInput.of(MeshIndex.build(replace(cluster, workloads=relabelled))) == mesh
    fewer = MeshIndex.build(Cluster(**{**cluster.__dict__, "workloads": cluster.workloads[1:]}))
    assert MeshInput.of(fewer) != mesh


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inputs_made_from_the_last_models_are_a_fresh_models(layout: str) -> None:
    """A pod added, then deleted: each node's input (its mesh and the ports it serves, whose hashes
    are made from the last model's, and a node's input given the new mesh without ``__init__``)
    equals and hashes as what a translator that never saw the last model makes."""
    cluster = synthetic_cluster(synthetic_manifests(SHAPE))
    pod = KIND_CONVERTERS["Pod"](extra_pod(SHAPE, 0, node=0))
    first = MeshIndex.build(cluster)
    translator = IncrementalTranslator(TranslateOptions(layout=layout))
    _translate_all(translator, first)  # (what translation derives of a mesh is carried to the next)
    index = first
    for workloads in (cluster.workloads + (pod,), cluster.workloads):  # the same objects: built from the last
        model = replace(cluster, workloads=workloads)
        last, index = index, MeshIndex.build(model, previous=index)
        assert index.changes_since(last.generation).service_ports  # (what is made from the last model's)
        inputs = translator.inputs(index)
        fresh = IncrementalTranslator(TranslateOptions(layout=layout)).inputs(MeshIndex.build(model))
        assert inputs.keys() == fresh.keys()
        for node, node_input in inputs.items():
            assert node_input == fresh[node] and hash(node_input) == hash(fresh[node]), node
            assert node_input == replace(node_input) and node_input.__dict__ == replace(node_input).__dict__, node
        mesh, fresh_mesh = next(iter(inputs.values())).mesh, next(iter(fresh.values())).mesh
        assert hash(mesh) == hash(fresh_mesh) and mesh.hash_parts == fresh_mesh.hash_parts
        assert hash(mesh.served_ports(None)) == hash(fresh_mesh.served_ports(None))
        assert mesh.served_ports(None) == fresh_mesh.served_ports(None)
        _translate_all(translator, index)


def test_types_of_a_node_are_the_ones_served() -> None:
    translated = next(iter(_translate_all(IncrementalTranslator(), _index(synthetic_manifests(SHAPE))).values()))
    assert set(translated.resources.by_type()) == {LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE}


def test_a_listener_put_together_from_shared_pieces_has_the_facts_of_the_whole() -> None:
    """The consistency facts of a listener from its own part and its pieces (each piece's derived
    once) find what walking the whole listener finds: nothing for what the layout makes, and the
    same findings for a duplicate chain across a piece and a selected chain that is nowhere."""
    from google.protobuf import duration_pb2

    from envoy.config.listener.v3.listener_pb2 import Listener
    from zpilot import contract
    from zpilot.translators import consistency, matcher, names
    from zpilot.translators.context import ListenerParts
    from zpilot.translators.fragments import Fragment
    from zpilot.translators.resources import NodeResources
    from zpilot.translators.tcp_proxy import proxy_chain

    translator = IncrementalTranslator(TranslateOptions(layout="linear"))
    translated = _translate_all(translator, _index(synthetic_manifests(SHAPE)))[node_name(0)]
    name = contract.OUTBOUND_LISTENER
    parts = translated.listener_parts[name]
    assert consistency.join(translated.resources, [consistency.listener_facts_of_parts(name, parts)]) == []

    chain = proxy_chain("a", names.PASSTHROUGH_CLUSTER, idle_timeout=duration_pb2.Duration(seconds=1))
    piece = Fragment("chains", (chain,))
    nowhere = Fragment("match", matcher.serialized(matcher.chain("nowhere")))
    own = Listener(name=name)
    own.filter_chains.add().CopyFrom(chain)  # "a" twice: once here, once in the piece
    own.filter_chain_matcher.CopyFrom(matcher.exact("port", {"1": matcher.chain("a")}))
    whole = Listener()
    whole.CopyFrom(own)
    whole.filter_chains.extend(piece.value)
    whole.filter_chain_matcher.matcher_tree.exact_match_map.map["2"].MergeFromString(nowhere.value)
    node = NodeResources(node="n")  # no cluster at all: each chain's cluster is missing too
    composed = consistency.join(node, [consistency.listener_facts_of_parts(name, ListenerParts(own, (piece,), (nowhere,)))])
    walked = consistency.join(node, [consistency.resource_facts(consistency.LISTENER, name, whole)])
    assert composed == walked
    assert any("2 filter chains named 'a'" in f for f in walked) and any("selects chain 'nowhere'" in f for f in walked)
    assert sum("sends to cluster" in f for f in walked) == 2


@pytest.mark.parametrize("with_matcher", [True, False], ids=["matcher", "no-matcher"])
def test_the_facts_of_shared_pieces_made_once_serve_every_listener_made_of_them(with_matcher: bool) -> None:
    """The pieces' facts together are made once and kept (every node's outbound listener has the
    same thousands of chains): each listener made of them still finds what walking it whole
    finds, its own part's faults and the pieces' alike, and pieces that are not the very same
    objects are not taken for the kept ones."""
    from google.protobuf import duration_pb2

    from envoy.config.listener.v3.listener_pb2 import Listener
    from zpilot.translators import consistency, matcher, names
    from zpilot.translators.context import ListenerParts
    from zpilot.translators.fragments import Fragment
    from zpilot.translators.resources import NodeResources
    from zpilot.translators.tcp_proxy import proxy_chain

    idle = duration_pb2.Duration(seconds=1)

    def chain(name: str, ip: str):
        made = proxy_chain(name, names.PASSTHROUGH_CLUSTER, idle_timeout=idle)
        made.filter_chain_match.prefix_ranges.add(address_prefix=ip).prefix_len.value = 24
        return made

    node = NodeResources(node="n")  # no cluster: every chain's is missing, in the same order both ways
    first = Fragment("chains", (chain("a", "10.0.0.0"), chain("b", "10.1.0.0")))
    second = Fragment("chains", (chain("c", "10.1.0.7"), chain("b", "10.2.0.0")))  # b twice; c's range is b's
    nowhere = Fragment("match", matcher.serialized(matcher.chain("nowhere")))
    matches = (nowhere,) if with_matcher else ()

    def findings(own_chains: list, pieces: tuple[Fragment, ...]) -> tuple[list[str], list[str]]:
        own = Listener(name="l")
        for c in own_chains:
            own.filter_chains.add().CopyFrom(c)
        if with_matcher:
            own.filter_chain_matcher.CopyFrom(matcher.exact("port", {"1": matcher.chain("a")}))
        whole = Listener()
        whole.CopyFrom(own)
        for piece in pieces:
            whole.filter_chains.extend(piece.value)
        if with_matcher:
            whole.filter_chain_matcher.matcher_tree.exact_match_map.map["2"].MergeFromString(nowhere.value)
        parts = ListenerParts(own, pieces, matches, ((),) * len(matches))
        composed = consistency.join(node, [consistency.listener_facts_of_parts("l", parts)])
        return composed, consistency.join(node, [consistency.resource_facts(consistency.LISTENER, "l", whole)])

    for own_chains in ([], [chain("a", "10.0.0.9")], [chain("d", "10.9.0.0")]):  # the kept facts, each time
        composed, walked = findings(own_chains, (first, second))
        assert composed == walked
        assert any("2 filter chains named 'b'" in f for f in walked)
        assert any("2 filter chains named 'a'" in f for f in walked) == (own_chains[:1] == [chain("a", "10.0.0.9")])
        if with_matcher:
            assert any("selects chain 'nowhere'" in f for f in walked)
        else:
            assert any("matching the same connections" in f for f in walked)
    replaced = Fragment("chains", (chain("e", "10.3.0.0"),))  # not the second piece: nothing of it kept
    composed, walked = findings([], (first, replaced))
    assert composed == walked and not any("'b'" in f and "filter chains named" in f for f in walked)

"""A node's local pods kept from one translation of it to the next (``inbound._local_pods``) are
kept with the translator's memo, for the nodes the model still gives config alone: a node removed
from the cluster must not keep its pods (and what they hold) alive for the process's life."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace

from zpilot.model.index import MeshIndex
from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.translators.fragments import Fragments


def _translate_all(translator: IncrementalTranslator, index: MeshIndex) -> list[str]:
    inputs = translator.inputs(index)
    for node_input in inputs.values():
        translator.translate_parts(node_input)
    return sorted(inputs)


def test_a_removed_nodes_pods_are_let_go() -> None:
    cluster = synthetic_cluster(synthetic_manifests(Shape(nodes=3, pods=30)))
    translator = IncrementalTranslator(TranslateOptions(layout="linear"))
    nodes = _translate_all(translator, MeshIndex.build(cluster))
    gone = nodes[0]
    pods = [w for w in cluster.workloads if w.node_name == gone]
    assert pods and set(translator.fragments.kept_pods) == set(nodes)
    refs = [weakref.ref(w) for w in pods]
    smaller = replace(
        cluster,
        nodes=tuple(n for n in cluster.nodes if n.name != gone),
        workloads=tuple(w for w in cluster.workloads if w.node_name != gone),
    )
    del cluster, pods
    assert _translate_all(translator, MeshIndex.build(smaller)) == nodes[1:]
    assert set(translator.fragments.kept_pods) == set(nodes[1:])
    gc.collect()
    assert not [r for r in refs if r() is not None], "a removed node's pods are still alive"


def test_kept_pods_go_with_their_memo() -> None:
    """Two translators (two memos) of clusters with the same node names keep their own pods."""
    one = IncrementalTranslator(TranslateOptions(layout="linear"))
    two = IncrementalTranslator(TranslateOptions(layout="linear"), Fragments())
    cluster = synthetic_cluster(synthetic_manifests(Shape(nodes=2, pods=10)))
    _translate_all(one, MeshIndex.build(cluster))
    assert not two.fragments.kept_pods
    _translate_all(two, MeshIndex.build(cluster))
    assert one.fragments.kept_pods.keys() == two.fragments.kept_pods.keys()
    for node, kept in one.fragments.kept_pods.items():
        assert kept and all(a is not b for a, b in zip(kept.values(), two.fragments.kept_pods[node].values()))

"""Policies changed one after another: each index built from the previous one (what a policy change
costs: the workloads the changed policies decide for, before or after) answers exactly what an index
built from nothing answers, and what it says changed since the previous one holds every difference.

Pods of two labels in two namespaces (and one opted out, one on the host network, carrying the
same labels); at each step one to three policies (AuthorizationPolicies and PeerAuthentications,
in those namespaces or the root one, selecting or not) are added, removed or given another
selector, action or mode, pods sometimes added or removed with them.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zpilot.model import Cluster, MeshIndex, Namespace, Node, Workload
from zpilot.model.objects import frozen_labels
from zpilot.model.policy import Action, AuthorizationPolicy, MtlsMode, PeerAuthentication, Rule, Source

AMBIENT = frozen_labels({"istio.io/dataplane-mode": "ambient"})
NAMESPACES = ("x", "y", "istio-system")
NODES = ("n1", "n2", "n3")


def _pod(i: int) -> Workload:
    labels = {"app": "ab"[i % 2], "tier": "fb"[i // 2 % 2]}
    if i == 7:
        labels["istio.io/dataplane-mode"] = "none"  # opted out: never decided for
    return Workload(f"p{i}", NAMESPACES[i % 3 % 2], f"uid-{i}", (f"10.0.0.{i + 1}",), NODES[i % 3], "sa",
                    frozen_labels(labels), host_network=i == 9)


PODS = tuple(_pod(i) for i in range(12))
SELECTORS = (None, {"app": "a"}, {"app": "b"}, {"app": "a", "tier": "f"}, {"tier": "b"})


@st.composite
def _policy(draw: st.DrawFn, name: str) -> AuthorizationPolicy | PeerAuthentication:
    namespace = draw(st.sampled_from(NAMESPACES))
    selector = draw(st.sampled_from(SELECTORS))
    labels = frozen_labels(selector) if selector else None
    if name.startswith("pa"):
        mode = draw(st.sampled_from([MtlsMode.STRICT, MtlsMode.PERMISSIVE, MtlsMode.UNSET]))
        return PeerAuthentication(name, namespace, labels, mode, created=f"2022-01-0{draw(st.integers(1, 3))}")
    action = draw(st.sampled_from([Action.ALLOW, Action.DENY]))
    return AuthorizationPolicy(name, namespace, action, labels, (Rule(sources=(Source(namespaces=("z",)),)),))


@st.composite
def _steps(draw: st.DrawFn) -> list[tuple[dict, frozenset[int]]]:
    names = [f"ap{i}" for i in range(4)] + [f"pa{i}" for i in range(3)]
    policies: dict = {}
    pods = frozenset(draw(st.sets(st.integers(0, len(PODS) - 1), min_size=6)))
    steps = [(dict(policies), pods)]
    for _ in range(draw(st.integers(1, 6))):
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from(names))
            if name in policies and draw(st.booleans()):
                del policies[name]
            else:
                policies[name] = draw(_policy(name))
        if draw(st.integers(0, 3)) == 0:  # a pod added or removed in the same change
            pods = pods ^ {draw(st.integers(0, len(PODS) - 1))}
        steps.append((dict(policies), pods))
    return steps


def _cluster(policies: dict, pods: frozenset[int]) -> Cluster:
    return Cluster(
        nodes=tuple(Node(n, (f"172.18.0.{i + 2}",)) for i, n in enumerate(NODES)),
        namespaces=tuple(Namespace(ns, AMBIENT) for ns in NAMESPACES),
        workloads=tuple(PODS[i] for i in sorted(pods)),
        authorization_policies=tuple(p for p in policies.values() if isinstance(p, AuthorizationPolicy)),
        peer_authentications=tuple(p for p in policies.values() if isinstance(p, PeerAuthentication)),
    )


@settings(max_examples=150, deadline=None, derandomize=True)
@given(_steps())
def test_policy_changes_patch_what_a_full_build_gives(steps) -> None:
    last: MeshIndex | None = None
    for policies, pods in steps:
        cluster = _cluster(policies, pods)
        full = MeshIndex.build(cluster)
        index = MeshIndex.build(cluster, previous=last)
        assert index.policies._by_workload == full.policies._by_workload
        assert (index.policies.authorization, index.policies.peer_authentication) == (
            full.policies.authorization, full.policies.peer_authentication)
        assert list(index.problems) == list(full.problems)
        if last is not None:
            changes = index.changes_since(last.generation)
            for w in index.meshed_workloads():
                if changes.nodes is not None and w.node_name not in changes.nodes:
                    assert index.policies_for(w) == last.policies_for(w), w.ref
        last = index

"""An index built from the previous one: patched for plain pod churn, built again otherwise, and
always what a build from nothing gives (tests/properties/test_incremental_model.py draws the
random cases; these are the ones that decide which way a change goes)."""

from __future__ import annotations

from dataclasses import replace

from zpilot.model import Cluster, MeshIndex, Namespace, Node, Problems, Service, ServicePort, Workload
from zpilot.model.objects import frozen_labels
from zpilot.model.policy import MtlsMode, PeerAuthentication

AMBIENT = frozen_labels({"istio.io/dataplane-mode": "ambient"})


def pod(name: str, ip: str, app: str = "web", *, node: str | None = "n1", ns: str = "shop") -> Workload:
    return Workload(name, ns, f"uid-{name}", (ip,), node, "sa", frozen_labels({"app": app}))


def selecting(name: str, created: str) -> PeerAuthentication:
    return PeerAuthentication(name, "shop", frozen_labels({"app": "web"}), MtlsMode.STRICT, created=created)


BASE = Cluster(
    nodes=(Node("n1", ("172.18.0.2",)), Node("n2", ("172.18.0.3",))),
    namespaces=(Namespace("shop", AMBIENT), Namespace("plain")),
    workloads=(pod("m-web", "10.0.0.1"), pod("db", "10.0.0.2", "db", node="n2")),
    services=(Service("web", "shop", ("10.96.0.1",), (ServicePort(80, 8080),), frozen_labels({"app": "web"})),),
)


def state(index: MeshIndex) -> tuple:
    return (index._other_claims, index._other_names, dict(index._by_label), index._meshed, index.meshed_workloads(),
            index._by_ip, dict(index._by_node), index._endpoints, index._vips, index.services,
            index.policies._by_workload, list(index.problems))


def both(cluster: Cluster, previous: MeshIndex) -> MeshIndex:
    """The index built from ``previous``, checked against one built from nothing."""
    incremental = MeshIndex.build(cluster, Problems(), previous=previous)
    assert state(incremental) == state(MeshIndex.build(cluster, Problems()))
    return incremental


def test_a_plain_pod_added_or_removed_is_patched_in() -> None:
    before = MeshIndex.build(BASE)
    added = pod("a-web", "10.0.0.3", node="n2")
    after = both(replace(BASE, workloads=BASE.workloads + (added,)), before)
    assert after._workload_changes == ([added], [])
    assert [e.workload.name for e in after.endpoints(BASE.services[0], BASE.services[0].ports[0])] == ["a-web", "m-web"]
    again = both(BASE, after)
    assert again._workload_changes == ([], [added])


def test_a_pod_whose_problems_or_claims_change_is_built_again() -> None:
    before = MeshIndex.build(BASE)
    for other in (
        pod("clash", "10.0.0.1"),  # claims m-web's address: both are skipped, an error says so
        pod("no-node", "10.0.0.4", node=None),  # warned about
        pod("outside", "10.0.0.5", ns="plain"),  # its namespace is reported
        replace(pod("pending", "10.0.0.6"), phase="Pending"),
    ):
        after = both(replace(BASE, workloads=BASE.workloads + (other,)), before)
        assert after._workload_changes is None, other.name
        both(BASE, after)


def test_competing_policies_are_reported_by_the_first_pod_they_decide_for() -> None:
    """The warning names the first pod (in the index's order) the competing policies select: a pod
    added before it moves the warning to itself, so the policies are looked at again."""
    cluster = replace(BASE, peer_authentications=(selecting("older", "2022-01-01T00:00:00Z"),
                                                  selecting("newer", "2022-01-02T00:00:00Z")))
    before = MeshIndex.build(cluster)
    assert any("selecting Pod shop/m-web" in p.reason for p in before.problems)
    after = both(replace(cluster, workloads=cluster.workloads + (pod("a-web", "10.0.0.3"),)), before)
    assert any("selecting Pod shop/a-web" in p.reason for p in after.problems)
    assert not any("selecting Pod shop/m-web" in p.reason for p in after.problems)
    both(cluster, after)


def test_a_policy_changed_in_one_namespace_is_looked_at_for_that_namespace_only() -> None:
    other = pod("api", "10.0.0.9", ns="edge")
    cluster = replace(BASE, namespaces=BASE.namespaces + (Namespace("edge", AMBIENT),),
                      workloads=BASE.workloads + (other,))
    edge = PeerAuthentication("edge-wide", "edge", None, MtlsMode.STRICT)
    cluster = replace(cluster, peer_authentications=(edge,))
    before = MeshIndex.build(cluster)
    strict = selecting("strict", "2022-01-01T00:00:00Z")
    after = both(replace(cluster, peer_authentications=(edge, strict)), before)
    web = after.workload_by_ip("10.0.0.1")
    assert web is not None and after.policies_for(web).mtls.default is MtlsMode.STRICT
    assert not after.policies_for(other).empty
    assert after.policies_for(other) is before.policies_for(other)  # edge's: the previous answer
    both(cluster, after)


def test_builds_from_an_index_already_built_from_are_full_ones(caplog) -> None:
    """A patch takes the per-pod derivations over from the index it patches (changed in place, not
    copied): another build from that index, and those built from it, must not reuse what the first
    patch wrote there (here: shop's pods answered for a STRICT policy the second lineage lacks)."""
    before = MeshIndex.build(BASE)
    strict = replace(BASE, peer_authentications=(selecting("strict", "2022-01-01T00:00:00Z"),),
                     workloads=BASE.workloads + (pod("a-web", "10.0.0.3"),))
    first = both(strict, before)
    assert first._workload_changes is not None and first.policies_for(BASE.workloads[0]).mtls.refuses_any_plaintext
    second = both(replace(BASE, workloads=BASE.workloads + (pod("b-web", "10.0.0.4"),)), before)
    assert second.policies_for(BASE.workloads[0]).mtls.refuses_any_plaintext is False
    # a policy of another namespace and a pod not patched in: shop's answers reused, if any were kept
    other = replace(second.cluster, peer_authentications=(PeerAuthentication("p", "plain", mode=MtlsMode.STRICT),),
                    workloads=second.cluster.workloads + (replace(pod("pending", "10.0.0.6"), phase="Pending"),))
    third = both(other, second)
    assert third.policies_for(BASE.workloads[0]).mtls.refuses_any_plaintext is False
    both(BASE, both(strict, third))
    assert not caplog.records  # each built again because it is no patch, not because a patch found it wrong


def test_an_index_patched_from_answers_as_before() -> None:
    """A patch takes the per-pod derivations of the index it patches over and changes them in place:
    that index's own answers must not change with them (the debug API, explain and the last
    producer step still read it, from other threads, while the next model is built from it)."""
    from collections.abc import Mapping

    def frozen(value):  # a copy of the tables as they are now, not of the pods in them
        if isinstance(value, Mapping):
            return {key: frozen(v) for key, v in value.items()}
        if isinstance(value, (list, tuple)):
            return tuple(map(frozen, value))
        return value

    before = MeshIndex.build(BASE)
    pods = BASE.workloads
    answers = lambda index: (frozen(state(index)), [index.policies_for(w) for w in pods],  # noqa: E731
                             [index.workload_by_ip(ip) for w in pods for ip in w.ips],
                             [index.workloads_on(n.name) for n in BASE.nodes])
    seen = answers(before)
    added = pod("a-web", "10.0.0.3", node="n2")
    strict = replace(BASE, peer_authentications=(selecting("strict", "2022-01-01T00:00:00Z"),))
    first = both(replace(BASE, workloads=pods + (added,)), before)
    assert first._workload_changes == ([added], [])  # patched: before's derivations taken over
    assert answers(before) == seen
    seen_first = answers(first)
    second = both(replace(strict, workloads=pods[1:] + (added,)), first)
    assert second._workload_changes == ([], [pods[0]])
    assert answers(before) == seen and answers(first) == seen_first
    both(strict, second)
    assert answers(before) == seen and answers(first) == seen_first

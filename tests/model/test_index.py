"""Mesh membership rules and the index's lookups."""

from __future__ import annotations

from zpilot.model import Cluster, ContainerPort, MeshIndex, Namespace, Node, Problems, Service, ServicePort, Workload
from zpilot.model.objects import frozen_labels

AMBIENT = frozen_labels({"istio.io/dataplane-mode": "ambient"})


def pod(name: str, ip: str | None, ns: str = "mesh", node: str = "n1", **kw) -> Workload:
    labels = frozen_labels(kw.pop("labels", {"app": "web"}))
    return Workload(
        name=name, namespace=ns, uid=f"uid-{name}", ips=(ip,) if ip else (), node_name=node,
        service_account=kw.pop("sa", "web"), labels=labels, **kw,
    )


def build(*workloads: Workload, services: tuple[Service, ...] = ()) -> tuple[MeshIndex, Problems]:
    cluster = Cluster(
        nodes=(Node("n1", ("172.18.0.2",)), Node("n2", ("172.18.0.3",))),
        namespaces=(Namespace("mesh", AMBIENT), Namespace("plain")),
        workloads=workloads,
        services=services,
    )
    problems = Problems()
    return MeshIndex.build(cluster, problems), problems


def test_membership_rules() -> None:
    index, problems = build(
        pod("in", "10.0.0.1"),
        pod("opt-out", "10.0.0.2", labels={"istio.io/dataplane-mode": "none"}),
        pod("legacy-opt-out", "10.0.0.3", labels={"ambient-type": "none"}),
        pod("host", "172.18.0.2", host_network=True),
        pod("no-ip", None),
        pod("pending", None, phase="Pending"),
        pod("succeeded", "10.0.0.4", phase="Succeeded"),
        pod("other-ns", "10.0.0.5", ns="plain"),
        pod("unknown-ns", "10.0.0.6", ns="ghost"),
    )
    assert [w.name for w in index.meshed_workloads()] == ["in"]
    assert {w.name for w in index.workloads_on("n1")} == {"in", "opt-out", "legacy-opt-out", "other-ns", "unknown-ns"}
    text = "\n".join(map(str, problems))
    for expected in (
        "Pod mesh/no-ip: running pod has no IP",
        "Pod mesh/host: hostNetwork pod",
        "Pod mesh/pending: phase Pending",
        "Namespace plain: not labelled",
        "Namespace ghost: not given",
        "Pod mesh/opt-out: opted out",
    ):
        assert expected in text


def test_duplicate_ip_skips_every_claimant_and_reports_once() -> None:
    index, problems = build(pod("a", "10.0.0.9"), pod("b", "10.0.0.9"), pod("c", "10.0.0.10"))
    assert [w.name for w in index.meshed_workloads()] == ["c"]
    assert index.workload_by_ip("10.0.0.9") is None
    dup = [p for p in problems if "10.0.0.9" in p.subject]
    assert len(dup) == 1 and "Pod mesh/a" in dup[0].reason and "Pod mesh/b" in dup[0].reason


def test_endpoints_resolve_named_target_ports_and_skip_unready() -> None:
    svc = Service(
        "web", "mesh", ("10.96.0.1",),
        (ServicePort(80, "http", "http"), ServicePort(81, 8081, "alt")),
        selector=frozen_labels({"app": "web"}),
    )
    index, problems = build(
        pod("ready", "10.0.0.1", ports=(ContainerPort(8080, "http"),)),
        pod("other-port-name", "10.0.0.2", ports=(ContainerPort(8080, "web"),)),
        pod("unready", "10.0.0.3", ready=False, ports=(ContainerPort(8080, "http"),)),
        pod("plain", "10.0.0.4", ns="plain"),
        services=(svc,),
    )
    http = index.destination_endpoints("10.96.0.1", 80)
    assert [(e.workload.name, e.port, e.meshed) for e in http] == [("ready", 8080, True)]
    alt = index.destination_endpoints("10.96.0.1", 81)
    assert [(e.workload.name, e.port) for e in alt] == [("other-port-name", 8081), ("ready", 8081)]
    assert index.destination("10.96.0.1", 82) is None
    assert any("targetPort 'http' is not a container port of Pod mesh/other-port-name" in p.reason for p in problems)


def test_non_mesh_endpoints_are_marked() -> None:
    svc = Service("web", "mesh", ("10.96.0.1",), (ServicePort(80, 80, "http"),), selector=frozen_labels({"app": "web"}))
    index, _ = build(pod("out", "10.0.0.1", labels={"app": "web", "istio.io/dataplane-mode": "none"}), services=(svc,))
    [ep] = index.destination_endpoints("10.96.0.1", 80)
    assert not ep.meshed and ep.authority == "10.0.0.1:80"


def test_vip_conflict_is_reported_and_first_kept() -> None:
    a = Service("a", "mesh", ("10.96.0.1",), (ServicePort(80, 80, "http"),), selector=frozen_labels({"app": "web"}))
    b = Service("b", "mesh", ("10.96.0.1",), (ServicePort(80, 80, "http"),), selector=frozen_labels({"app": "web"}))
    index, problems = build(services=(a, b))
    assert index.destination("10.96.0.1", 80).service.name == "a"
    assert any("already Service mesh/a's" in p.reason for p in problems)


def test_ztunnel_is_the_newest_ready_one() -> None:
    z = dict(ns="istio-system", labels={"app": "ztunnel"})
    index, _ = build(
        pod("ztunnel-old", "10.0.0.1", created="2022-01-01T00:00:00Z", **z),
        pod("ztunnel-new", "10.0.0.2", created="2022-02-01T00:00:00Z", **z),
        pod("ztunnel-newest-unready", "10.0.0.3", created="2022-03-01T00:00:00Z", ready=False, **z),
    )
    assert index.ztunnel_on("n1").name == "ztunnel-new"
    assert index.ztunnel_on("n2") is None

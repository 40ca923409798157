"""The mesh is IPv4-only: the index keeps each object's IPv4 addresses and reports what it dropped.

One rule in one place (``MeshIndex``), so the xDS translators and the CNI plan, which both read the
index, can never disagree about which addresses exist (issue 11, point 3).
"""

from __future__ import annotations

import pytest

from zpilot.model import Cluster, ContainerPort, MeshIndex, Namespace, Node, Problems, Service, ServicePort, Workload
from zpilot.model.addresses import host_cidr, host_prefix_len, is_ipv4
from zpilot.model.objects import frozen_labels

AMBIENT = frozen_labels({"istio.io/dataplane-mode": "ambient"})
WEB = frozen_labels({"app": "web"})


def pod(name: str, *ips: str, **kw) -> Workload:
    return Workload(name=name, namespace="mesh", uid=f"uid-{name}", ips=ips, node_name="n1", service_account="web",
                    labels=kw.pop("labels", WEB), ports=(ContainerPort(8080, "http"),), **kw)


def build(*workloads: Workload, services: tuple[Service, ...] = (), nodes: tuple[Node, ...] = ()) -> tuple[MeshIndex, list[str]]:
    cluster = Cluster(nodes=nodes or (Node("n1", ("172.18.0.2",)),), namespaces=(Namespace("mesh", AMBIENT),),
                      workloads=workloads, services=services)
    problems = Problems()
    return MeshIndex.build(cluster, problems), [str(p) for p in problems]


def test_dual_stack_pod_keeps_its_ipv4_address_whichever_comes_first() -> None:
    index, problems = build(pod("v4-first", "10.0.0.1", "fd00::1"), pod("v6-first", "fd00::2", "10.0.0.2"))
    assert {(w.name, w.ips) for w in index.meshed_workloads_on("n1")} == {
        ("v4-first", ("10.0.0.1",)), ("v6-first", ("10.0.0.2",))}
    assert index.workload_by_ip("10.0.0.2").name == "v6-first"
    assert index.workload_by_ip("fd00::2") is None
    assert "warning: Pod mesh/v4-first: IPv6 address fd00::1 dropped (the mesh is IPv4-only)" in problems
    assert "warning: Pod mesh/v6-first: IPv6 address fd00::2 dropped (the mesh is IPv4-only)" in problems


def test_ipv6_only_pod_is_left_out_and_said_so_once() -> None:
    index, problems = build(pod("v6", "fd00::5", "fd00::6"), pod("v4", "10.0.0.1"))
    assert [w.name for w in index.meshed_workloads()] == ["v4"]
    assert [w.name for w in index.workloads_on("n1")] == ["v4"]
    about_v6 = [p for p in problems if "mesh/v6" in p]
    assert about_v6 == ["warning: Pod mesh/v6: IPv6-only (fd00::5, fd00::6): not meshed (the mesh is IPv4-only)"]


def test_ipv6_only_ztunnel_is_no_ztunnel() -> None:
    zt = Workload("ztunnel-x", "istio-system", "uid-zt", ("fd00::9",), "n1", "ztunnel", frozen_labels({"app": "ztunnel"}))
    index, problems = build(zt)
    assert index.ztunnel_on("n1") is None
    assert any("Pod istio-system/ztunnel-x: IPv6-only" in p for p in problems)


def test_pods_that_are_not_meshed_anyway_are_not_reported_for_their_family() -> None:
    _, problems = build(pod("host", "fd00::7", host_network=True), pod("done", "fd00::8", phase="Succeeded"))
    assert not any("IPv6" in p for p in problems)


def test_duplicate_ipv6_addresses_do_not_cost_the_pods_their_ipv4_ones() -> None:
    index, problems = build(pod("a", "10.0.0.1", "fd00::1"), pod("b", "10.0.0.2", "fd00::1"))
    assert {w.name for w in index.meshed_workloads()} == {"a", "b"}
    assert not any("claimed by" in p for p in problems)


def test_dual_stack_service_keeps_its_ipv4_vips_and_ipv6_only_is_skipped() -> None:
    port = (ServicePort(80, "http", "http"),)
    dual = Service("dual", "mesh", ("fd00:96::1", "10.96.0.1"), port, selector=WEB)
    v6 = Service("v6", "mesh", ("fd00:96::2",), port, selector=WEB)
    headless = Service("headless", "mesh", (), port, selector=WEB, headless=True)
    index, problems = build(pod("web", "10.0.0.1", "fd00::1"), services=(dual, v6, headless))
    assert [(vip, t.service.name) for vip, t in index.vips()] == [("10.96.0.1", "dual")]
    assert index.destination("fd00:96::1", 80) is None
    [target_service] = [s for s in index.services if s.name == "dual"]
    assert target_service.cluster_ips == ("10.96.0.1",)
    assert {s.name for s in index.services} == {"dual", "headless"}
    assert [e.authority for e in index.destination_endpoints("10.96.0.1", 80)] == ["10.0.0.1:8080"]
    assert "warning: Service mesh/dual: IPv6 clusterIP fd00:96::1 dropped (the mesh is IPv4-only)" in problems
    assert "warning: Service mesh/v6: IPv6-only (fd00:96::2): skipped (the mesh is IPv4-only)" in problems
    assert not any("headless" in p for p in problems)


def test_nodes_keep_their_ipv4_internal_ip() -> None:
    nodes = (Node("dual", ("fd00:18::2", "172.18.0.2"), ("fd00:10::/64", "10.0.0.0/24")),
             Node("v6", ("fd00:18::3",), ("fd00:11::/64",)), Node("none"))
    index, problems = build(nodes=nodes)
    assert (index.nodes["dual"].internal_ip, index.nodes["dual"].pod_cidrs) == ("172.18.0.2", ("10.0.0.0/24",))
    assert (index.nodes["v6"].internal_ip, index.nodes["v6"].pod_cidrs) == (None, ())
    assert index.nodes["none"].internal_ip is None
    assert "warning: Node dual: IPv6 InternalIP fd00:18::2 dropped (the mesh is IPv4-only)" in problems
    assert "warning: Node v6: IPv6-only (fd00:18::3): it has no InternalIP in the mesh (the mesh is IPv4-only)" in problems
    assert not any("Node none" in p for p in problems)


@pytest.mark.parametrize(("ip", "length", "v4"), [("10.0.0.1", 32, True), ("fd00::1", 128, False),
                                                  ("::ffff:10.0.0.1", 128, False), ("::", 128, False)])
def test_host_prefixes_follow_the_family(ip: str, length: int, v4: bool) -> None:
    assert (host_prefix_len(ip), host_cidr(ip), is_ipv4(ip)) == (length, f"{ip}/{length}", v4)


def test_host_prefix_of_a_non_address_is_refused() -> None:
    with pytest.raises(ValueError):
        host_prefix_len("10.0.0.1/24")
    assert not is_ipv4("not-an-ip")


@pytest.mark.parametrize("text", ["010.0.0.1", "10.0.0.01", "1.2.3", "256.0.0.1", " 10.0.0.1", "10.0.0.1 ", "10.0.0.1\x00",
                                  "", "1.2.3.4.5", "0x1.2.3.4"])
def test_host_prefix_of_what_is_not_a_canonical_ipv4_address_is_ipaddress_s(text: str) -> None:
    """The fast path (a dotted quad written as ``ipaddress`` writes it) says what ``ipaddress`` says
    of anything else: refused, as it refuses leading zeros and short forms."""
    import ipaddress

    try:
        expected: int | None = ipaddress.ip_address(text).max_prefixlen
    except ValueError:
        expected = None
    try:
        found: int | None = host_prefix_len.__wrapped__(text)
    except ValueError:
        found = None
    assert found == expected

"""Service endpoints as a real cluster has them: EndpointSlices of Services without a selector,
hostNetwork pods, readiness and termination as kube-proxy reads them, internalTrafficPolicy Local,
and localities from node topology labels."""

from __future__ import annotations

import dataclasses

from zpilot.model import (
    Cluster,
    ContainerPort,
    EndpointSlice,
    Locality,
    MeshIndex,
    Namespace,
    Node,
    Problems,
    Service,
    ServicePort,
    Severity,
    SliceEndpoint,
    SlicePort,
    Workload,
)
from zpilot.model.objects import frozen_labels

AMBIENT = frozen_labels({"istio.io/dataplane-mode": "ambient"})
ZONE_A = Locality("europe-west1", "europe-west1-a")
ZONE_B = Locality("europe-west1", "europe-west1-b")


def pod(name: str, ip: str, node: str = "n1", app: str = "web", **kw) -> Workload:
    return Workload(
        name=name, namespace=kw.pop("ns", "mesh"), uid=f"uid-{name}", ips=(ip,), node_name=node,
        service_account="web", labels=frozen_labels({"app": app, **kw.pop("labels", {})}), **kw,
    )


def service(name: str, vip: str, *ports: ServicePort, app: str | None = "web", **kw) -> Service:
    selector = frozen_labels({"app": app}) if app else None
    return Service(name, kw.pop("ns", "mesh"), (vip,), ports or (ServicePort(80, 8080, "http"),), selector=selector, **kw)


def build(
    *workloads: Workload, services: tuple[Service, ...] = (), slices: tuple[EndpointSlice, ...] = ()
) -> tuple[MeshIndex, Problems]:
    cluster = Cluster(
        nodes=(Node("n1", ("172.18.0.2",), locality=ZONE_A), Node("n2", ("172.18.0.3",), locality=ZONE_B),
               Node("n3", ("172.18.0.4",))),
        namespaces=(Namespace("mesh", AMBIENT), Namespace("default", AMBIENT)),
        workloads=workloads,
        services=services,
        endpoint_slices=slices,
    )
    problems = Problems()
    return MeshIndex.build(cluster, problems), problems


def found(index: MeshIndex, vip: str, port: int, node: str | None = None) -> list[tuple[str, bool]]:
    return [(e.authority, e.meshed) for e in index.destination_endpoints(vip, port, node)]


def messages(problems: Problems, severity: Severity | None = None) -> list[str]:
    return [f"{p.subject}: {p.reason}" for p in problems if severity is None or p.severity == severity]


# -- Services without a selector -----------------------------------------------------------------

KUBERNETES = Service("kubernetes", "default", ("10.8.0.1",), (ServicePort(443, 6443, "https"),))
API_SERVER_SLICE = EndpointSlice(
    "kubernetes", "default", "kubernetes", "IPv4",
    endpoints=(SliceEndpoint(("172.18.0.10",)),),
    ports=(SlicePort(6443, "https"),),
)


def test_the_kubernetes_service_reaches_the_api_server_directly() -> None:
    index, problems = build(services=(KUBERNETES,), slices=(API_SERVER_SLICE,))
    [ep] = index.destination_endpoints("10.8.0.1", 443, "n1")
    assert (ep.authority, ep.meshed, ep.workload) == ("172.18.0.10:6443", False, None)
    assert messages(problems) == []


def test_a_selectorless_service_without_slices_is_reported_and_has_no_endpoints() -> None:
    index, problems = build(services=(KUBERNETES,))
    assert index.destination("10.8.0.1", 443) is not None  # the VIP is known...
    assert found(index, "10.8.0.1", 443, "n1") == []  # ...with nowhere to go: translators leave it uncaptured
    [warning] = messages(problems, Severity.WARNING)
    assert warning.startswith("Service default/kubernetes: port https has no endpoints")
    assert "kubernetes.io/service-name=kubernetes" in warning and "kube-proxy, which refuses them" in warning


def test_a_selector_service_with_no_ready_pod_is_information() -> None:
    index, problems = build(pod("web", "10.0.0.1", ready=False), services=(service("web", "10.96.0.1"),))
    assert found(index, "10.96.0.1", 80) == []
    assert messages(problems) == ["Service mesh/web: port http has no ready endpoint: its VIP is not captured:"
                                  " connections pass through to kube-proxy, which refuses them"]


def test_slice_addresses_of_meshed_pods_are_tunnelled_and_others_dialled() -> None:
    db = service("db", "10.96.0.5", ServicePort(5432, 5432, "sql"), app=None)
    slices = (
        EndpointSlice("db-a", "mesh", "db", "IPv4", (SliceEndpoint(("10.0.0.1",), node_name="n2"),),
                      (SlicePort(5432, "sql"), SlicePort(9187, "metrics"))),
        # The same port name numbered differently in another slice, and an address outside the cluster.
        EndpointSlice("db-b", "mesh", "db", "IPv4", (SliceEndpoint(("192.168.0.9",), zone="zone-x"),),
                      (SlicePort(15432, "sql"),)),
        # A slice for another port name only, and one whose port has no number: neither serves 'sql'.
        EndpointSlice("db-c", "mesh", "db", "IPv4", (SliceEndpoint(("10.0.0.7",)),), (SlicePort(80, "http"),)),
        EndpointSlice("db-d", "mesh", "db", "IPv4", (SliceEndpoint(("10.0.0.8",)),), (SlicePort(None, "sql"),)),
    )
    index, problems = build(pod("db-0", "10.0.0.1", node="n2", app="db"), services=(db,), slices=slices)
    eps = index.destination_endpoints("10.96.0.5", 5432)
    assert [(e.authority, e.meshed, e.node_name, e.locality) for e in eps] == [
        ("10.0.0.1:5432", True, "n2", ZONE_B),  # locality of the node
        ("192.168.0.9:15432", False, None, Locality(zone="zone-x")),  # no node: the slice's zone
    ]
    assert eps[0].workload is not None and eps[0].workload.name == "db-0"
    assert messages(problems) == ["EndpointSlice mesh/db-d: port 'sql' has no number: not used for Service mesh/db"]


def test_slices_follow_the_api_conditions_and_kube_proxys_choice() -> None:
    svc = service("ext", "10.96.0.6", app=None)
    slice_ = EndpointSlice(
        "ext-1", "mesh", "ext", "IPv4",
        (
            SliceEndpoint(("10.1.0.1",)),
            SliceEndpoint(("10.1.0.2",), ready=False, serving=False),
            SliceEndpoint(("10.1.0.3",), ready=False, serving=True, terminating=True),
        ),
        (SlicePort(8080, "http"),),
    )
    index, _ = build(services=(svc,), slices=(slice_,))
    assert found(index, "10.96.0.6", 80) == [("10.1.0.1:8080", False)]
    # With the ready one gone, the one still serving while it terminates takes new connections.
    only_terminating = EndpointSlice("ext-1", "mesh", "ext", "IPv4", slice_.endpoints[1:], slice_.ports)
    index, _ = build(services=(svc,), slices=(only_terminating,))
    assert found(index, "10.96.0.6", 80) == [("10.1.0.3:8080", False)]


def test_an_address_in_two_slices_is_one_endpoint_the_readier() -> None:
    svc = service("ext", "10.96.0.6", app=None)
    port = (SlicePort(8080, "http"),)
    slices = (
        EndpointSlice("ext-a", "mesh", "ext", "IPv4", (SliceEndpoint(("10.1.0.1",), ready=False, terminating=True),), port),
        EndpointSlice("ext-b", "mesh", "ext", "IPv4", (SliceEndpoint(("10.1.0.1",)),), port),
    )
    index, _ = build(services=(svc,), slices=slices)
    [ep] = index.destination_endpoints("10.96.0.6", 80)
    assert ep.ready and not ep.terminating


def test_slices_of_selector_services_fqdn_slices_and_unlabelled_slices_are_not_read() -> None:
    svc = service("web", "10.96.0.1")
    slices = (
        EndpointSlice("web-x", "mesh", "web", "IPv4", (SliceEndpoint(("10.9.9.9",)),), (SlicePort(8080, "http"),)),
        EndpointSlice("names", "mesh", "other", "FQDN", (SliceEndpoint(("db.example.com",)),), (SlicePort(1, "x"),)),
        EndpointSlice("orphan", "mesh", "", "IPv4", (SliceEndpoint(("10.9.9.8",)),), (SlicePort(1, "x"),)),
    )
    index, problems = build(pod("web", "10.0.0.1"), services=(svc,), slices=slices)
    assert found(index, "10.96.0.1", 80) == [("10.0.0.1:8080", True)]  # the pods, not the slice
    assert messages(problems, Severity.INFO) == [
        "EndpointSlice mesh/names: addressType FQDN: not used (kube-proxy does not use FQDN slices either)",
        "EndpointSlice mesh/orphan: no kubernetes.io/service-name label: it is no Service's",
    ]


# -- pods behind a selector ------------------------------------------------------------------------


def test_host_network_pods_are_plain_endpoints_and_stay_out_of_the_mesh() -> None:
    agent = pod("agent", "172.18.0.3", node="n2", app="agent", host_network=True, ports=(ContainerPort(9100, "metrics"),))
    svc = service("agent", "10.96.0.7", ServicePort(9100, "metrics", "metrics"), app="agent")
    index, problems = build(agent, services=(svc,))
    [ep] = index.destination_endpoints("10.96.0.7", 9100)
    assert (ep.authority, ep.meshed, ep.node_name, ep.locality) == ("172.18.0.3:9100", False, "n2", ZONE_B)
    # Still not meshed, not a pod the CNI sees on its node, and no owner of the node's address.
    assert index.meshed_workloads() == [] and index.workloads_on("n2") == []
    assert index.workload_by_ip("172.18.0.3") is None
    assert "Pod mesh/agent: hostNetwork pod: not meshed" in messages(problems)
    # Two hostNetwork pods of one node on the same port share an address: one endpoint, as in kube-proxy.
    twin = dataclasses.replace(agent, name="agent-twin", uid="uid-twin")
    index, _ = build(agent, twin, services=(svc,))
    assert found(index, "10.96.0.7", 9100) == [("172.18.0.3:9100", False)]


def test_publish_not_ready_addresses_includes_every_pod() -> None:
    pods = (pod("up", "10.0.0.1"), pod("down", "10.0.0.2", ready=False),
            pod("leaving", "10.0.0.3", ready=False, terminating=True))
    index, _ = build(*pods, services=(service("peers", "10.96.0.8", publish_not_ready=True),))
    assert sorted(found(index, "10.96.0.8", 80)) == [("10.0.0.1:8080", True), ("10.0.0.2:8080", True),
                                                     ("10.0.0.3:8080", True)]
    index, _ = build(*pods, services=(service("peers", "10.96.0.8"),))
    assert found(index, "10.96.0.8", 80) == [("10.0.0.1:8080", True)]


def test_terminating_pods_are_left_out_unless_no_other_pod_serves() -> None:
    old = pod("old", "10.0.0.1", terminating=True)
    new = pod("new", "10.0.0.2")
    gone = pod("gone", "10.0.0.3", ready=False, terminating=True)
    svc = (service("web", "10.96.0.1"),)
    index, _ = build(old, new, gone, services=svc)
    assert found(index, "10.96.0.1", 80) == [("10.0.0.2:8080", True)]
    index, problems = build(old, gone, services=svc)
    assert found(index, "10.96.0.1", 80) == [("10.0.0.1:8080", True)]
    assert not any("no ready endpoint" in m for m in messages(problems))
    index, problems = build(gone, services=svc)  # terminating and not ready: never
    assert found(index, "10.96.0.1", 80) == []
    assert any("no ready endpoint" in m for m in messages(problems))


def test_internal_traffic_policy_local_keeps_each_nodes_own_endpoints() -> None:
    pods = (pod("a", "10.0.0.1", node="n1"), pod("b", "10.0.0.2", node="n2"),
            pod("c", "10.0.0.3", node="n2", ready=False, terminating=True),
            pod("d", "10.0.0.4", node="n3", terminating=True))
    index, problems = build(*pods, services=(service("web", "10.96.0.1", node_local=True),))
    assert found(index, "10.96.0.1", 80, "n1") == [("10.0.0.1:8080", True)]
    assert found(index, "10.96.0.1", 80, "n2") == [("10.0.0.2:8080", True)]
    # n3's only pod terminates: kube-proxy's fallback applies within the node's own endpoints.
    assert found(index, "10.96.0.1", 80, "n3") == [("10.0.0.4:8080", True)]
    assert found(index, "10.96.0.1", 80, "n4") == []
    assert [e.authority for e in index.destination_endpoints("10.96.0.1", 80)] == ["10.0.0.1:8080", "10.0.0.2:8080"]
    [info] = [m for m in messages(problems) if "internalTrafficPolicy" in m]
    assert "(n1, n2)" in info and "drops it" in info
    index, _ = build(*pods, services=(service("web", "10.96.0.1"),))
    assert len(found(index, "10.96.0.1", 80, "n4")) == 2  # Cluster: every node reaches every endpoint


def test_named_target_ports_resolve_per_pod_and_endpoints_carry_their_nodes_locality() -> None:
    pods = (pod("a", "10.0.0.1", node="n1", ports=(ContainerPort(8080, "http"),)),
            pod("b", "10.0.0.2", node="n2", ports=(ContainerPort(9090, "http"),)),
            pod("c", "10.0.0.3", node="n3", ports=(ContainerPort(7070, "http"),)))
    index, problems = build(*pods, services=(service("web", "10.96.0.1", ServicePort(80, "http", "http")),))
    eps = index.destination_endpoints("10.96.0.1", 80)
    assert [(e.authority, e.locality) for e in eps] == [
        ("10.0.0.1:8080", ZONE_A), ("10.0.0.2:9090", ZONE_B), ("10.0.0.3:7070", Locality()),
    ]
    assert messages(problems) == []

"""The converters accept what Kubernetes accepts and refuse, naming the field, what it refuses:
port names, port protocols, label keys and values (issue 11, point 2)."""

from __future__ import annotations

from typing import Any

import pytest

from zpilot.kube.convert import InvalidObject, namespace_from, service_from, workload_from


def service(*ports: dict[str, Any], selector: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"clusterIP": "10.96.0.10", "ports": list(ports)}
    if selector is not None:
        spec["selector"] = selector
    return {"kind": "Service", "metadata": {"name": "web", "namespace": "mesh"}, "spec": spec}


def pod(*ports: dict[str, Any], containers: int = 1, labels: Any = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": "mesh"}
    if labels is not None:
        meta["labels"] = labels
    return {
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": f"c{i}", "ports": list(ports)} for i in range(containers)]},
    }


@pytest.mark.parametrize(
    "ports,reason",
    [
        # the two inputs that made duplicate filter-chain names and emptied every node's outbound listener
        (({"name": "http", "port": 80}, {"name": "http", "port": 8080}), "spec.ports[1].name 'http' is used by two ports"),
        (({"name": "80", "port": 8080}, {"port": 80}), "spec.ports[1] (port 80) has no name"),
        (({"port": 80}, {"port": 8080}), "spec.ports[0] (port 80) has no name"),
        (({"name": "Http", "port": 80},), "spec.ports[0].name 'Http' is not a valid port name"),
        (({"name": "h" * 64, "port": 80},), "spec.ports[0].name"),
        (({"name": "http", "port": 80, "protocol": "tcp"},), "spec.ports[0].protocol 'tcp' is not one of TCP, UDP, SCTP"),
        (({"name": "http", "port": 80, "protocol": "HTTP"},), "is not one of TCP, UDP, SCTP"),
        (({"name": "http", "port": 80, "targetPort": "Web"},), "targetPort 'Web' is not a valid port name (only a-z"),
        (({"name": "http", "port": 80, "targetPort": "a-very-long-name"},), "(at most 15 characters)"),
        (({"name": "http", "port": 80, "targetPort": "a--b"},), "no '--'"),
        (({"name": "http", "port": 80, "targetPort": "-"},), "at least one letter"),
        (({"name": "http", "port": 0},), "spec.ports[].port 0 is not a port number"),
        (({"name": "a", "port": 80}, {"name": "b", "port": 80}), "port 80/TCP is listed twice"),
    ],
)
def test_service_ports_kubernetes_refuses_are_refused(ports: tuple, reason: str) -> None:
    with pytest.raises(InvalidObject) as raised:
        service_from(service(*ports))
    assert reason in str(raised.value)


def test_service_ports_kubernetes_accepts_are_accepted() -> None:
    svc = service_from(
        service(
            {"name": "80", "port": 8080, "targetPort": "web"},  # a name that looks like a number is a valid label
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 0},  # 0: defaults to the port
            {"name": "sctp", "port": 9, "protocol": "SCTP", "targetPort": "9"},
        )
    )
    assert [(p.label, p.port, p.target_port, p.protocol) for p in svc.ports] == [
        ("80", 8080, "web", "TCP"),
        ("dns", 53, 53, "UDP"),
        ("dns-tcp", 53, 53, "TCP"),
        ("sctp", 9, 9, "SCTP"),
    ]
    assert service_from(service({"port": 80})).ports[0].label == "80"  # one port may go unnamed


@pytest.mark.parametrize(
    "ports,containers,reason",
    [
        (({"containerPort": 80, "name": "web"}, {"containerPort": 81, "name": "web"}), 1, "'web' is used twice"),
        (({"containerPort": 80, "name": "Web"},), 1, "name 'Web' is not a valid port name"),
        (({"containerPort": 80, "name": "1234"},), 1, "at least one letter"),
        (({"containerPort": 80, "protocol": "http"},), 1, "protocol 'http' is not one of"),
        (({"containerPort": 70000},), 1, "containerPort 70000 is not a port number"),
    ],
)
def test_container_ports_kubernetes_refuses_are_refused(ports: tuple, containers: int, reason: str) -> None:
    with pytest.raises(InvalidObject) as raised:
        workload_from(pod(*ports, containers=containers))
    assert reason in str(raised.value)


def test_the_same_port_name_in_two_containers_is_allowed() -> None:
    """Kubernetes checks port names per container; a named targetPort then picks the first."""
    w = workload_from(pod({"containerPort": 80, "name": "web"}, containers=2))
    assert w.named_port("web") == 80 and len(w.ports) == 2


@pytest.mark.parametrize(
    "labels,reason",
    [
        ({"app": "x" * 64}, "value"),
        ({"app": "-x"}, "value '-x' is not valid"),
        ({"k" * 64: "x"}, "key"),
        ({"Bad_Prefix/app": "x"}, "its prefix must be a DNS subdomain"),
        ({"/app": "x"}, "its prefix must be"),
        ({"": "x"}, "its name must be"),
        ({"app": 1}, "must map strings to strings"),
        ({"app": "x\n"}, "value"),  # a final newline: re's "$" matched before it
        ({"app\n": "x"}, "its name must be"),
    ],
)
def test_labels_kubernetes_refuses_are_refused(labels: dict, reason: str) -> None:
    with pytest.raises(InvalidObject) as raised:
        namespace_from({"kind": "Namespace", "metadata": {"name": "n", "labels": labels}})
    assert reason in str(raised.value)
    with pytest.raises(InvalidObject):
        workload_from(pod(labels=labels))
    with pytest.raises(InvalidObject):
        service_from(service({"port": 80}, selector=labels))


def test_labels_kubernetes_accepts_are_accepted() -> None:
    labels = {"istio.io/dataplane-mode": "ambient", "app.kubernetes.io/name": "x_y.z", "empty": "", "A": "B"}
    assert dict(namespace_from({"kind": "Namespace", "metadata": {"name": "n", "labels": labels}}).labels) == labels


@pytest.mark.parametrize("meta", [{"name": "ns-0\n"}, {"name": "n", "namespace": "ns-0\n"}], ids=["name", "namespace"])
def test_a_name_with_a_final_newline_is_refused(meta: dict) -> None:
    """re's "$" matched before a final newline (a YAML block scalar's ``name: |``): "svc-0\n" was a Service's name,
    and its chains', clusters' and stats' names held the newline."""
    with pytest.raises(InvalidObject, match="not a valid"):
        service_from({**service({"port": 80}), "metadata": {"namespace": "ns", **meta}})
    with pytest.raises(InvalidObject, match="not a valid"):
        namespace_from({"kind": "Namespace", "metadata": {"name": meta.get("namespace", meta["name"])}})

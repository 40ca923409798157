"""Conversion keeps every address an object reports, of either family: choosing is the index's job
(``zpilot.model.index``), so the rule about address families lives in one place."""

from __future__ import annotations

from zpilot.kube.convert import node_from, service_from, workload_from


def test_a_dual_stack_node_keeps_both_internal_ips_in_order() -> None:
    node = node_from({"metadata": {"name": "n"}, "status": {"addresses": [
        {"type": "Hostname", "address": "n"},
        {"type": "InternalIP", "address": "fd00::5"},
        {"type": "ExternalIP", "address": "203.0.113.5"},
        {"type": "InternalIP", "address": "10.0.0.5"}]}})
    assert node.internal_ips == ("fd00::5", "10.0.0.5")
    assert node.internal_ip == "fd00::5"  # the first, as reported; the index picks the mesh's family


def test_a_dual_stack_pod_and_service_keep_both_families() -> None:
    pod = workload_from({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]},
                         "status": {"podIP": "fd00::1", "podIPs": [{"ip": "fd00::1"}, {"ip": "10.0.0.1"}]}})
    assert pod.ips == ("fd00::1", "10.0.0.1")
    svc = service_from({"metadata": {"name": "s"}, "spec": {"clusterIPs": ["10.96.0.1", "fd00::96"],
                                                            "ports": [{"port": 80}]}})
    assert svc.cluster_ips == ("10.96.0.1", "fd00::96")

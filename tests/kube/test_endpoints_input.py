"""What the converters read for endpoints: EndpointSlices (discovery.k8s.io/v1), the Service fields
that change endpoints, and node topology labels; and that the manifest source loads slices."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from zpilot.kube.convert import CONVERTERS, InvalidObject, endpoint_slice_from, node_from, service_from
from zpilot.kube.manifests import load_manifests
from zpilot.kube.store import ObjectStore, key_of
from zpilot.model import EndpointSlice, Locality, MeshIndex, SliceEndpoint, SlicePort

# The `kubernetes` Service's slice as the API server writes it (kubectl get endpointslice kubernetes -o yaml).
API_SERVER_SLICE: dict[str, Any] = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {
        "name": "kubernetes",
        "namespace": "default",
        "labels": {"kubernetes.io/service-name": "kubernetes"},
        "generation": 1,
        "resourceVersion": "200",
    },
    "addressType": "IPv4",
    "endpoints": [{"addresses": ["172.18.0.10"], "conditions": {"ready": True}}],
    "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
}


def with_changes(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(API_SERVER_SLICE)
    obj.update(changes)
    return obj


def test_the_api_servers_slice() -> None:
    assert endpoint_slice_from(API_SERVER_SLICE) == EndpointSlice(
        "kubernetes", "default", "kubernetes", "IPv4",
        endpoints=(SliceEndpoint(("172.18.0.10",), ready=True, serving=True, terminating=False),),
        ports=(SlicePort(6443, "https", "TCP"),),
    )
    assert CONVERTERS["EndpointSlice"] is endpoint_slice_from


def test_conditions_take_the_apis_defaults() -> None:
    eps = [
        {"addresses": ["10.0.0.1"]},  # nothing known: ready, serving, not terminating
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},  # serving follows ready
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True},
         "nodeName": "node-1", "zone": "europe-west1-b", "targetRef": {"kind": "Pod", "name": "x"}},
    ]
    slice_ = endpoint_slice_from(with_changes(endpoints=eps, ports=[{"name": "http"}]))
    assert [(e.ready, e.serving, e.terminating) for e in slice_.endpoints] == [
        (True, True, False), (False, False, False), (False, True, True)]
    assert (slice_.endpoints[2].node_name, slice_.endpoints[2].zone) == ("node-1", "europe-west1-b")
    assert slice_.ports == (SlicePort(None, "http", "TCP"),)  # a port with no number: the index says so


@pytest.mark.parametrize(
    "changes,reason",
    [
        ({"apiVersion": "discovery.k8s.io/v1beta1"}, "only discovery.k8s.io/v1"),
        ({"addressType": "IPX"}, "addressType 'IPX' is not one of IPv4, IPv6, FQDN"),
        ({"addressType": None}, "addressType None"),
        ({"addressType": "IPv6"}, "172.18.0.10 is not an IPv6 address"),
        ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses is missing or empty"),
        ({"endpoints": [{"addresses": ["not-an-ip"]}]}, "'not-an-ip' is not an IP address"),
        ({"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]}, "is not true or false"),
        ({"endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "Bad_Node"}]}, "is not a node name"),
        ({"endpoints": [{"addresses": ["10.0.0.1"]}] * 1001}, "has 1001 entries; at most 1000"),
        ({"endpoints": [{"addresses": ["10.0.0.1"] * 101}]}, "at most 100"),
        ({"endpoints": "10.0.0.1"}, "endpoints must be a list"),
        ({"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]}, "'a' is listed twice"),
        ({"ports": [{"name": "Not_A_Label", "port": 1}]}, "not a valid port name"),
        ({"ports": [{"name": "a", "port": 70000}]}, "70000 is not a port number"),
        ({"ports": [{"name": "a", "port": 1, "protocol": "ICMP"}]}, "'ICMP' is not one of TCP, UDP, SCTP"),
        ({"metadata": {"name": "x", "labels": {"kubernetes.io/service-name": "Web_Server"}}}, "is not a Service name"),
    ],
)
def test_invalid_slices_are_refused_with_a_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidObject) as raised:
        endpoint_slice_from(with_changes(**changes))
    assert reason in str(raised.value)
    assert len(str(raised.value)) < 200  # bounded, whatever the client sent


def test_messages_quote_long_values_briefly() -> None:
    with pytest.raises(InvalidObject) as raised:
        endpoint_slice_from(with_changes(addressType="x" * 100_000))
    assert len(str(raised.value)) < 120


def test_an_fqdn_slice_keeps_its_names() -> None:
    slice_ = endpoint_slice_from(with_changes(addressType="FQDN", endpoints=[{"addresses": ["db.example.com"]}]))
    assert slice_.endpoints[0].addresses == ("db.example.com",)


def service(**spec: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": "web", "namespace": "mesh"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}], **spec}}


def test_service_fields_that_change_endpoints() -> None:
    plain = service_from(service())
    assert (plain.publish_not_ready, plain.node_local) == (False, False)
    svc = service_from(service(publishNotReadyAddresses=True, internalTrafficPolicy="Local"))
    assert (svc.publish_not_ready, svc.node_local) == (True, True)
    assert service_from(service(internalTrafficPolicy="Cluster")).node_local is False
    with pytest.raises(InvalidObject, match="internalTrafficPolicy 'Nearby' is neither Cluster nor Local"):
        service_from(service(internalTrafficPolicy="Nearby"))
    with pytest.raises(InvalidObject, match="publishNotReadyAddresses 'yes' is not true or false"):
        service_from(service(publishNotReadyAddresses="yes"))


def test_node_topology_labels_are_its_locality() -> None:
    labels = {"topology.kubernetes.io/region": "europe-west1", "topology.kubernetes.io/zone": "europe-west1-b"}
    node = node_from({"kind": "Node", "metadata": {"name": "n1", "labels": labels}})
    assert node.locality == Locality("europe-west1", "europe-west1-b")
    assert node_from({"kind": "Node", "metadata": {"name": "n2"}}).locality == Locality()


def test_manifests_load_slices_into_the_store_and_the_index_uses_them(tmp_path: Path) -> None:
    import yaml

    kubernetes = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
                  "spec": {"clusterIP": "10.8.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}}
    legacy = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"}}
    (tmp_path / "api.yaml").write_text(yaml.safe_dump_all([kubernetes, API_SERVER_SLICE, legacy]))
    loaded = load_manifests(tmp_path)
    assert [str(p) for p in loaded.problems] == []  # v1 Endpoints are skipped quietly: slices mirror them
    [slice_] = loaded.cluster.endpoint_slices
    assert key_of(slice_) == ("EndpointSlice", "default", "kubernetes")
    index = MeshIndex.build(loaded.cluster, loaded.problems)
    assert [e.authority for e in index.destination_endpoints("10.8.0.1", 443)] == ["172.18.0.10:6443"]

    store = ObjectStore()
    assert store.put(slice_) and not store.put(slice_)
    assert store.keys("EndpointSlice") == [("EndpointSlice", "default", "kubernetes")]
    assert store.remove(("EndpointSlice", "default", "kubernetes")) and store.snapshot().endpoint_slices == ()


def test_a_bad_slice_in_a_manifest_is_reported_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: s, namespace: default}\naddressType: IPv4\nendpoints: [{addresses: [fe80::1]}]\n"
    )
    loaded = load_manifests(tmp_path)
    [problem] = [str(p) for p in loaded.problems]
    assert "s.yaml doc 0 (EndpointSlice default/s): endpoints[0].addresses[] fe80::1 is not an IPv4 address" in problem
    assert loaded.cluster.endpoint_slices == ()

"""The debug API over HTTP: readiness, config dump (keys redacted), registry, connections, docs."""

from __future__ import annotations

import base64

import httpx

from zpilot.runtime.control_plane import ControlPlane, DebugOptions
from zpilot.xds.order import CLUSTER_TYPE
from zpilot.xds.security import XdsSecurity
from zpilot.xds.server import ServerOptions

from .ads_client import AdsClient
from .envoy_util import NODE_A


async def get(port: int, path: str, **params) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}", params=params)


async def test_not_ready_until_a_model_is_loaded(manifests):
    from .conftest import load_index, per_node_translate

    plane = ControlPlane(xds_security=XdsSecurity.insecure(), server_options=ServerOptions(host="127.0.0.1", port=0),
                         debug_options=DebugOptions(port=0), translate=per_node_translate({}))
    await plane.start()
    try:
        assert (await get(plane.debug_port, "/healthz/ready")).status_code == 503
        assert (await get(plane.debug_port, "/debug/registryz")).status_code == 503
        await plane.update(load_index(manifests))
        assert (await get(plane.debug_port, "/healthz/ready")).status_code == 200
    finally:
        await plane.stop()


async def test_endpoints(make_plane):
    plane = await make_plane()
    port = plane.debug_port
    assert (await get(port, "/healthz/ready")).json() == {"ready": True}

    dump = await get(port, "/debug/config_dump", node=NODE_A)
    assert dump.status_code == 200
    kinds = [c["@type"].rsplit(".", 1)[-1] for c in dump.json()["configs"]]
    assert kinds == ["ClustersConfigDump", "ListenersConfigDump", "SecretsConfigDump", "EndpointsConfigDump"]
    secrets = dump.json()["configs"][2]["dynamic_active_secrets"]
    keys = [s["secret"]["tls_certificate"]["private_key"] for s in secrets if "tls_certificate" in s["secret"]]
    assert keys and all(base64.b64decode(k["inline_bytes"]) == b"[redacted]" for k in keys)
    assert "PRIVATE KEY" not in dump.text and "PRIVATE KEY" not in base64.b64decode(
        "".join(k["inline_bytes"] for k in keys)).decode()

    missing = await get(port, "/debug/config_dump", node="no-such-node")
    assert missing.status_code == 404 and NODE_A in missing.json()["detail"]
    assert (await get(port, "/debug/config_dump")).status_code == 422  # node is required

    registry = (await get(port, "/debug/registryz")).json()
    assert {n["name"] for n in registry["nodes"]} >= {NODE_A}
    sleep = next(w for w in registry["workloads"] if w["name"].startswith("sleep-"))
    assert sleep["meshed"] and sleep["ips"] == ["10.4.4.19"]
    assert any(p["subject"].startswith("Pod kube-system/") for p in registry["problems"])

    client = AdsClient(plane.xds_port)
    try:
        client.request(CLUSTER_TYPE, node_name=NODE_A)
        await client.recv()
        [conn] = (await get(port, "/debug/connections")).json()
        assert conn["node"] == NODE_A and conn["mode"] == "sotw" and conn["types"] == ["CDS"]
    finally:
        await client.close()

    # Metrics have a port of their own (test_metrics_server.py); the debug API does not serve them.
    assert (await get(port, "/metrics")).status_code == 404

    openapi = (await get(port, "/openapi.json")).json()
    assert {"/debug/config_dump", "/debug/syncz", "/debug/registryz", "/debug/connections",
            "/healthz/ready"} <= set(openapi["paths"])
    assert "/metrics" not in openapi["paths"]
    assert (await get(port, "/docs")).status_code == 200


async def test_registryz_shows_endpoint_slices_and_names_a_service_without_endpoints(make_plane, manifests):
    (manifests / "api.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: kubernetes, namespace: default}\n"
        "spec: {clusterIP: 10.8.0.1, ports: [{name: https, port: 443, targetPort: 6443}]}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: unbacked, namespace: default}\n"
        "spec: {clusterIP: 10.8.0.99, ports: [{name: http, port: 80}]}\n---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: kubernetes-x1, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}\n"
        "addressType: IPv4\nendpoints: [{addresses: [10.168.15.2]}]\nports: [{name: https, port: 6443}]\n"
    )
    plane = await make_plane()
    registry = (await get(plane.debug_port, "/debug/registryz")).json()
    [slice_] = registry["endpoint_slices"]
    assert slice_["service_name"] == "kubernetes" and slice_["endpoints"][0]["addresses"] == ["10.168.15.2"]
    unbacked = [p for p in registry["problems"] if p["subject"] == "Service default/unbacked"]
    assert [p["severity"] for p in unbacked] == ["warning"] and "has no endpoints" in unbacked[0]["reason"]
    assert not any(p["subject"] == "Service default/kubernetes" for p in registry["problems"])


async def test_policyz_lists_each_workloads_effective_policies(make_plane, manifests):
    (manifests / "policy.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: productpage-from-sleep, namespace: default}\n"
        "spec: {selector: {matchLabels: {app: productpage}}, rules: [{from: [{source: {principals: [x]}}]}]}\n---\n"
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\n"
        "spec: {mtls: {mode: STRICT}}\n"
    )
    plane = await make_plane()
    everyone = (await get(plane.debug_port, "/debug/policyz")).json()
    productpage = next(w for w in everyone if w["workload"].startswith("default/productpage-"))
    assert productpage["allow"] == ["default/productpage-from-sleep"] and productpage["default"] == "deny"
    assert productpage["plaintext"] == {"mode": "STRICT", "ports": {}, "decided_by": ["istio-system/default"]}
    sleep = next(w for w in everyone if w["workload"].startswith("default/sleep-"))
    assert sleep["allow"] == [] and sleep["default"] == "allow" and sleep["plaintext"]["mode"] == "STRICT"
    on_a = (await get(plane.debug_port, "/debug/policyz", node=NODE_A)).json()
    assert {w["node"] for w in on_a} == {NODE_A} and not any(w["workload"].startswith("default/productpage-") for w in on_a)
    registry = (await get(plane.debug_port, "/debug/registryz")).json()
    assert [p["name"] for p in registry["authorization_policies"]] == ["productpage-from-sleep"]

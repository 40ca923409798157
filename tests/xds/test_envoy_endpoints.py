"""A real Envoy holds the endpoints a real cluster has exactly as rendered: localities grouped and
ordered as Envoy keeps them, the API server as a plain endpoint, a hostNetwork pod, and no chain
for a VIP without endpoints."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..layouts import service_chain
from .conftest import load_index
from .e2e_util import wait_no_diff, wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, NODE_B

pytestmark = NEEDS_ENVOY_AS_ROOT

ZONES = {NODE_A: "us-west2-a", NODE_B: "us-west2-b"}

EXTRA = """
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec:
  clusterIP: 10.8.0.1
  ports: [{name: https, port: 443, targetPort: 6443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
addressType: IPv4
endpoints: [{addresses: [10.168.15.2], conditions: {ready: true}}]
ports: [{name: https, port: 6443, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: unbacked, namespace: default}
spec:
  clusterIP: 10.8.0.99
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: node-exporter-c1da, namespace: default, uid: uid-node-exporter, labels: {app: node-exporter}}
spec:
  nodeName: gke-jimmy-cluster-default-pool-d5041909-c1da
  hostNetwork: true
  containers: [{name: c, image: i, ports: [{name: metrics, containerPort: 9100}]}]
status: {phase: Running, podIP: 10.168.15.224, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: node-exporter, namespace: default}
spec:
  clusterIP: 10.8.0.100
  selector: {app: node-exporter}
  ports: [{name: metrics, port: 9100, targetPort: metrics}]
"""


def add_cluster_facts(manifests: Path) -> None:
    """The article's nodes in two zones of one region, and the extra objects above."""
    path = manifests / "cluster.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if doc and doc.get("kind") == "Node":
            doc["metadata"]["labels"].update(
                {"topology.kubernetes.io/region": "us-west2", "topology.kubernetes.io/zone": ZONES[doc["metadata"]["name"]]}
            )
    path.write_text(yaml.safe_dump_all(docs))
    (manifests / "endpoints.yaml").write_text(EXTRA)


async def test_envoy_holds_localities_and_plain_endpoints_as_rendered(make_plane, envoys, manifests, layout):
    add_cluster_facts(manifests)
    problems = [str(p) for p in load_index(manifests).problems]
    assert any("Service default/unbacked: port http has no endpoints" in p for p in problems), problems
    plane = await make_plane(layout=layout)
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    conn = await wait_synced(plane.debug_port, NODE_A)
    assert all(t["nack_count"] == 0 for t in conn["types"])
    await wait_no_diff(plane.debug_port, envoy)  # Envoy's own dump, rebuilt from its host sets, equals ours

    dump = await envoy.config_dump()
    endpoints = {
        e["endpoint_config"]["cluster_name"]: e["endpoint_config"]
        for part in dump["configs"] if part["@type"].endswith("EndpointsConfigDump")
        for e in part.get("dynamic_endpoint_configs", [])
    }
    reviews = endpoints[service_chain(layout, "http_reviews.default.svc.cluster.local")]
    assert [g["locality"] for g in reviews["endpoints"]] == [{"region": "us-west2", "zone": z} for z in ("us-west2-a", "us-west2-b")]
    api = endpoints[service_chain(layout, "https_kubernetes.default.svc.cluster.local")]
    [[api_server]] = [g["lb_endpoints"] for g in api["endpoints"]]
    assert api_server["endpoint"]["address"]["socket_address"] == {"address": "10.168.15.2", "port_value": 6443}
    exporter = endpoints[service_chain(layout, "metrics_node-exporter.default.svc.cluster.local")]
    [group] = exporter["endpoints"]
    assert group["locality"] == {"region": "us-west2", "zone": "us-west2-b"}
    assert group["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] == "10.168.15.224"
    assert not any("unbacked" in name for name in endpoints)
    assert "10.8.0.99" not in str(dump)  # no chain and no match: the VIP passes through to kube-proxy

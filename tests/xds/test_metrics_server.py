"""/metrics on its own listener: what a scraper gets, where, and that each plane has its own registry."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from zpilot.xds.metrics import Metrics
from zpilot.xds.metrics_server import MetricsOptions, MetricsServer
from zpilot.xds.order import CLUSTER_TYPE

from .ads_client import AdsClient
from .envoy_util import NODE_A

#: Every metric the control plane exports (the docs' table lists the same).
EXPORTED = {
    "zpilot_xds_streams": "gauge",
    "zpilot_xds_streams_opened": "counter",
    "zpilot_xds_requests": "counter",
    "zpilot_xds_responses": "counter",
    "zpilot_xds_response_bytes": "counter",
    "zpilot_xds_push_latency_seconds": "histogram",
    "zpilot_xds_acks": "counter",
    "zpilot_xds_nacks": "counter",
    "zpilot_xds_stale_requests": "counter",
    "zpilot_xds_rejected_requests": "counter",
    "zpilot_xds_unserved_resource_names": "counter",
    "zpilot_xds_unknown_node_streams": "counter",
    "zpilot_xds_resources": "gauge",
    "zpilot_snapshot_updates": "counter",
    "zpilot_snapshot_generation_seconds": "histogram",
    "zpilot_model_updates": "counter",
    "zpilot_producer_errors": "counter",
}


async def get(url: str, **kw) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.get(url, **kw)


async def test_a_scraper_gets_every_metric_on_the_metrics_port(make_plane):
    plane = await make_plane()
    assert plane.metrics_server is not None and plane.metrics_server.port not in (None, plane.debug_port)
    client = AdsClient(plane.xds_port)
    try:
        client.request(CLUSTER_TYPE, node_name=NODE_A)
        r = await client.recv()
        client.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)
        url = f"http://127.0.0.1:{plane.metrics_server.port}/metrics"

        async def acked() -> httpx.Response:
            response = await get(url)
            assert 'zpilot_xds_acks_total{type="CDS"} 1.0' in response.text
            return response

        from .envoy_util import eventually

        response = await eventually(acked)
    finally:
        await client.close()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {name: families[name].type for name in EXPORTED if name in families} == EXPORTED
    assert 'zpilot_xds_streams{mode="sotw"} 1.0' in response.text
    assert 'zpilot_xds_resources{type="LDS"}' in response.text
    assert "PRIVATE KEY" not in response.text and NODE_A not in response.text  # no node names as labels
    # OpenMetrics for scrapers that ask for it; 404 anywhere else than /metrics.
    om = await get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")
    assert (await get(url.replace("/metrics", "/debug/syncz"))).status_code == 404


async def test_each_plane_counts_only_its_own_streams(make_plane):
    first, second = await make_plane(), await make_plane()
    client = AdsClient(first.xds_port)
    try:
        client.request(CLUSTER_TYPE, node_name=NODE_A)
        await client.recv()
    finally:
        await client.close()
    assert first.metrics.value("zpilot_xds_responses_total", type="CDS", mode="sotw") == 1
    assert second.metrics.value("zpilot_xds_responses_total", type="CDS", mode="sotw") == 0
    text = (await get(f"http://127.0.0.1:{second.metrics_server.port}/metrics")).text
    assert 'zpilot_xds_responses_total{mode="sotw",type="CDS"}' not in text


async def test_a_taken_port_is_a_clear_error_and_stop_frees_the_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(Metrics(), MetricsOptions(host="127.0.0.1", port=port))
        with pytest.raises(OSError, match=f"cannot bind the metrics server to 127.0.0.1:{port}: Address already in use"):
            await server.start()
    server = MetricsServer(Metrics(), MetricsOptions(host="127.0.0.1", port=port))
    await server.start()
    assert server.port == port and server.url == f"http://127.0.0.1:{port}/metrics"
    assert (await get(server.url)).status_code == 200
    await server.stop()
    with pytest.raises(httpx.ConnectError):
        await get(server.url)
    with socket.socket() as again:  # the port is really free again
        again.bind(("127.0.0.1", port))


async def test_unix_socket_replaces_a_stale_file_and_refuses_a_live_one(tmp_path):
    path = tmp_path / "metrics.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # a socket file left behind by a killed run
        dead.bind(str(path))
    server = MetricsServer(Metrics(), MetricsOptions(host=f"unix:{path}"))
    await server.start()
    try:
        assert server.port is None and server.url == f"http+unix:{path}/metrics"
        other = MetricsServer(Metrics(), MetricsOptions(host=f"unix:{path}"))
        with pytest.raises(OSError, match=f"cannot bind the metrics server to unix:{path}: a server already listens"):
            await other.start()
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            response = await client.get("http://zpilot/metrics")
        assert response.status_code == 200 and "zpilot_xds_streams" in response.text
    finally:
        await server.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket"):
        await MetricsServer(Metrics(), MetricsOptions(host=f"unix:{path}")).start()

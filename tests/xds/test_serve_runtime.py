"""``zpilot serve``'s runtime with a source swapped in: the seam a Kubernetes watch plugs into."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from zpilot.certs.xds_credentials import issue_node_credential
from zpilot.model.index import MeshIndex
from zpilot.runtime.control_plane import DebugOptions
from zpilot.runtime.serve import ServeRuntime, ServeSettings
from zpilot.translators import TranslateOptions
from zpilot.xds.metrics_server import MetricsOptions
from zpilot.xds.order import CLUSTER_TYPE
from zpilot.xds.server import ServerOptions

from ..fake_source import QueueSource
from .ads_client import AdsClient, tls_credentials
from .conftest import load_index
from .envoy_util import NODE_A, eventually, random_loopback

#: productpage's service cluster, whatever the layout (the article's names it after sleep's identity too)
PRODUCTPAGE = "http_productpage.default.svc.cluster.local"


def cluster_names(response) -> set[str]:
    return {Cluster.FromString(r.value).name for r in response.resources}


def has_productpage(names: set[str]) -> bool:
    return any(PRODUCTPAGE in name for name in names)


def without_service(index: MeshIndex, name: str) -> MeshIndex:
    cluster = index.cluster
    return MeshIndex.build(dataclasses.replace(cluster, services=tuple(s for s in cluster.services if s.name != name)))


async def ready_status(port: int) -> int:
    async with httpx.AsyncClient(timeout=2.0) as http:
        return (await http.get(f"http://127.0.0.1:{port}/healthz/ready")).status_code


async def test_serve_runs_on_any_source_and_is_ready_only_once_its_first_model_is_served(manifests):
    source = QueueSource()
    settings = ServeSettings(xds=ServerOptions(host="127.0.0.1", port=0), debug=DebugOptions(port=0),
                             metrics=MetricsOptions(host="127.0.0.1", port=0),
                             translate=TranslateOptions(bind_address=random_loopback()))
    runtime = ServeRuntime(settings, source)
    stop = asyncio.Event()
    run = asyncio.create_task(runtime.run(stop))
    client = None
    try:
        async def debug_up() -> bool:
            return runtime.plane is not None and runtime.plane.debug_port is not None

        await eventually(debug_up, timeout=10)
        plane = runtime.plane
        assert plane is not None
        await asyncio.sleep(0.2)
        assert await ready_status(plane.debug_port) == 503
        assert plane.xds_port is None, "ADS listened before there was a model to serve"

        source.put(load_index(manifests))

        async def ready() -> bool:
            return await ready_status(plane.debug_port) == 200

        await eventually(ready, timeout=10)
        # ADS is mutual TLS by default: the node proves itself with a certificate of the plane's CA
        ca = plane.identities.ca
        client = AdsClient(plane.xds_port, credentials=tls_credentials(
            ca.trust_bundle_pem(), issue_node_credential(ca, NODE_A)))
        client.request(CLUSTER_TYPE, node_name=NODE_A)
        first = await client.recv()
        assert has_productpage(cluster_names(first))
        client.request(CLUSTER_TYPE, node_name=NODE_A, nonce=first.nonce, version=first.version_info)

        source.put(without_service(load_index(manifests), "productpage"))
        pushed = await client.recv()
        assert not has_productpage(cluster_names(pushed)) and cluster_names(pushed) < cluster_names(first)
    finally:
        if client is not None:
            await client.close()
        stop.set()
        assert await asyncio.wait_for(run, 10) == 0
    assert (source.runs, source.closed) == (1, 1)


async def test_stopped_before_the_first_model_exits_cleanly():
    source = QueueSource()
    runtime = ServeRuntime(ServeSettings(xds=ServerOptions(host="127.0.0.1", port=0), debug=DebugOptions(port=0),
                                         metrics=None), source)
    stop = asyncio.Event()
    run = asyncio.create_task(runtime.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    assert await asyncio.wait_for(run, 10) == 0
    assert source.closed == 1

"""``zpilot serve --kubeconfig`` as users run it: a subprocess reading the in-process API server, real Envoys.

The cluster is changed through the API with the real kubernetes-asyncio client, as kubectl and the kubelet
would (a Pod is created, then its status written through ``/status``); what counts is what the Envoys hold
(``config_dump``) and that it is exactly what zpilot intends (``zpilot diff``'s normalization, zero diff).
A server that cannot read the cluster must say which server and why, keep retrying, and never serve.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client

from tests.kube.apiserver import ApiServer, seed_article
from tests.kube.apiserver.fixtures import api_client
from tests.kube.apiserver.objects import make_pod, make_service, service_port
from zpilot.kube.api_resources import control_plane_watches

from .e2e_util import wait_no_diff, wait_synced
from .envoy_util import (NEEDS_ENVOY_AS_ROOT, NODE_A, NODE_B, die_with_parent, eventually, free_port, random_loopback,
                         stop_process_group)

WEB_IPS = ["10.4.3.60", "10.4.4.61", "10.4.3.62"]
#: What serve watches, as its log lines name each (``pods``, ``endpointslices.discovery.k8s.io``...).
WATCHED = {str(w) for w in control_plane_watches()}


class Serve:
    """A ``zpilot serve`` subprocess on free ports, reading the cluster a kubeconfig names, its CA in
    ``workdir/ca`` (``bootstrap``: what ``zpilot bootstrap`` is given for the node credentials)."""

    def __init__(self, workdir: Path, kubeconfig: Path, layout: str | None = None) -> None:
        self.xds_port, self.debug_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log = workdir / "serve.log"
        self.bootstrap = ("--ca-dir", str(workdir / "ca"))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zpilot.cli", "serve", "--kubeconfig", str(kubeconfig), *self.bootstrap,
                 "--xds-address", "127.0.0.1", "--xds-port", str(self.xds_port), "--debug-port", str(self.debug_port),
                 "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                 "--bind-address", random_loopback(), "--debounce-quiet", "0.05",
                 *(["--layout", layout] if layout else [])],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
                env={k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")},
            )

    def stop(self) -> None:
        stop_process_group(self.proc)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready_status(self) -> int | None:
        """/healthz/ready's status, None while the debug API is not up."""
        if self.proc.poll() is not None:
            raise AssertionError(f"zpilot serve exited {self.proc.returncode}:\n{self.text()[-3000:]}")
        try:
            async with httpx.AsyncClient(timeout=1.0) as c:
                return (await c.get(f"http://127.0.0.1:{self.debug_port}/healthz/ready")).status_code
        except httpx.HTTPError:
            return None

    async def wait_ready(self) -> None:
        async def ready():
            return await self.ready_status() == 200

        await eventually(ready, 30)

    def ads_listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.xds_port)) == 0


@pytest.fixture
def serve_against(tmp_path):
    started: list[Serve] = []

    def start(kubeconfig: Path, layout: str | None = None) -> Serve:
        serve = Serve(tmp_path, kubeconfig, layout)
        started.append(serve)
        return serve

    yield start
    for serve in started:
        serve.stop()


def load_assignments(dump: dict[str, Any]) -> dict[str, list[str]]:
    """Envoy's EDS, from its config_dump: cluster name -> endpoint addresses."""
    out: dict[str, list[str]] = {}
    for config in dump["configs"]:
        if config.get("@type", "").endswith("EndpointsConfigDump"):
            for entry in config.get("dynamic_endpoint_configs", []):
                cla = entry["endpoint_config"]
                out[cla["cluster_name"]] = [
                    _ip(lb["endpoint"]["address"])
                    for group in cla.get("endpoints", []) for lb in group.get("lb_endpoints", [])
                ]
    return out


def _ip(address: dict[str, Any]) -> str:
    """A plain endpoint's IP, or a tunnelled one's (its internal address names ``ip:port``; the linear
    layout's ``outbound_pod_internal_to_<peer>``, which names only its internal listener, has none: "")."""
    if "socket_address" in address:
        return address["socket_address"]["address"]
    return address["envoy_internal_address"].get("endpoint_id", "").rpartition(":")[0]


def web_endpoints(dump: dict[str, Any]) -> set[str]:
    """The addresses of every endpoint of the ``web`` service's clusters, as Envoy holds them."""
    return {ip for name, ips in load_assignments(dump).items() if "web.default" in name for ip in ips}


def running_status(ip: str, node: str) -> dict[str, Any]:
    return make_pod("x", ip=ip, node=node)["status"]


def needs_envoy(test):
    for mark in NEEDS_ENVOY_AS_ROOT:
        test = mark(test)
    return test


@needs_envoy
async def test_pods_and_services_created_through_the_api_reach_envoy(apiserver: ApiServer, serve_against, envoys,
                                                                    layout):
    """With each outbound layout (the ``layout`` fixture): their service clusters and endpoints differ."""
    seed_article(apiserver)
    serve = serve_against(apiserver.kubeconfig_path, layout)
    await serve.wait_ready()
    a, b = envoys(NODE_A, serve.xds_port, cli=serve.bootstrap), envoys(NODE_B, serve.xds_port, cli=serve.bootstrap)
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    for envoy in (a, b):
        await wait_synced(serve.debug_port, envoy.node)
        await wait_no_diff(serve.debug_port, envoy)
    assert not web_endpoints(await a.config_dump())

    async with api_client(apiserver) as api:
        v1 = client.CoreV1Api(api)
        service = await v1.create_namespaced_service(
            "default", make_service("web", selector={"app": "web"}, ports=[service_port(80, 8080, "http")]))
        vip = service.spec.cluster_ip

        async def create_pod(name: str, ip: str, node: str) -> None:
            """As a workload controller and the kubelet would: the pod, then its status once running."""
            await v1.create_namespaced_pod("default", make_pod(name, node=node, labels={"app": "web"}, ports=[8080],
                                                               phase="Pending"))
            await v1.patch_namespaced_pod_status(name, "default", {"status": running_status(ip, node)})

        await create_pod("web-1", WEB_IPS[0], NODE_B)

        async def one_endpoint():
            dump = await a.config_dump()
            return vip in str(dump) and web_endpoints(dump) == {WEB_IPS[0]}

        await eventually(one_endpoint, 15)
        for envoy in (a, b):
            await wait_synced(serve.debug_port, envoy.node)
            await wait_no_diff(serve.debug_port, envoy)

        # scaled to 3
        await create_pod("web-2", WEB_IPS[1], NODE_A)
        await create_pod("web-3", WEB_IPS[2], NODE_B)

        async def three_endpoints():
            dumps = await asyncio.gather(a.config_dump(), b.config_dump())
            return all(web_endpoints(d) == set(WEB_IPS) for d in dumps)

        await eventually(three_endpoints, 15)
        clusters = {name: ips for name, ips in load_assignments(await a.config_dump()).items() if "web.default" in name}
        assert clusters and all(sorted(ips) == sorted(WEB_IPS) for ips in clusters.values()), clusters
        for envoy in (a, b):
            await wait_synced(serve.debug_port, envoy.node)
            await wait_no_diff(serve.debug_port, envoy)

        # deleted: the endpoints go, then the service's VIP
        for name in ("web-1", "web-2", "web-3"):
            await v1.delete_namespaced_pod(name, "default")

        async def no_endpoints():
            dumps = await asyncio.gather(a.config_dump(), b.config_dump())
            return all(not web_endpoints(d) for d in dumps)

        await eventually(no_endpoints, 15)
        await v1.delete_namespaced_service("web", "default")

        async def no_vip():
            dumps = await asyncio.gather(a.config_dump(), b.config_dump())
            return all(vip not in str(d) for d in dumps)

        await eventually(no_vip, 15)
        for envoy in (a, b):
            await wait_synced(serve.debug_port, envoy.node)
            await wait_no_diff(serve.debug_port, envoy)


async def not_serving_until(serve: Serve, done, timeout: float = 30.0) -> None:
    """Until ``done()`` (at least 2 s): the debug API says not ready and ADS does not even listen (so nothing
    is pushed)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen_debug_api = False
    while not (seen_debug_api and loop.time() - start >= 2.0 and done()):
        assert loop.time() - start < timeout, "condition not met"
        status = await serve.ready_status()
        assert status in (None, 503), status
        seen_debug_api = seen_debug_api or status == 503
        assert not serve.ads_listening()
        await asyncio.sleep(0.1)


async def test_an_unreachable_api_server_is_named_retried_and_nothing_is_served_until_it_answers(
        apiserver: ApiServer, serve_against):
    seed_article(apiserver)
    apiserver.stop()  # its port now refuses connections
    serve = serve_against(apiserver.kubeconfig_path)
    await not_serving_until(serve, lambda: "cannot connect" in serve.text())
    await not_serving_until(serve, lambda: True)  # 2 s more: retries at 0.25-0.5 s, then 0.5-1 s later
    refused = [line for line in serve.text().splitlines() if "cannot connect" in line]
    assert refused and all(apiserver.url in line and "Connection refused" in line and "retrying in" in line
                           for line in refused), serve.text()[-3000:]
    assert len(refused) <= len(WATCHED)  # once per resource, not once per attempt
    apiserver.start()  # the same port: the retries find it
    await serve.wait_ready()
    recovered = re.findall(r": (?:listing|discovering \S+ for) (\S+): working again after (\d+) failed attempts",
                           serve.text())
    assert {kind for kind, _ in recovered} == WATCHED
    assert all(int(attempts) >= 2 for _, attempts in recovered), recovered
    assert serve.ads_listening()


async def test_an_unauthorized_client_is_named_retried_with_backoff_and_never_served(
        apiserver: ApiServer, serve_against, tmp_path):
    seed_article(apiserver)
    serve = serve_against(apiserver.write_kubeconfig(tmp_path / "stale", token="revoked-token"))

    def attempts() -> list:
        return [r for r in apiserver.requests if r.verb == "list" and r.resource == "pods"]

    await not_serving_until(serve, lambda: len(attempts()) >= 4)
    lines = [line for line in serve.text().splitlines() if "401 Unauthorized" in line]
    assert lines and all(apiserver.url in line for line in lines), serve.text()[-3000:]
    assert len(lines) <= len(WATCHED)  # once per resource, not once per attempt
    tried = attempts()
    assert all(r.status == 401 for r in tried)
    gaps = [later.time - earlier.time for earlier, later in zip(tried, tried[1:])]
    assert gaps[2] >= 1.0  # backing off: the third pause is drawn from [1, 2] s (0.5 s doubling, jittered)

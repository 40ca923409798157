"""``zpilot serve`` as users run it: a subprocess watching a manifest directory, real Envoys
bootstrapped by ``zpilot bootstrap`` from the same CA directory (ADS over mutual TLS)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from .e2e_util import debug_json, wait_no_diff, wait_synced, zpilot_diff_cli
from .envoy_util import (NEEDS_ENVOY_AS_ROOT, NODE_A, NODE_B, die_with_parent, eventually, free_port, random_loopback,
                         stop_process_group)

pytestmark = NEEDS_ENVOY_AS_ROOT

DEBOUNCE_QUIET = 0.1

NEW_POD = textwrap.dedent(
    f"""\
    apiVersion: v1
    kind: Pod
    metadata:
      name: productpage-v1-5586c4d4ff-zz9kq
      namespace: default
      uid: 0b6d4a4e-4a0e-4f57-9a55-5f7f2c7b1d11
      labels: {{app: productpage, version: v1}}
      creationTimestamp: '2022-11-08T07:00:00Z'
    spec:
      serviceAccountName: bookinfo-productpage
      nodeName: {NODE_B}
      containers:
      - name: productpage
        image: docker.io/istio/examples-bookinfo-productpage-v1
        ports: [{{containerPort: 9080, protocol: TCP}}]
    status:
      phase: Running
      podIP: 10.4.3.99
      podIPs: [{{ip: 10.4.3.99}}]
      conditions: [{{type: Ready, status: 'True'}}]
    """
)

# A pod of a namespace outside the mesh: part of the model, but no node's config changes.
UNMESHED_POD = NEW_POD.replace("productpage-v1-5586c4d4ff-zz9kq", "outsider-1").replace(
    "namespace: default", "namespace: legacy").replace("10.4.3.99", "10.4.3.98").replace(
    "0b6d4a4e-4a0e-4f57-9a55-5f7f2c7b1d11", "0b6d4a4e-4a0e-4f57-9a55-5f7f2c7b1d12")


NEW_NODE = """\
apiVersion: v1
kind: Node
metadata:
  name: gke-jimmy-cluster-default-pool-d5041909-new1
status:
  addresses:
  - {type: InternalIP, address: 10.168.15.230}
"""


@pytest.fixture
def serve(manifests: Path, tmp_path: Path, layout: str):
    """Start ``zpilot serve --layout LAYOUT`` on free ports (each outbound layout: the ``layout``
    fixture), its CA in ``ca``; SIGTERM (then SIGKILL) at teardown."""
    xds_port, debug_port, metrics_port = free_port(), free_port(), free_port()
    log = tmp_path / "serve.log"
    ca_dir = tmp_path / "ca"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zpilot.cli", "serve", "--manifests", str(manifests), "--ca-dir", str(ca_dir),
             "--xds-address", "127.0.0.1", "--xds-port", str(xds_port), "--debug-port", str(debug_port),
             "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
             "--bind-address", random_loopback(), "--debounce-quiet", str(DEBOUNCE_QUIET), "--layout", layout],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
    info = {"proc": proc, "xds_port": xds_port, "debug_port": debug_port, "metrics_port": metrics_port, "log": log,
            "bootstrap": ("--ca-dir", str(ca_dir))}
    yield info
    stop_process_group(proc)


async def wait_serving(serve) -> None:
    async def ready():
        if serve["proc"].poll() is not None:
            raise RuntimeError(f"zpilot serve exited {serve['proc'].returncode}:\n{serve['log'].read_text()}")
        try:
            async with httpx.AsyncClient(timeout=1.0) as c:
                return (await c.get(f"http://127.0.0.1:{serve['debug_port']}/healthz/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(ready, 20)


def endpoint_addresses(dump: dict) -> set[str]:
    text = str(dump)
    return {ip for ip in ("10.4.3.99", "10.4.3.98") if ip in text}


def sent_counts(syncz: list[dict]) -> dict[tuple[str, str], int]:
    return {(c["node"], t["type"]): t["sent_count"] for c in syncz for t in c["types"]}


async def test_serve_pushes_manifest_changes_to_envoys(serve, manifests, envoys):
    await wait_serving(serve)
    a = envoys(NODE_A, serve["xds_port"], cli=serve["bootstrap"])
    b = envoys(NODE_B, serve["xds_port"], cli=serve["bootstrap"])
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    port = serve["debug_port"]
    for envoy in (a, b):
        await wait_synced(port, envoy.node)
        await wait_no_diff(port, envoy)
        result = await zpilot_diff_cli(port, envoy)
        assert result.returncode == 0, result.stdout + result.stderr

    # Add a productpage replica on node B: both nodes' Envoys must have it within debounce + 1 s.
    http = httpx.AsyncClient(timeout=2.0)

    async def dump_text(envoy) -> str:
        return (await http.get(f"{envoy.admin}/config_dump?include_eds")).text

    started = time.monotonic()
    (manifests / "new-pod.yaml").write_text(NEW_POD)

    async def both_have_it():
        dumps = await asyncio.gather(dump_text(a), dump_text(b))
        return all("10.4.3.99" in d for d in dumps)

    try:
        await eventually(both_have_it, timeout=DEBOUNCE_QUIET + 1.0, interval=0.01)
    finally:
        await http.aclose()
    took = time.monotonic() - started
    for envoy in (a, b):
        await wait_synced(port, envoy.node)
        await wait_no_diff(port, envoy)

    # Remove it again: gone from both.
    (manifests / "new-pod.yaml").unlink()

    async def both_lost_it():
        dumps = await asyncio.gather(a.config_dump(), b.config_dump())
        return all("10.4.3.99" not in endpoint_addresses(d) for d in dumps)

    await eventually(both_lost_it, timeout=DEBOUNCE_QUIET + 1.0, interval=0.02)
    for envoy in (a, b):
        await wait_synced(port, envoy.node)
        await wait_no_diff(port, envoy)

    # A pod no node's config depends on: the model takes it, no node is pushed.
    before = sent_counts(await debug_json(port, "/debug/syncz"))
    metrics_port = serve["metrics_port"]
    updates_before = _metric(await _text(metrics_port, "/metrics"), "zpilot_model_updates_total")
    (manifests / "outsider.yaml").write_text(UNMESHED_POD)

    async def model_has_it():
        registry = await debug_json(port, "/debug/registryz")
        return any(w["name"] == "outsider-1" and not w["meshed"] for w in registry["workloads"])

    await eventually(model_has_it, timeout=DEBOUNCE_QUIET + 2.0)
    await asyncio.sleep(0.3)
    assert _metric(await _text(metrics_port, "/metrics"), "zpilot_model_updates_total") > updates_before
    assert sent_counts(await debug_json(port, "/debug/syncz")) == before

    # A new node concerns only itself: it gets a snapshot, the running Envoys get nothing.
    (manifests / "node-c.yaml").write_text(NEW_NODE)

    async def node_c_has_config():
        registry = await debug_json(port, "/debug/registryz")
        return "gke-jimmy-cluster-default-pool-d5041909-new1" in registry["snapshots"]

    await eventually(node_c_has_config, timeout=DEBOUNCE_QUIET + 2.0)
    await asyncio.sleep(0.3)
    assert sent_counts(await debug_json(port, "/debug/syncz")) == before
    metrics = await _text(metrics_port, "/metrics")
    latency = _metric(metrics, "zpilot_xds_push_latency_seconds_sum") / max(
        1.0, _metric(metrics, "zpilot_xds_push_latency_seconds_count"))
    print(f"add-pod change reached both Envoys' config_dump in {took * 1000:.0f} ms;"
          f" mean push latency (change seen -> sent) {latency * 1000:.0f} ms")

    # The manifest directory disappears (an unmount, a bad deploy): nobody loses config.
    before = sent_counts(await debug_json(port, "/debug/syncz"))
    parked = manifests.with_name("parked")
    manifests.rename(parked)

    async def noticed():
        return "is gone; keeping the last config" in serve["log"].read_text()

    await eventually(noticed, timeout=5)
    parked.rename(manifests)
    await asyncio.sleep(0.5)
    assert sent_counts(await debug_json(port, "/debug/syncz")) == before
    await wait_no_diff(port, a)

    # SIGHUP re-reads the CA (an in-memory one has nothing new) and the server keeps serving.
    serve["proc"].send_signal(signal.SIGHUP)

    async def reloaded():
        return "CA reloaded: nothing changed" in serve["log"].read_text()

    await eventually(reloaded, timeout=5)
    assert serve["proc"].poll() is None

    # Clean shutdown on SIGTERM.
    serve["proc"].send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(serve["proc"].wait, 10) == 0
    assert "shutting down" in serve["log"].read_text()


async def _text(port: int, path: str) -> str:
    async with httpx.AsyncClient(timeout=5.0) as c:
        r = await c.get(f"http://127.0.0.1:{port}{path}")
        r.raise_for_status()
        return r.text


def _metric(text: str, name: str) -> float:
    """The sum of a metric over all its label sets."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )

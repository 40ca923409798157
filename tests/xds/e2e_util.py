"""Checks shared by the end-to-end tests: sync status and config diffs against a running plane."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx

from zpilot.xds.dump_diff import unified_diff
from zpilot.xds.order import PUSH_ORDER, short_name

from .envoy_util import Envoy, eventually

ALL_TYPES = [short_name(t) for t in PUSH_ORDER]


async def debug_json(port: int, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient(timeout=5.0) as client:
        r = await client.get(f"http://127.0.0.1:{port}{path}", params=params)
        r.raise_for_status()
        return r.json()


async def scrape(plane) -> str:
    """What a Prometheus scraper gets from the plane's metrics server."""
    assert plane.metrics_server is not None and plane.metrics_server.port
    async with httpx.AsyncClient(timeout=5.0) as client:
        r = await client.get(f"http://127.0.0.1:{plane.metrics_server.port}/metrics")
        r.raise_for_status()
        return r.text


async def wait_synced(debug_port: int, node: str, timeout: float = 15.0) -> dict[str, Any]:
    """Until the node has one connection with every type sent and ACKed; returns its syncz entry."""

    async def check():
        conns = await debug_json(debug_port, "/debug/syncz", node=node)
        assert len(conns) == 1, f"expected one connection of {node}, got {conns}"
        states = {t["type"]: t["state"] for t in conns[0]["types"]}
        assert states == {t: "SYNCED" for t in ALL_TYPES}, states
        return conns[0]

    return await eventually(check, timeout)


async def wait_nacked(debug_port: int, node: str, kind: str) -> dict[str, Any]:
    """Until the node's one connection has its last response of ``kind`` (``CDS``...) NACKed; returns its syncz
    entry of that type."""

    async def nacked():
        [conn] = await debug_json(debug_port, "/debug/syncz", node=node)
        entry = next(t for t in conn["types"] if t["type"] == kind)
        assert entry["state"] == "NACKED", entry
        return entry

    return await eventually(nacked)


async def config_diff(debug_port: int, envoy: Envoy) -> str:
    intent = await debug_json(debug_port, "/debug/config_dump", node=envoy.node)
    return unified_diff(intent, await envoy.config_dump())


async def wait_no_diff(debug_port: int, envoy: Envoy, timeout: float = 10.0) -> None:
    async def check():
        diff = await config_diff(debug_port, envoy)
        assert diff == "", diff[:4000]
        return True

    await eventually(check, timeout, interval=0.1)


async def zpilot_diff_cli(debug_port: int, envoy: Envoy, *, name_node: bool = True) -> subprocess.CompletedProcess:
    """Run the real ``zpilot diff`` command (in a thread: the test's loop must keep serving ADS);
    without ``--node`` when ``name_node`` is false (the command then asks the Envoy)."""
    cmd = [sys.executable, "-m", "zpilot.cli", "diff", "--envoy-admin", envoy.admin,
           "--server", f"http://127.0.0.1:{debug_port}"]
    if name_node:
        cmd += ["--node", envoy.node]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)

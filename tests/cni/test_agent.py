"""``zpilot cni run``: the agent process, watching the manifest directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from .kernel_state import ip_route_table, ipset_list
from .topology import NODE_A, in_ns

pytestmark = [pytest.mark.root, pytest.mark.netns]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_agent_follows_the_model_repairs_drift_and_stops_on_sigterm(topology, manifests):
    cmd = [sys.executable, "-m", "zpilot.cli", "-v", "cni", "run", "--node", NODE_A, "--manifests", str(manifests),
           "--netns", topology.node, "--ztunnel-netns", topology.ztunnel, "--tunnel", "vxlan",
           "--poll", "0.1", "--resync", "0.5"]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert wait_for(lambda: "10.4.4.19" in ipset_list(topology.node)), "the agent did not apply the plan"
        # sleep finishes (phase Succeeded): it leaves the mesh, and its set entry and route go with it
        pods = manifests / "pods.yaml"
        pods.write_text(pods.read_text().replace(
            "    phase: Running\n    hostIP: 10.168.15.222\n    podIP: 10.4.4.19",
            "    phase: Succeeded\n    hostIP: 10.168.15.222\n    podIP: 10.4.4.19"))
        assert wait_for(lambda: "10.4.4.19" not in ipset_list(topology.node)
                        and "10.4.4.19" not in ip_route_table(topology.node, "100"))
        # drift: a route removed by hand comes back on the periodic resync, the model unchanged
        in_ns(topology.node, "ip", "route", "del", "10.4.4.7/32", "table", "100")
        assert wait_for(lambda: "10.4.4.7 via" in ip_route_table(topology.node, "100"))
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            _, err = agent.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            _, err = agent.communicate()
    assert agent.returncode == 0, err
    assert "stopping (rules stay in place" in err
    assert "route: add table 100: 10.4.4.7 via 192.168.126.2 dev istioin src 10.4.4.1" in err


def test_cleanup_on_exit_removes_everything(topology, manifests):
    cmd = [sys.executable, "-m", "zpilot.cli", "cni", "run", "--node", NODE_A, "--manifests", str(manifests),
           "--netns", topology.node, "--tunnel", "vxlan", "--poll", "0.1", "--cleanup-on-exit"]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: "10.4.4.19" in ipset_list(topology.node)), "the agent did not apply the plan"
    finally:
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=10)
    assert agent.returncode == 0, err
    assert "removed: link: remove istioin (vxlan)" in out
    assert "istioin" not in in_ns(topology.node, "ip", "link")
    assert "ztunnel-pods-ips" not in in_ns(topology.node, "ipset", "list", "-n")

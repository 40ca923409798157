"""Removing the chart leaves nothing on a node: the CNI agent, run with the DaemonSet's rendered
arguments on the node's network (a network namespace standing for it: the article's node A of
tests/cni), meshes the node's pods and, stopped as the kubelet stops a deleted pod (SIGTERM), removes
every rule, set, route and device it made. The ztunnel pod's side, made by the rendered init
container inside the pod's namespace, goes with that namespace.

The agent reads the in-process API server, listening inside the node's namespace, with a token
allowed exactly the chart's ``zpilot-cni`` ClusterRole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cni.kernel_state import ipset_list, snapshot
from tests.cni.topology import NODE_A, Topology, add_foreign_state, in_ns
from tests.kube.apiserver import ApiServer, seed_article
from zpilot import contract

from .chart import container, pod_spec, render, zpilot_argv
from .rbac import grants, token_allowance
from .pod import Pod, downward

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="creates network namespaces and iptables rules")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def topology():
    topo = Topology().build()
    try:
        add_foreign_state(topo)  # a real node holds kube-proxy's rules, someone else's rule and table
        yield topo
    finally:
        topo.destroy()


class InNamespace(Pod):
    """:class:`Pod`'s helpers for a namespace someone else made and removes."""

    def __init__(self, name: str, tmp: Path) -> None:  # noqa: D107 - no namespace of its own
        self.name, self.tmp, self.procs = name, tmp, []
        self.etc = Path("/etc/netns") / name

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_the_agent_meshes_its_node_then_leaves_nothing_when_its_pod_is_deleted(topology: Topology, tmp_path: Path):
    rendered = render()
    agent_ds, ztunnel_ds = rendered.get("DaemonSet", "zpilot-cni-node"), rendered.get("DaemonSet", "ztunnel")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = snapshot(topology.node)

    # The ztunnel pod's init container, inside the pod's namespace.
    setup = container(ztunnel_ds, "redirect")
    done = subprocess.run(["ip", "netns", "exec", topology.ztunnel, sys.executable, "-m", "zpilot.cli",
                           *zpilot_argv(setup)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pistioin" in in_ns(topology.ztunnel, "ip", "link")

    node = InNamespace(topology.node, tmp_path)
    server = node.started_inside(lambda: ApiServer(tmp_path / "api", tls=True, bootstrap=True, controllers=True).start())
    try:
        seed_article(server)
        binding = rendered.get("ClusterRoleBinding", "zpilot-cni")
        assert binding["subjects"][0]["name"] == pod_spec(agent_ds)["serviceAccountName"]
        role = rendered.get("ClusterRole", binding["roleRef"]["name"])
        kubeconfig = server.write_kubeconfig(tmp_path / "cni.kubeconfig",
                                             token=server.add_token(allow=token_allowance(grants(role["rules"]))))
        agent_spec = container(agent_ds, "cni-agent")
        log = tmp_path / "agent.log"
        agent = node.start([sys.executable, "-m", "zpilot.cli", *downward(agent_spec, zpilot_argv(agent_spec), NODE_A),
                            "--kubeconfig", str(kubeconfig)], log, env=env)
        # Applied: the set holds sleep (a meshed pod of node A), and the jump into the agent's chain,
        # written last, is in place.
        deadline = time.monotonic() + 60
        while not ("10.4.4.19" in ipset_list(topology.node)
                   and f"-A PREROUTING -j {contract.PREROUTING}" in in_ns(topology.node, "iptables-save", "-t", "mangle")):
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        meshed = snapshot(topology.node)
        assert "istioin" in meshed["ip link"] and meshed["ip rule"] != before["ip rule"]

        # helm uninstall: the DaemonSet's pods are deleted, the kubelet sends SIGTERM.
        os.killpg(agent.pid, signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert snapshot(topology.node) == before, log.read_text()[-3000:]
    finally:
        node.close()
        server.stop()

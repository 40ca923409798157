"""An agent restart or rollout leaves the node meshed; removing the chart leaves nothing on the node.

The CNI agent runs with the DaemonSet's rendered arguments and downward-API environment on the node's
network (a network namespace standing for it: the article's node A of tests/cni), as the pod the rendered
DaemonSet controls, and meshes the node's pods. Stopped as the kubelet stops it (SIGTERM):

- in a rollout (its DaemonSet still there), every rule, set, route and device stays, and the next agent,
  started in its place, converges on them (a pod created meanwhile meshed, nothing duplicated);
- at ``helm uninstall`` (its DaemonSet deleted), it removes every one of them. The ztunnel pod's side, made by
  the rendered init container inside the pod's namespace, goes with that namespace.

The agent reads the in-process API server, listening inside the node's namespace, with a token allowed
exactly the chart's ``zpilot-cni`` ClusterRole and Role.
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
from tests.kube.apiserver.objects import make_pod
from zpilot import contract

from .chart import NAMESPACE, Rendered, container, pod_spec, render, zpilot_argv
from .pod import Pod, downward, downward_env
from .rbac import grants, token_allowance

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="creates network namespaces and iptables rules")]

ROOT = Path(__file__).resolve().parents[2]
AGENT_POD = "zpilot-cni-node-7xk2p"


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


class Node:
    """Node A with the chart's ztunnel side set up, an API server holding the article, the rendered agent
    DaemonSet and its pod on node A, and the agent's token."""

    def __init__(self, topology: Topology, tmp: Path) -> None:
        self.topology, self.tmp = topology, tmp
        self.rendered: Rendered = render()
        self.daemonset = self.rendered.get("DaemonSet", "zpilot-cni-node")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        setup = container(self.rendered.get("DaemonSet", "ztunnel"), "redirect")  # the ztunnel pod's init container
        done = subprocess.run(["ip", "netns", "exec", topology.ztunnel, sys.executable, "-m", "zpilot.cli",
                               *zpilot_argv(setup)], capture_output=True, text=True, env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "pistioin" in in_ns(topology.ztunnel, "ip", "link")
        self.ns = InNamespace(topology.node, tmp)
        self.server: ApiServer = self.ns.started_inside(
            lambda: ApiServer(tmp / "api", tls=True, bootstrap=True, controllers=True).start())
        seed_article(self.server)
        self.daemonset_uid = self.server.create(self.daemonset)["metadata"]["uid"]
        account = pod_spec(self.daemonset)["serviceAccountName"]
        granted = set()
        for kind in ("ClusterRoleBinding", "RoleBinding"):
            binding = self.rendered.get(kind, "zpilot-cni")
            assert binding["subjects"][0]["name"] == account
            granted |= grants(self.rendered.get(binding["roleRef"]["kind"], binding["roleRef"]["name"])["rules"])
        self.kubeconfig = self.server.write_kubeconfig(tmp / "cni.kubeconfig",
                                                       token=self.server.add_token(allow=token_allowance(granted)))

    def start_agent(self, pod_name: str) -> tuple[subprocess.Popen, Path]:
        """The agent of the DaemonSet's pod ``pod_name`` on node A (the pod made as the DaemonSet controller makes it)."""
        pod = make_pod(pod_name, NAMESPACE, node=NODE_A, host_network=True, ip="10.128.0.2",
                       service_account=pod_spec(self.daemonset)["serviceAccountName"])
        pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "zpilot-cni-node",
                                               "uid": self.daemonset_uid, "controller": True}]
        self.server.create(pod)
        spec = container(self.daemonset, "cni-agent")
        env = {**self.env, **downward_env(spec, node=NODE_A, pod=pod_name, namespace=NAMESPACE)}
        log = self.tmp / f"{pod_name}.log"
        proc = self.ns.start([sys.executable, "-m", "zpilot.cli", *downward(spec, zpilot_argv(spec), NODE_A),
                              "--kubeconfig", str(self.kubeconfig)], log, env=env)
        return proc, log

    def until_meshed(self, agent: subprocess.Popen, log: Path, ip: str) -> None:
        """``ip`` in the set, and the jump into the agent's chain (written last) in place."""
        deadline = time.monotonic() + 60
        while not (ip in ipset_list(self.topology.node) and f"-A PREROUTING -j {contract.PREROUTING}"
                   in in_ns(self.topology.node, "iptables-save", "-t", "mangle")):
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    def until_routed(self, agent: subprocess.Popen, log: Path, ip: str) -> None:
        """The pod's route into the inbound tunnel (table 100) in place."""
        deadline = time.monotonic() + 60
        while not any(line.startswith(f"{ip} ") for line in
                      in_ns(self.topology.node, "ip", "route", "show", "table", "all").splitlines()):
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)

    @staticmethod
    def stop(agent: subprocess.Popen, log: Path) -> str:
        """SIGTERM, as the kubelet stops the pod; the agent's log."""
        os.killpg(agent.pid, signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()[-3000:]
        return log.read_text()

    def close(self) -> None:
        self.ns.close()
        self.server.stop()


@pytest.fixture
def node(topology: Topology, tmp_path: Path):
    made = Node(topology, tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_a_rollout_keeps_the_node_meshed_and_the_next_agent_converges(node: Node, topology: Topology):
    agent, log = node.start_agent(AGENT_POD)
    node.until_meshed(agent, log, "10.4.4.19")  # sleep, a meshed pod of node A
    meshed = snapshot(topology.node)

    # A rollout: the DaemonSet controller deletes the old pod (terminating), the DaemonSet stays.
    node.server.terminate("pods", AGENT_POD, NAMESPACE)
    text = node.stop(agent, log)
    assert snapshot(topology.node) == meshed, text[-3000:]
    assert "rules stay in place" in text and "still there" in text
    node.server.delete("pods", AGENT_POD, NAMESPACE)

    # Meanwhile a meshed pod starts on the node; the next agent meshes it and duplicates nothing.
    node.server.create(make_pod("web-1", ip="10.4.4.70", node=NODE_A, labels={"app": "web"}))
    successor, successor_log = node.start_agent("zpilot-cni-node-q9d4m")
    node.until_meshed(successor, successor_log, "10.4.4.70")
    # the set member and the pod's route are two steps of one reconcile: the snapshot waits for both
    node.until_routed(successor, successor_log, "10.4.4.70")
    converged = snapshot(topology.node)
    routes = converged["ip route show table all"].splitlines(keepends=True)
    assert [line for line in routes if line.startswith("10.4.4.70 ")] == [
        "10.4.4.70 via 192.168.126.2 dev istioin table 100 src 10.4.4.1\n"]
    converged["ip route show table all"] = "".join(line for line in routes if not line.startswith("10.4.4.70 "))
    assert {k: v for k, v in converged.items() if k != "ipset list"} == {
        k: v for k, v in meshed.items() if k != "ipset list"}, successor_log.read_text()[-3000:]
    def members(ipsets: str) -> list[str]:
        return [line.split()[0] for line in ipsets.splitlines() if line.startswith("10.")]

    assert members(converged["ipset list"]) == sorted([*members(meshed["ipset list"]), "10.4.4.70"])
    node.stop(successor, successor_log)


def test_helm_uninstall_leaves_nothing_on_the_node(node: Node, topology: Topology):
    before = snapshot(topology.node)
    agent, log = node.start_agent(AGENT_POD)
    node.until_meshed(agent, log, "10.4.4.19")
    meshed = snapshot(topology.node)
    assert "istioin" in meshed["ip link"] and meshed["ip rule"] != before["ip rule"]

    # helm uninstall: the DaemonSet is deleted, then its pods (garbage collection), and the kubelet sends SIGTERM.
    node.server.delete("daemonsets", "zpilot-cni-node", NAMESPACE)
    node.server.terminate("pods", AGENT_POD, NAMESPACE)
    text = node.stop(agent, log)
    assert snapshot(topology.node) == before, text[-3000:]
    assert "removing the node's rules" in text and "is gone" in text

"""Packets through the applied rules: a meshed pod's TCP reaches the ztunnel's TPROXY listener with
the service VIP as its destination; a non-meshed pod's does not.

The VIP is productpage's (10.8.14.226:9080). kube-proxy's portal DNATs it to an endpoint; the
node's own address stands in for the endpoint, where a plain server answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zpilot.cni import counters

from .kernel_state import iptables_save
from .topology import add_foreign_state, in_ns

pytestmark = [pytest.mark.root, pytest.mark.netns]

VIP, PORT = "10.8.14.226", 9080
LISTENER = str(Path(__file__).with_name("transparent_listener.py"))
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(b"ping from " + sys.argv[3].encode())
print(s.recv(10).decode())
"""


class Listener:
    def __init__(self, ns: str, port: int, timeout: float) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, LISTENER, str(port), str(timeout)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"listener in {ns}:{port} did not start: {line!r} {self.proc.stderr.read()}")

    def result(self):
        out, err = self.proc.communicate(timeout=15)
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def connect(ns: str, who: str, address: str = VIP, port: int = PORT) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, address, str(port), who],
                          capture_output=True, text=True, timeout=15)


def outbound_mark_packets(ns: str) -> int:
    m = re.search(r"\[(\d+):\d+\] -A ztunnel-PREROUTING -p tcp -m set --match-set ztunnel-pods-ips src -j MARK "
                  r"--set-xmark 0x100/0x100", iptables_save(ns, counters=True))
    assert m, "the outbound mark rule is missing"
    return int(m.group(1))


def tx_packets(ns: str, dev: str) -> int:
    return int(in_ns(ns, "cat", f"/sys/class/net/{dev}/statistics/tx_packets"))


def rx_packets(ns: str, dev: str) -> int:
    return int(in_ns(ns, "cat", f"/sys/class/net/{dev}/statistics/rx_packets"))


@pytest.fixture
def applied(topology, make_agent):
    add_foreign_state(topology)
    agent = make_agent()
    plan, reports = agent.reconcile_once()
    assert all(r.ok for r in reports), [r.errors for r in reports]
    topology.agent, topology.plan = agent, plan
    return topology


def status_counters(topo) -> dict[str, str]:
    agent, plan = topo.agent, topo.plan
    return {"node": counters.summary(agent.node.netns, agent.node.backend, plan.node_side),
            "ztunnel": counters.summary(agent.ztunnel.netns, agent.ztunnel.backend, plan.ztunnel_side)}


def test_meshed_pod_to_vip_arrives_at_tproxy_15001_with_the_vip_as_destination(applied):
    topo = applied
    marked, tunnel_out, tunnel_in = (outbound_mark_packets(topo.node), tx_packets(topo.node, "istioout"),
                                     rx_packets(topo.ztunnel, "pistioout"))
    listener = Listener(topo.ztunnel, 15001, 5)
    try:
        client = connect(topo.pod("sleep"), "sleep")
        got = listener.result()
    finally:
        listener.stop()
    assert client.returncode == 0, client.stderr
    assert client.stdout.strip() == "pong"
    assert got["local"] == [VIP, PORT] and got["data"] == "ping from sleep"
    assert got["original_dst"] == [VIP, PORT]  # what Envoy's original_dst listener filter reads
    assert got["peer"][0] == "10.4.4.19"  # the pod's own address: nothing was NATed on the way
    assert outbound_mark_packets(topo.node) == marked + 1  # the SYN; the rest of the flow follows conntrack marks
    assert tx_packets(topo.node, "istioout") > tunnel_out
    assert rx_packets(topo.ztunnel, "pistioout") > tunnel_in
    # and `zpilot cni status` shows it
    status = status_counters(topo)
    assert f"{marked + 1} connections marked for the ztunnel" in status["node"]
    assert re.search(r"TPROXY 15001: [1-9]\d* packets", status["ztunnel"])


def test_non_meshed_pod_to_vip_is_not_intercepted(applied):
    topo = applied
    marked = outbound_mark_packets(topo.node)
    endpoint = Listener(topo.node, PORT, 5)  # the service's endpoint behind kube-proxy's DNAT
    ztunnel = Listener(topo.ztunnel, 15001, 2)
    try:
        client = connect(topo.pod("legacy"), "legacy")
        reached = endpoint.result()
        intercepted = ztunnel.result()
    finally:
        endpoint.stop()
        ztunnel.stop()
    assert client.returncode == 0, client.stderr
    assert reached is not None and reached["data"] == "ping from legacy" and reached["peer"][0] == "10.4.4.25"
    assert reached["local"] == ["10.4.4.1", PORT]  # DNATed by kube-proxy, as without the mesh
    assert intercepted is None
    assert outbound_mark_packets(topo.node) == marked


@pytest.mark.parametrize(("port", "listener_port"), [(9080, 15006), (15008, 15008)])
def test_traffic_to_a_meshed_pod_goes_through_istioin_to_the_inbound_listeners(applied, port, listener_port):
    """Inbound: to a meshed pod (details, 10.4.4.7) via table 100 and istioin; HBONE's port to 15008, the rest to 15006."""
    topo = applied
    tunnel_in = rx_packets(topo.ztunnel, "pistioin")
    listener = Listener(topo.ztunnel, listener_port, 5)
    try:
        client = connect(topo.pod("legacy"), "legacy", "10.4.4.7", port)
        got = listener.result()
    finally:
        listener.stop()
    assert client.returncode == 0, client.stderr
    assert got is not None and got["local"] == ["10.4.4.7", port] and got["peer"][0] == "10.4.4.25"
    assert rx_packets(topo.ztunnel, "pistioin") > tunnel_in


def test_same_node_hbone_on_15088_hairpins_to_15008(applied):
    """The ztunnel dials podIP:15088 for a pod on its own node; nat OUTPUT sends that to its own 15008."""
    topo = applied
    listener = Listener(topo.ztunnel, 15008, 5)
    try:
        client = connect(topo.ztunnel, "ztunnel", "10.4.4.19", 15088)
        got = listener.result()
    finally:
        listener.stop()
    assert client.returncode == 0, client.stderr
    assert got is not None and got["data"] == "ping from ztunnel"
    assert got["original_dst"] == ["10.4.4.19", 15088]


FROM_PORT_CLIENT = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[3])))
s.settimeout(float(sys.argv[4]))
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(b"ping from port " + sys.argv[3].encode())
print(s.recv(10).decode())
"""
SOURCE_PORT = 31002


def connect_from(ns: str, source_port: int, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", FROM_PORT_CLIENT, VIP, str(PORT),
                           str(source_port), str(timeout)], capture_output=True, text=True, timeout=15)


def conntrack_of(ns: str, source_port: int) -> list[str]:
    """The node's conntrack entries of ``source_port``, without the seconds each has left (the fifth field):
    that counts down, so an entry read twice a second apart is the same entry."""
    return [" ".join(field for i, field in enumerate(line.split()) if i != 4)
            for line in in_ns(ns, "cat", "/proc/net/nf_conntrack").splitlines() if f"sport={source_port} " in line]


def _fail_open(manifests: Path) -> None:
    (manifests / "istio-system.yaml").unlink()  # no ztunnel on the node


def _sleep_out_of_the_mesh(manifests: Path) -> None:
    pods = manifests / "pods.yaml"
    labelled = "      app: sleep\n"
    assert labelled in pods.read_text()
    pods.write_text(pods.read_text().replace(labelled, labelled + "      istio.io/dataplane-mode: none\n", 1))


@pytest.mark.parametrize("stop", [_fail_open, _sleep_out_of_the_mesh], ids=["fail-open", "out-of-the-mesh"])
def test_a_pod_s_redirected_connections_are_forgotten_when_it_is_no_longer_redirected(applied, manifests, stop):
    """A SYN the (dead) ztunnel never answered leaves an entry that skipped kube-proxy's DNAT, marked
    0x100 in the connection. When the node stops redirecting the pod (fails open, or the pod leaves
    the mesh) the entry is deleted, so the pod's next connection from the same source port (hence
    the same 5-tuple: it would match the entry) is DNATed to the endpoint; ``zpilot cni status``
    (a dry run) names the entry while it is there."""
    topo = applied
    unanswered = connect_from(topo.pod("sleep"), SOURCE_PORT, timeout=1)  # no listener on 15001
    assert unanswered.returncode != 0
    stale = conntrack_of(topo.node, SOURCE_PORT)
    assert len(stale) == 1 and "SYN_SENT" in stale[0] and "mark=256 " in stale[0], stale
    assert f"src={VIP} dst=10.4.4.19 sport={PORT} dport={SOURCE_PORT} " in stale[0]  # no DNAT
    stop(manifests)
    plan = topo.agent.plan()
    told = topo.agent.node.reconcile(plan.node_side, dry_run=True)
    assert conntrack_of(topo.node, SOURCE_PORT) == stale
    plan, reports = topo.agent.reconcile_once()
    assert plan.mode.value == ("fail-open" if stop is _fail_open else "redirect") and all(r.ok for r in reports)
    assert stop is _fail_open or "10.4.4.19" not in {w.ip for w in plan.meshed}
    flow = f"tcp 10.4.4.19:{SOURCE_PORT} -> {VIP}:{PORT}"
    expected_change = (f"conntrack: remove every connection redirected while its pod was captured (e.g. {flow})"
                       if stop is _fail_open else
                       f"conntrack: remove 1 connection(s) of 10.4.4.19 redirected while it was captured ({flow})")
    assert expected_change in [str(ch) for ch in told.changes]
    assert expected_change in [str(ch) for r in reports for ch in r.changes]
    assert conntrack_of(topo.node, SOURCE_PORT) == []
    endpoint = Listener(topo.node, PORT, 5)  # the service's endpoint behind kube-proxy's DNAT
    try:
        client = connect_from(topo.pod("sleep"), SOURCE_PORT, timeout=5)
        reached = endpoint.result()
    finally:
        endpoint.stop()
    assert client.returncode == 0, client.stderr
    assert reached is not None and reached["peer"] == ["10.4.4.19", SOURCE_PORT] and reached["local"] == ["10.4.4.1", PORT]
    assert topo.agent.node.reconcile(topo.agent.plan().node_side, dry_run=True).in_sync

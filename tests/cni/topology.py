"""A node of the article's cluster, built from network namespaces with no route out.

Node A (gke-...-d10i) as the article shows it: the node namespace, the ztunnel pod's namespace
(10.4.4.18 behind veth300a1d80) and one namespace per pod, wired the way a point-to-point CNI
plugin does it (the node answers as 10.4.4.1 on every veth; one /32 route per pod). Nothing is
connected to the host's namespace, and every namespace is deleted by :meth:`Topology.destroy`.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field

NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"
HOST_IP = "10.4.4.1"
ZTUNNEL_IP = "10.4.4.18"
ZTUNNEL_VETH = "veth300a1d80"
VETH_MTU = 1460  # GKE's; the tunnels get 1410 as in the article

NO_IPV6 = {"net/ipv6/conf/all/disable_ipv6": "1", "net/ipv6/conf/default/disable_ipv6": "1"}

#: pod name -> (IP, host-side veth), as in examples/article/pods.yaml
PODS = {
    "sleep": ("10.4.4.19", "vethsleep"),
    "details": ("10.4.4.7", "vethdetails"),
    "reviews": ("10.4.4.11", "vethreviews"),
    "legacy": ("10.4.4.25", "vethlegacy"),  # opted out of the mesh
}


def sh(*argv: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *argv: str, check: bool = True, input: str | None = None) -> str:
    return sh("ip", "netns", "exec", ns, *argv, check=check, input=input)


def set_sysctls(ns: str, **values: str) -> None:
    """``set_sysctls(ns, **{"net/ipv4/conf/all/rp_filter": "1"})``, without needing procps."""
    script = "; ".join(f"echo {v} > /proc/sys/{k}" for k, v in values.items())
    in_ns(ns, "sh", "-c", script)


def get_sysctl(ns: str, path: str) -> str:
    return in_ns(ns, "cat", f"/proc/sys/{path}").strip()


@dataclass
class Topology:
    prefix: str = field(default_factory=lambda: f"zpt{os.getpid() % 10000}{uuid.uuid4().hex[:6]}")
    created: list[str] = field(default_factory=list)

    @property
    def node(self) -> str:
        return f"{self.prefix}-node"

    @property
    def ztunnel(self) -> str:
        return f"{self.prefix}-zt"

    def pod(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _wire(self, ns: str, ip: str, host_veth: str) -> None:
        """A pod namespace's eth0, paired with ``host_veth`` in the node: the ptp plugin's layout."""
        sh("ip", "-n", self.node, "link", "add", host_veth, "mtu", str(VETH_MTU), "type", "veth",
           "peer", "name", "eth0", "mtu", str(VETH_MTU), "netns", ns)
        sh("ip", "-n", self.node, "addr", "add", f"{HOST_IP}/32", "dev", host_veth)
        sh("ip", "-n", self.node, "link", "set", host_veth, "up")
        sh("ip", "-n", self.node, "route", "add", f"{ip}/32", "dev", host_veth, "scope", "link")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", f"{HOST_IP}/32", "dev", "eth0", "scope", "link")
        sh("ip", "-n", ns, "route", "add", "default", "via", HOST_IP, "dev", "eth0")

    def build(self, pods: tuple[str, ...] = tuple(PODS)) -> "Topology":
        try:
            self._add_ns(self.node)
            self._add_ns(self.ztunnel)
            for ns in (self.node, self.ztunnel):  # strict reverse-path filtering, as many distributions ship
                set_sysctls(ns, **{"net/ipv4/conf/all/rp_filter": "1", "net/ipv4/conf/default/rp_filter": "1"})
            for ns in self.created:  # no IPv6 link-local addresses appearing (and routes with them) as DAD ends
                set_sysctls(ns, **NO_IPV6)
            self._wire(self.ztunnel, ZTUNNEL_IP, ZTUNNEL_VETH)
            for name in pods:
                self.add_pod(name)
        except Exception:
            self.destroy()
            raise
        return self

    def add_pod(self, name: str) -> None:
        ip, veth = PODS[name]
        self._add_ns(self.pod(name))
        set_sysctls(self.pod(name), **NO_IPV6)
        self._wire(self.pod(name), ip, veth)

    def destroy(self) -> None:
        for name in reversed(self.created):
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()


#: What a real node already holds before zpilot starts: kube-proxy's service portal (the VIP of
#: productpage DNATed to an endpoint; the node's own address stands in for it, since node B is
#: not built), the article's metadata-server rule, another agent's ip rule, route table and set.
KUBE_PROXY_RULES = """*nat
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.8.14.226/32 -p tcp -m tcp --dport 9080 -j DNAT --to-destination 10.4.4.1:9080
COMMIT
*mangle
-A OUTPUT -s 169.254.169.254/32 -j DROP
COMMIT
"""
#: A pod namespace has its own tables too (iptables-nft creates them on first use, and zpilot
#: cannot know whether it was first); someone else's chain in each stands for their content.
FOREIGN_POD_RULES = """*nat
:OTHER-AGENT - [0:0]
COMMIT
*mangle
:OTHER-AGENT - [0:0]
COMMIT
"""


def add_foreign_state(topo: Topology) -> None:
    in_ns(topo.node, "iptables-restore", "--noflush", input=KUBE_PROXY_RULES)
    sh("ip", "-n", topo.node, "rule", "add", "priority", "200", "fwmark", "0x4000/0x4000", "lookup", "200")
    sh("ip", "-n", topo.node, "route", "add", "10.99.0.0/16", "dev", "vethlegacy", "table", "200")
    in_ns(topo.node, "ipset", "create", "KUBE-OTHER", "hash:ip")
    in_ns(topo.ztunnel, "iptables-restore", "--noflush", input=FOREIGN_POD_RULES)

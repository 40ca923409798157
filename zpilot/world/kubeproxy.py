"""kube-proxy's part of a node: the service portals (VIP:port DNATed to an endpoint).

A world has no kube-proxy, but the article's node has one, and the CNI's nat rules exist to
step around it (an ACCEPT of the outbound mark before KUBE-SERVICES, so the ztunnel
sees the VIP and not an endpoint). Installing the same portals makes that rule matter here
too, and lets pods outside the mesh reach services the way they would in a cluster.
"""

from __future__ import annotations

from .netns import in_netns
from .topology import WorldSpec

CHAIN = "KUBE-SERVICES"


def service_rules(spec: WorldSpec) -> str:
    """iptables-restore input: one DNAT per (VIP, port, endpoint), spread evenly like kube-proxy."""
    lines = ["*nat", f":{CHAIN} - [0:0]",
             f'-A PREROUTING -m comment --comment "kubernetes service portals" -j {CHAIN}',
             f'-A OUTPUT -m comment --comment "kubernetes service portals" -j {CHAIN}']
    for svc in spec.services:
        for _name, port, _target in svc.ports:
            eps = [(pod, target) for pod, p, target in spec.endpoints(svc) if p == port]
            for i, (pod, target) in enumerate(eps):
                match = f"-d {svc.cluster_ip}/32 -p tcp -m tcp --dport {port}"
                left = len(eps) - i
                spread = f" -m statistic --mode random --probability {1 / left:.5f}" if left > 1 else ""
                lines.append(f"-A {CHAIN} {match}{spread} -j DNAT --to-destination {pod.ip}:{target}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def install(netns: str, spec: WorldSpec) -> None:
    in_netns(netns, ["iptables-restore", "--noflush"], input=service_rules(spec))

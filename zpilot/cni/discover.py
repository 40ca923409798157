"""Facts about the node that the model does not hold: which veth leads to the ztunnel pod, the
node's address on the pod network, the MTU the tunnels can carry, and each meshed pod's veth.

They are read from the node namespace's main routing table, the way the CNI plugin left it:
the host side of a pod's veth is the device of the most specific main-table route to the pod's
IP. Tables 100-102 are ignored, since they are ours and may be stale.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from ..model.addresses import ipv4_networks
from ..model.objects import Node, Workload
from .. import contract as c
from .netns import Netns
from .plan import TUNNEL_OVERHEAD

log = logging.getLogger("zpilot.cni")

MAIN_TABLE = 254


class RouteMap:
    """Longest-prefix match over the main table's routes."""

    def __init__(self, ipr: Any) -> None:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        self.mtus = {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_MTU") for link in ipr.get_links()}
        self.routes: list[tuple[ipaddress.IPv4Network, str]] = []
        for msg in ipr.get_routes(family=2, table=MAIN_TABLE):
            if (msg.get_attr("RTA_TABLE") or msg["table"]) != MAIN_TABLE or msg["type"] != 1:
                continue
            dst = msg.get_attr("RTA_DST") or "0.0.0.0"
            oif = msg.get_attr("RTA_OIF")
            if oif in names:
                self.routes.append((ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}", strict=False), names[oif]))
        self.addresses = [
            (a.get_attr("IFA_ADDRESS"), names.get(a["index"], "")) for a in ipr.get_addr(family=2)
        ]

    def device_for(self, ip: str) -> str | None:
        """The device of the most specific route to ``ip``; the default route does not count (it leads off-node)."""
        addr = ipaddress.IPv4Address(ip)
        best: tuple[int, str] | None = None
        for net, dev in self.routes:
            if net.prefixlen and addr in net and dev not in (c.INBOUND_TUNNEL, c.OUTBOUND_TUNNEL) and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, dev)
        return best[1] if best else None


def host_ip_in_pod_cidr(routes: RouteMap, node: Node, prefer_dev: str | None) -> str | None:
    """The node's own address inside its pod CIDR (the pods' gateway), preferring the ztunnel's veth."""
    nets = ipv4_networks(node.pod_cidrs)
    candidates = [(dev != prefer_dev, ipaddress.IPv4Address(ip), ip) for ip, dev in routes.addresses
                  if any(ipaddress.IPv4Address(ip) in n for n in nets)]
    return min(candidates)[2] if candidates else None


def discover(netns: Netns, node: Node, ztunnel: Workload | None, meshed: list[Workload]) -> dict[str, Any]:
    """Keyword arguments for :class:`~zpilot.cni.plan.NodeFacts` found in ``netns`` (missing ones left out)."""
    facts: dict[str, Any] = {}
    with netns.iproute() as ipr:
        routes = RouteMap(ipr)
    veth = routes.device_for(ztunnel.ip) if ztunnel and ztunnel.ip else None
    if veth:
        facts["ztunnel_veth"] = veth
        mtu = routes.mtus.get(veth)
        if mtu:
            facts["mtu"] = mtu - TUNNEL_OVERHEAD
    host_ip = host_ip_in_pod_cidr(routes, node, veth)
    if host_ip:
        facts["host_ip"] = host_ip
    facts["pod_veths"] = {w.ip: dev for w in meshed if w.ip and (dev := routes.device_for(w.ip))}
    return facts


def discover_in_ztunnel(netns: Netns, iface: str) -> dict[str, Any]:
    """From inside the ztunnel pod: its IP (``iface``'s IPv4 address), the node's address (the default
    gateway, as the 2022 init script took it) and the tunnel MTU (``iface``'s MTU minus the overhead)."""
    facts: dict[str, Any] = {}
    with netns.iproute() as ipr:
        indexes = ipr.link_lookup(ifname=iface)
        if not indexes:
            return facts
        link = ipr.get_links(indexes[0])[0]
        facts["mtu"] = link.get_attr("IFLA_MTU") - TUNNEL_OVERHEAD
        addresses = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=indexes[0])]
        if addresses:
            facts["ztunnel_ip"] = addresses[0]
        for msg in ipr.get_routes(family=2, table=MAIN_TABLE):
            if msg["dst_len"] == 0 and msg.get_attr("RTA_GATEWAY") and msg.get_attr("RTA_OIF") == indexes[0]:
                facts["host_ip"] = msg.get_attr("RTA_GATEWAY")
                break
    return facts

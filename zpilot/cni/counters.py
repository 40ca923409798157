"""Is traffic actually flowing through the redirection? Counters for ``zpilot cni status``.

The packet counter of the rule that marks meshed pods' TCP (only connections' first packets
pass it: the rest follow conntrack marks) and the tunnels' packet counters, read from the
kernel without changing anything.
"""

from __future__ import annotations

import re
from typing import Any

from .. import contract as c
from .iptables import Backend
from .netns import Netns
from .desired import NetnsPlan

_COUNTED_RULE = re.compile(r"^\[(\d+):(\d+)\] -A (ztunnel-\S+) (.*)$")


def rule_packets(netns: Netns, backend: Backend, table: str = "mangle") -> dict[tuple[str, str], int]:
    """Packets per (chain, rule) of our chains in ``table``."""
    text = netns.run([backend.save, "-c", "-t", table]).stdout
    result = {}
    for line in text.splitlines():
        m = _COUNTED_RULE.match(line)
        if m:
            result[(m.group(3), m.group(4))] = int(m.group(1))
    return result


def link_packets(ipr: Any, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(rx, tx) packets per existing device."""
    result = {}
    for name in names:
        indexes = ipr.link_lookup(ifname=name)
        if indexes:
            stats = ipr.get_links(indexes[0])[0].get_attr("IFLA_STATS64") or {}
            result[name] = (int(stats.get("rx_packets", 0)), int(stats.get("tx_packets", 0)))
    return result


def summary(netns: Netns, backend: Backend, plan: NetnsPlan) -> str:
    """One line: what the plan's marking and TPROXY rules counted, and what the tunnels carried."""
    parts = []
    counted = rule_packets(netns, backend)
    outbound_mark = f"{c.MARK_OUTBOUND:#x}/{c.MARK_OUTBOUND:#x}"
    for chain in plan.chains:
        for rule in chain.rules:
            if outbound_mark in rule and "--match-set" in rule:
                parts.append(f"{counted.get((chain.name, rule), 0)} connections marked for the ztunnel")
            elif "-j TPROXY" in rule:
                port = rule.split("--on-port ")[1].split()[0]
                parts.append(f"TPROXY {port}: {counted.get((chain.name, rule), 0)} packets")
            elif rule.endswith("-j DROP"):
                parts.append(f"{counted.get((chain.name, rule), 0)} packets dropped (fail-closed)")
    with netns.iproute() as ipr:
        for name, (rx, tx) in link_packets(ipr, tuple(t.name for t in plan.tunnels)).items():
            parts.append(f"{name} rx {rx} tx {tx}")
    return "; ".join(parts)

"""Observing one connection in a world, hop by hop, from the kernel and the ztunnels.

Before and after the connection the iptables counters of the node and ztunnel namespaces and
the tunnel devices' packet counters are read; what grew shows which rule marked the packets,
which TPROXY rule took them and which tunnel carried them. The kernel's own routing decision
for the packet (``ip route get ... mark ...``) gives the rule and table, and the ztunnels'
access logs give the Envoy side. The result uses the fact keys of :mod:`zpilot.explain`, so the
two can be compared value by value.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from .. import contract as c
from . import scenarios
from .builder import World
from .netns import in_netns, run

_COUNTED = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$")


def iptables_counters(netns: str, table: str) -> dict[tuple[str, str], int]:
    """(chain, rule) -> packets, from ``iptables-save -c`` (rules as the plan writes them)."""
    out = {}
    for line in in_netns(netns, ["iptables-save", "-c", "-t", table]).splitlines():
        m = _COUNTED.match(line)
        if m:
            out[(m.group(3), m.group(4))] = int(m.group(1))
    return out


def tx_packets(netns: str) -> dict[str, int]:
    links = json.loads(run(["ip", "-n", netns, "-s", "-j", "link", "show"]))
    return {link["ifname"]: link.get("stats64", {}).get("tx", {}).get("packets", 0) for link in links}


def route_get(netns: str, dst: str, *, src: str, iif: str, mark: int = 0) -> str:
    argv = ["ip", "-n", netns, "route", "get", dst, "from", src, "iif", iif]
    if mark:
        argv += ["mark", hex(mark)]
    return run(argv).strip().splitlines()[0]


def rule_for(netns: str, table: str, mark: int) -> str | None:
    """The ``ip rule`` that sent a packet with ``mark`` to ``table``: the first, by priority, whose
    selector matches the mark and which looks up that table (``ip route get`` names only the table)."""
    for line in run(["ip", "-n", netns, "rule", "show"]).splitlines():
        text = " ".join(line.split())
        m = re.match(r"^(\d+): from all(?: fwmark (0x[0-9a-f]+)(?:/(0x[0-9a-f]+))?)? lookup (\S+)$", text)
        if not m:
            continue
        value, mask = int(m.group(2) or "0", 16), int(m.group(3) or "0xffffffff", 16)
        if (m.group(2) is None or mark & mask == value) and m.group(4) == table:
            return text
    return None


def _grown(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def _opt(rule: str, name: str) -> str | None:
    tokens = shlex.split(rule)
    return tokens[tokens.index(name) + 1] if name in tokens else None


@dataclass
class Snapshot:
    counters: dict[str, dict[tuple[str, str], int]]
    tx: dict[str, dict[str, int]]

    @classmethod
    def take(cls, world: World) -> "Snapshot":
        counters, tx = {}, {}
        for node in world.spec.nodes:
            for ns in (world.node_ns(node), world.ztunnels[node.key].netns):
                counters[ns] = iptables_counters(ns, "mangle")
                tx[ns] = tx_packets(ns)
        return cls(counters, tx)


@dataclass
class Observation:
    trace: scenarios.Trace
    facts: dict[str, str] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)  # fact key -> where it was seen
    outbound: dict = field(default_factory=dict)  # ztunnel A's log entry for the pod's connection


def observe_request(world: World, source: str, host: str, port: int) -> Observation:
    """Send one request from ``source`` and observe every hop of it (scenario 1 and friends)."""
    src = world.spec.pod(source)
    src_node = world.spec.node(src.node)
    before = Snapshot.take(world)
    dest = next((p for p in world.spec.pods if p.ip == host), None)
    # a meshed pod's connection: the outbound listener's line and the tunnel listener's, and in the
    # linear layout, to a pod IP, the pod-select listener's before it
    captured = 3 if dest is not None and world.options.layout == "linear" else 2
    expect = {src.node: captured} if src.ip in world.meshed_ips(src.node) else {dest.node if dest else src.node: 1}
    trace = scenarios.request(world, source, host, port, expect_logs=expect)
    after = Snapshot.take(world)
    obs = Observation(trace)
    facts, evidence = obs.facts, obs.evidence

    def fact(key: str, value: object, where: str) -> None:
        if value is not None:
            facts[key] = str(value)
            evidence[key] = where

    node_ns, zt = world.node_ns(src_node), world.ztunnels[src.node]
    # node A: which marking rule counted this connection's packets
    grown = _grown(before.counters[node_ns], after.counters[node_ns])
    mark = 0
    for (chain, rule), n in grown.items():
        if chain == c.PREROUTING and f"--match-set {c.IPSET_NAME} src" in rule and "MARK" in rule:
            value = (_opt(rule, "--set-xmark") or "0").split("/")[0]
            mark = int(value, 0)
            fact("mark", f"{mark:#x}", f"node {src.node}: +{n} pkts on `-A {chain} {rule}`")
    if mark:
        decision = route_get(node_ns, host, src=src.ip, iif=src.veth, mark=mark)
        table = re.search(r"\btable (\S+)", decision)
        dev = re.search(r"\bdev (\S+)", decision)
        fact("route_table", table.group(1) if table else "main", f"node {src.node}: ip route get: {decision}")
        if table:
            fact("ip_rule", rule_for(node_ns, table.group(1), mark), f"node {src.node}: ip rule (the one leading there)")
        if dev:
            sent = after.tx[node_ns].get(dev.group(1), 0) - before.tx[node_ns].get(dev.group(1), 0)
            fact("tunnel_device", dev.group(1), f"node {src.node}: {dev.group(1)} sent {sent} packets")
    # ztunnel A: which TPROXY rule took it
    for (chain, rule), n in _grown(before.counters[zt.netns], after.counters[zt.netns]).items():
        if "TPROXY" in rule and _opt(rule, "-i") == c.ZTUNNEL_OUTBOUND_TUNNEL:
            fact("tproxy_port", _opt(rule, "--on-port"), f"ztunnel {src.node}: +{n} pkts on `-A {chain} {rule}`")
    # ztunnel A's Envoy
    outbound = next(iter(trace.at(src.node, log=c.OUTBOUND_LISTENER, downstream_remote=trace.client_local or "")), {})
    obs.outbound = outbound
    where = f"ztunnel {src.node} access log"
    if outbound:
        fact("listener", outbound["log"], where)
        for key, field_name in (("filter_chain", "filter_chain"), ("cluster", "upstream_cluster"),
                                ("endpoint", "upstream_host")):
            fact(key, outbound.get(field_name), where)
        fact("response_flags", outbound.get("response_flags"), where)
    tunnel = next((e for e in trace.entries.get(src.node, [])
                   if e["log"].startswith(c.TUNNEL_LISTENER_PREFIX) or e["log"] == c.LINEAR_TUNNEL_LISTENER), None)
    if tunnel:  # a service chain: the internal listener opened the tunnel
        fact("internal_listener", tunnel["log"], where)
        fact("tunnel_cluster", tunnel.get("upstream_cluster"), where)
        fact("tunnel_dial", tunnel.get("upstream_host"), where)
    elif outbound.get("upstream_cluster", "").startswith("outbound_pod"):  # a pod chain tunnels itself
        tunnel = outbound
        fact("tunnel_cluster", outbound["upstream_cluster"], where)
        fact("tunnel_dial", outbound.get("upstream_host"), where)
    # the receiving ztunnel: reached through a tunnel, or (source not captured) directly
    dial = facts.get("tunnel_dial", "")
    if tunnel:
        dest_pod = next((p for p in world.spec.pods if p.ip == dial.rpartition(":")[0]), None)
        # the tunnel's source: the ztunnel's address, or the pod's where original_src spoofed it
        arriving_src = (tunnel.get("upstream_local") or "").rpartition(":")[0] or world.spec.ztunnel_on(src.node).ip
        from_outside = dest_pod is not None and dest_pod.node != src.node  # same node: REDIRECT, no routing
        inbound_match: dict[str, str] = {"log": c.INBOUND_LISTENER, "method": "CONNECT"}
    else:
        dest_pod = next((p for p in world.spec.pods if p.ip == host), None)
        arriving_src = src.ip
        from_outside = dest_pod is not None and not mark
        inbound_match = {"log": c.INBOUND_PLAINTEXT_LISTENER, "downstream_remote": trace.client_local or ""}
    if dest_pod is not None:
        dest_node = world.spec.node(dest_pod.node)
        dzt = world.ztunnels[dest_node.key]
        inbound = next(iter(trace.at(dest_node.key, **inbound_match)), None)
        if from_outside:
            dns = world.node_ns(dest_node)
            iif = "eth0" if dest_node.key != src.node else src.veth
            decision = route_get(dns, dest_pod.ip, src=arriving_src, iif=iif)
            table = re.search(r"\btable (\S+)", decision)
            dev = re.search(r"\bdev (\S+)", decision)
            fact("dest_route_table", table.group(1) if table else "main", f"node {dest_node.key}: ip route get: {decision}")
            if table:
                fact("dest_ip_rule", rule_for(dns, table.group(1), 0), f"node {dest_node.key}: ip rule (the one leading there)")
            if dev:
                sent = after.tx[dns].get(dev.group(1), 0) - before.tx[dns].get(dev.group(1), 0)
                fact("dest_tunnel_device", dev.group(1), f"node {dest_node.key}: {dev.group(1)} sent {sent} packets")
            for (chain, rule), n in _grown(before.counters[dzt.netns], after.counters[dzt.netns]).items():
                if "TPROXY" in rule and _opt(rule, "-i") == c.ZTUNNEL_INBOUND_TUNNEL:
                    fact("dest_tproxy_port", _opt(rule, "--on-port"),
                         f"ztunnel {dest_node.key}: +{n} pkts on `-A {chain} {rule}`")
        if inbound:
            where = f"ztunnel {dest_node.key} access log"
            if tunnel:
                fact("connect_authority", inbound.get("authority"), where)
                fact("peer_identity", inbound.get("peer_san"), where)
                fact("server_identity", inbound.get("local_san"), where)
            fact("inbound_listener", inbound["log"], where)
            fact("inbound_chain", inbound.get("filter_chain"), where)
            fact("inbound_cluster", inbound.get("upstream_cluster"), where)
            fact("destination", inbound.get("upstream_host"), where)
    seen = trace.seen_by_pod
    if seen:
        fact("pod", seen.get("pod"), f"the pod's server answered: it saw peer {seen.get('peer')} on {seen.get('local')}")
    return obs

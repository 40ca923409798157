"""The plan as an operator reads it: the same text ``iptables-save``, ``ip rule``, ``ip route`` and
``ip -d link`` print once the plan is applied, so a plan can be checked against a node by eye or diff.
"""

from __future__ import annotations

from ..model.addresses import host_cidr
from .desired import IptablesChain, Jump, NetnsPlan, NodePlan, Route, Rule, Tunnel

BUILTIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def iptables_save_text(chains: tuple[IptablesChain, ...], jumps: tuple[Jump, ...]) -> str:
    """Our chains and jumps per table, ordered as ``iptables-save`` orders them (counters left out)."""
    out: list[str] = []
    for table in sorted({ch.table for ch in chains} | {j.table for j in jumps}, key=("mangle", "nat").index):
        out.append(f"*{table}")
        owned = sorted((ch for ch in chains if ch.table == table), key=lambda ch: ch.name)
        out += [f":{ch.name} - [0:0]" for ch in owned]
        for hook in BUILTIN_ORDER:
            out += [f"-A {hook} {j.spec}" for j in jumps if j.table == table and j.hook == hook]
        for ch in owned:
            out += [f"-A {ch.name} {rule}" for rule in ch.rules]
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")


def rule_line(rule: Rule) -> str:
    """As ``ip rule`` prints it."""
    text = f"{rule.priority}:\tfrom {rule.src or 'all'}"
    if rule.fwmark is not None:
        text += f" fwmark {rule.fwmark:#x}"
        if rule.fwmask is not None and rule.fwmask != 0xFFFFFFFF:
            text += f"/{rule.fwmask:#x}"
    if rule.goto is not None:
        text += f" goto {rule.goto}"
    else:
        text += f" lookup {rule.table}"
    return text


def route_line(route: Route) -> str:
    """As ``ip route show table N`` prints it."""
    address = route.dst.partition("/")[0]
    dst = address if route.dst != "default" and route.dst == host_cidr(address) else route.dst  # a host: no length
    parts = ["local", dst] if route.local else [dst]
    if route.gateway:
        parts += ["via", route.gateway]
    parts += ["dev", route.dev]
    if route.scope != "universe":
        parts += ["scope", route.scope]
    if route.src:
        parts += ["src", route.src]
    if route.onlink:
        parts.append("onlink")
    return " ".join(parts)


def tunnel_lines(tunnel: Tunnel) -> list[str]:
    """The lines of ``ip -d addr show DEV`` that identify the tunnel (MAC and index left out)."""
    return [
        f"{tunnel.name}: mtu {tunnel.mtu}",
        f"    {tunnel.kind.value} id {tunnel.vni} remote {tunnel.remote} dstport {tunnel.port}",
        f"    inet {tunnel.address}/{tunnel.prefixlen}",
    ]


def ipset_lines(plan: NetnsPlan) -> list[str]:
    if plan.ipset is None:
        return []
    s = plan.ipset
    return [f"create {s.name} {s.type} comment"] + [f'add {s.name} {e.ip} comment "{e.comment}"' for e in s.entries]


def netns_sections(plan: NetnsPlan) -> list[tuple[str, str]]:
    """(heading, body) pairs; the headings are the commands that print the same text."""
    sections = [("iptables-save", iptables_save_text(plan.chains, plan.jumps))]
    if plan.ownership.ipset:
        sections.append(("ipset save", "\n".join(ipset_lines(plan)) + "\n" if plan.ipset else ""))
    sections.append(("ip rule", "".join(rule_line(r) + "\n" for r in plan.rules)))
    for table in plan.ownership.tables:
        routes = [r for r in plan.routes if r.table == table]
        sections.append((f"ip route show table {table}", "".join(route_line(r) + "\n" for r in routes)))
    sections.append(("ip -d addr show (tunnels)", "".join(line + "\n" for t in plan.tunnels for line in tunnel_lines(t))))
    sections.append(
        ("sysctl", "".join(f"{s.path.replace('/', '.')} = {s.value}\n" for s in plan.sysctls))
    )
    return sections


def render_plan(plan: NodePlan) -> str:
    node = plan.node
    out = [f"# Node {node.name} (InternalIP {node.internal_ip}): mode {plan.mode.value}"]
    out += [f"# !!! {alert}" for alert in plan.alerts]
    if plan.ztunnel is not None:
        tunnels = plan.node_side.tunnels
        kind = tunnels[0].kind.value if tunnels else "-"
        out.append(f"# ztunnel {plan.ztunnel.ref} {plan.ztunnel.ip}; node address {plan.host_ip}; tunnels {kind}")
    out.append(f"# meshed pods: {len(plan.meshed)}")
    for w in plan.meshed:
        out.append(f"#   {w.ref} {w.ip} uid {w.uid}")
    sides = [("node", plan.node_side)]
    if plan.ztunnel_side is not None:
        sides.append((f"ztunnel {plan.ztunnel.ref if plan.ztunnel else ''}", plan.ztunnel_side))
    for side, netns_plan in sides:
        for heading, body in netns_sections(netns_plan):
            out.append(f"\n## {side}: {heading}")
            out.append(body.rstrip("\n") if body else "(none)")
    return "\n".join(out) + "\n"

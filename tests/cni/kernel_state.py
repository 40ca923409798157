"""Reading a namespace's state with the operator's own commands, normalised for comparison.

Only what changes from run to run is normalised away (MAC addresses, interface indexes, the
ipset hash seed, iptables-save's timestamps and counters); everything else is compared as printed.
"""

from __future__ import annotations

import re

from .topology import in_ns


def iptables_save(ns: str, *, counters: bool = False) -> str:
    text = in_ns(ns, "iptables-save", *(["-c"] if counters else []))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    if not counters:
        lines = [re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in lines]
    return "\n".join(lines) + "\n"


def ip_rule(ns: str) -> str:
    return in_ns(ns, "ip", "rule")


def ip_route_table(ns: str, table: str) -> str:
    return "".join(line.rstrip() + "\n" for line in in_ns(ns, "ip", "route", "show", "table", table).splitlines())


def ipset_list(ns: str) -> str:
    """``ipset list``, with members sorted: a hash set lists them in the order of a random seed."""
    text = in_ns(ns, "ipset", "list")
    text = re.sub(r" initval 0x[0-9a-f]+", "", text)
    text = re.sub(r"Size in memory: \d+", "Size in memory: N", text)
    out: list[str] = []
    members: list[str] = []
    for line in text.splitlines():
        if members and (not line or line.startswith("Name:")):
            out += sorted(members[1:])
            members = []
        if members or line == "Members:":
            members.append(line)
            if line == "Members:":
                out.append(line)
            continue
        out.append(line)
    out += sorted(members[1:])
    return "\n".join(out) + "\n"


def _strip_link(text: str) -> str:
    text = re.sub(r"^\d+: ", "", text, flags=re.M)
    text = re.sub(r"link/ether \S+ brd \S+", "link/ether MAC", text)
    text = re.sub(r"@if\d+", "@ifN", text)
    return re.sub(r"link-netns \S+", "link-netns NS", text)


def ip_link(ns: str) -> str:
    return _strip_link(in_ns(ns, "ip", "link"))


def tunnel_summary(ns: str, names: tuple[str, ...]) -> str:
    """The identifying lines of ``ip -d addr show DEV``: name, state and MTU; kind, VNI, remote, port; address."""
    out = []
    for name in names:
        text = in_ns(ns, "ip", "-d", "addr", "show", "dev", name)
        first = text.splitlines()[0]
        flags, mtu = re.search(r"<([^>]*)>", first).group(1), re.search(r"mtu (\d+)", first).group(1)
        kind = re.search(r"\b(vxlan|geneve) id (\d+) remote (\S+) .*?dstport (\d+)", text)
        inet = re.findall(r"inet (\S+)", text)
        out.append(f"{name}: <{flags}> mtu {mtu}")
        out.append(f"    {kind.group(1)} id {kind.group(2)} remote {kind.group(3)} dstport {kind.group(4)}")
        out += [f"    inet {a}" for a in inet]
    return "\n".join(out) + "\n"


def snapshot(ns: str) -> dict[str, str]:
    """Everything the cleanup must restore, as the operator would check it."""
    return {
        "iptables-save": iptables_save(ns),
        "ip rule": ip_rule(ns),
        "ip route show table all": "".join(
            line.rstrip() + "\n" for line in in_ns(ns, "ip", "route", "show", "table", "all").splitlines()),
        "ip link": ip_link(ns),
        "ipset list": ipset_list(ns),
    }

"""A small interpreter of the node plan's iptables rules and policy routing, for one packet.

``zpilot explain`` does what the article did by hand (read ``iptables-save``, ``ip rule``,
``ip route show table N``) but from the CNI plan, before anything is applied. Only what the
plan's rules use is understood: interface, address, protocol, port, mark, connmark and ipset
matches; MARK, CONNMARK, TPROXY, REDIRECT, RETURN, ACCEPT and DROP targets. An unknown match
raises, rather than silently guessing.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..cni.desired import IpsetPlan, NetnsPlan, Route, Rule
from ..model.addresses import host_cidr


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    dport: int
    iface: str  # the interface it arrives on ("" for locally generated)
    proto: str = "tcp"
    mark: int = 0
    connmark: int = 0


@dataclass(frozen=True)
class RuleHit:
    chain: str
    rule: str  # as iptables-save prints it, without "-A CHAIN"
    effect: str  # what it did, in words


@dataclass
class ChainResult:
    packet: Packet
    hits: list[RuleHit] = field(default_factory=list)
    verdict: str = "continue"  # continue | accept | drop | tproxy | redirect
    tproxy_port: int | None = None
    redirect_port: int | None = None


class UnsupportedRule(ValueError):
    pass


def _mark_pair(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF


def _in_net(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)  # a bare address: its family's host prefix


def _ipset_has(ipset: IpsetPlan | None, name: str, ip: str) -> bool:
    return ipset is not None and ipset.name == name and any(e.ip == ip for e in ipset.entries)


def _matches(tokens: list[str], pkt: Packet, ipset: IpsetPlan | None) -> tuple[bool, list[str]]:
    """Whether the match part of a rule holds; returns the tokens of the target part too."""
    i, negate = 0, False
    while i < len(tokens):
        tok = tokens[i]
        if tok == "-j":
            return True, tokens[i + 1:]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok == "-m":  # a match module: its options follow
            i += 2
            continue
        arg = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok == "-i":
            ok = pkt.iface == arg
        elif tok == "-s":
            ok = _in_net(pkt.src, arg)
        elif tok == "-d":
            ok = _in_net(pkt.dst, arg)
        elif tok == "-p":
            ok = pkt.proto == arg
        elif tok == "--dport":
            ok = pkt.dport == int(arg)
        elif tok == "--mark":  # of "-m mark" (the packet) or "-m connmark" (its connection)
            value, mask = _mark_pair(arg)
            ok = (pkt.connmark if _module_of(tokens, i) == "connmark" else pkt.mark) & mask == value
        elif tok == "--match-set":
            direction = tokens[i + 2]
            ok = _ipset_has(ipset, arg, pkt.src if direction == "src" else pkt.dst)
            i += 1
        elif tok == "--comment":
            ok = True
        else:
            raise UnsupportedRule(f"match {tok!r} in rule {' '.join(tokens)!r}")
        if ok == negate:
            return False, []
        negate = False
        i += 2
    return True, []


def _module_of(tokens: list[str], index: int) -> str:
    """The ``-m`` module an option at ``index`` belongs to."""
    for j in range(index - 1, -1, -1):
        if tokens[j] == "-m":
            return tokens[j + 1]
    return ""


def run_chain(plan: NetnsPlan, table: str, chain: str, pkt: Packet) -> ChainResult:
    """Run ``pkt`` through one of the plan's chains (ours; built-in chains only jump to them)."""
    result = ChainResult(pkt)
    rules = next((c.rules for c in plan.chains if c.table == table and c.name == chain), ())
    for rule in rules:
        matched, target = _matches(shlex.split(rule), pkt, plan.ipset)
        if not matched:
            continue
        action = target[0] if target else ""
        opts = dict(zip(target[1::2], target[2::2])) if len(target) > 1 else {}
        if action == "MARK":
            value, mask = _mark_pair(opts["--set-xmark"])
            pkt = replace(pkt, mark=(pkt.mark & ~mask) ^ value)
            result.hits.append(RuleHit(chain, rule, f"mark {pkt.mark:#x}"))
        elif action == "CONNMARK":
            result.hits.append(RuleHit(chain, rule, "connmark saved"))
        elif action == "RETURN":
            result.hits.append(RuleHit(chain, rule, "return"))
            break
        elif action == "ACCEPT":
            result.hits.append(RuleHit(chain, rule, "accept"))
            result.verdict = "accept"
            break
        elif action == "DROP":
            result.hits.append(RuleHit(chain, rule, "drop"))
            result.verdict = "drop"
            break
        elif action == "TPROXY":
            value, mask = _mark_pair(opts["--tproxy-mark"])
            pkt = replace(pkt, mark=(pkt.mark & ~mask) ^ value)
            result.tproxy_port = int(opts["--on-port"])
            result.hits.append(RuleHit(chain, rule, f"TPROXY to {opts.get('--on-ip', '')}:{result.tproxy_port}, mark {pkt.mark:#x}"))
            result.verdict = "tproxy"
            break
        elif action == "REDIRECT":
            result.redirect_port = int(opts["--to-ports"])
            result.hits.append(RuleHit(chain, rule, f"REDIRECT to local port {result.redirect_port}"))
            result.verdict = "redirect"
            break
        else:
            raise UnsupportedRule(f"target {action!r} in rule {rule!r}")
    result.packet = pkt
    return result


@dataclass(frozen=True)
class RouteDecision:
    rule: Rule | None  # the ip rule that decided (None: the main table after all of ours)
    table: str  # "100", or "main"
    route: Route | None  # None: a route the plan does not own (main table)

    def describe(self) -> str:
        if self.route is None:
            return f"table {self.table} (the node's own routes)"
        r = self.route
        via = f" via {r.gateway}" if r.gateway else ""
        kind = "local " if r.local else ""
        return f"table {self.table}: {kind}{r.dst}{via} dev {r.dev}"


#: The kernel's own tables, by the names ``ip rule`` prints for them.
LOCAL_TABLE = 255
_TABLE_NAMES = {LOCAL_TABLE: "local", 254: "main"}
#: The rule every namespace starts with, before any of ours: ``0: from all lookup local``. The
#: ``local`` table holds the namespace's own addresses (and 127.0.0.0/8): a packet to one of them
#: is delivered here, whatever its mark.
LOCAL_RULE = Rule(priority=0, table=LOCAL_TABLE)
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def rule_text(rule: Rule) -> str:
    text = f"{rule.priority}: from {getattr(rule, 'src', None) or 'all'}"
    if rule.fwmark is not None:
        text += f" fwmark {rule.fwmark:#x}/{rule.fwmask:#x}" if rule.fwmask is not None else f" fwmark {rule.fwmark:#x}"
    if rule.goto is not None:
        return text + f" goto {rule.goto}"
    return text + f" lookup {_TABLE_NAMES.get(rule.table or 0, rule.table)}"


def _lookup(routes: tuple[Route, ...], table: int, dst: str) -> Route | None:
    best: tuple[int, Route] | None = None
    for route in routes:
        if route.table != table:
            continue
        net = ipaddress.ip_network("0.0.0.0/0" if route.dst == "default" else route.dst)
        if ipaddress.ip_address(dst) in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, route)
    return best[1] if best else None


def route(plan: NetnsPlan, dst: str, mark: int, src: str | None = None,
          own: Mapping[str, str] | None = None) -> RouteDecision:
    """Policy routing as the kernel does it: first the ``local`` table (rule 0), which delivers
    a packet to one of the namespace's ``own`` addresses (address -> the device holding it; the
    plan does not own them, so the caller says which they are) or to loopback; then the plan's
    rules by priority; a rule with a source selector applies only to that source; a lookup that
    finds nothing falls through to the next rule; ``goto`` jumps to a priority (32766 is ``main``)."""
    address = ipaddress.ip_address(dst)
    dev = (own or {}).get(dst) or ("lo" if address in LOOPBACK else None)
    if dev is not None:
        return RouteDecision(LOCAL_RULE, "local", Route(LOCAL_TABLE, host_cidr(dst), dev, scope="host", local=True))
    rules = sorted(plan.rules, key=lambda r: r.priority)
    skip_below: int | None = None
    for rule in rules:
        if skip_below is not None and rule.priority < skip_below:
            continue
        if rule.fwmark is not None and mark & (rule.fwmask or 0xFFFFFFFF) != rule.fwmark:
            continue
        rule_src = getattr(rule, "src", None)
        if rule_src is not None and rule_src.split("/")[0] != src:
            continue
        if rule.goto is not None:
            if rule.goto >= 32766:
                return RouteDecision(rule, "main", None)
            skip_below = rule.goto
            continue
        assert rule.table is not None
        found = _lookup(plan.routes, rule.table, dst)
        if found is not None:
            return RouteDecision(rule, str(rule.table), found)
    return RouteDecision(None, "main", None)

"""Policy routing: the ``ip rule`` priorities and the route tables zpilot owns, over netlink.

zpilot owns tables 100-102 whole and the rules at its priorities (100-103 on the node,
20000-20003 in the ztunnel pod): anything there that the plan does not hold is removed, and
nothing outside them is read or written. Routes are keyed by table and destination, so a pod
coming or going adds or removes exactly its one route in table 100.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from pyroute2.netlink.exceptions import NetlinkError

from ..model.addresses import host_prefix_len
from .changes import Change, Diff
from .desired import Route, Rule
from .netns import CniError, Netns, run_netlink_ops
from .render import route_line, rule_line

FR_ACT_TO_TBL = 1
FR_ACT_GOTO = 2
RTN_UNICAST = 1
RTN_LOCAL = 2
RTNH_F_ONLINK = 4
SCOPES = {0: "universe", 253: "link", 254: "host"}
SCOPE_NUMBERS = {v: k for k, v in SCOPES.items()}
#: ``proto boot``: what ``ip route add`` uses, so ``ip route`` prints our routes like the article.
ROUTE_PROTO = 3


# -- rules -------------------------------------------------------------------------------------


def _rule_from_msg(msg: Any) -> Rule | None:
    action = msg["action"]
    if msg.get_attr("FRA_DST") or msg.get_attr("FRA_IIFNAME") or msg.get_attr("FRA_OIFNAME"):
        return None
    src = msg.get_attr("FRA_SRC")
    if src is not None and msg["src_len"] != 32:
        return None
    fwmark, fwmask = msg.get_attr("FRA_FWMARK"), msg.get_attr("FRA_FWMASK")
    priority = msg.get_attr("FRA_PRIORITY") or 0
    if action == FR_ACT_GOTO:
        return Rule(priority, fwmark=fwmark, fwmask=fwmask, goto=msg.get_attr("FRA_GOTO"), src=src)
    if action == FR_ACT_TO_TBL:
        table = msg.get_attr("FRA_TABLE") or msg["table"]
        return Rule(priority, table=table, fwmark=fwmark, fwmask=fwmask, src=src)
    return None


def read_rules(ipr: Any, priorities: tuple[int, ...]) -> list[tuple[Rule | None, Any]]:
    return [
        (_rule_from_msg(m), m)
        for m in ipr.get_rules(family=2)
        if (m.get_attr("FRA_PRIORITY") or 0) in priorities
    ]


def _rule_kwargs(rule: Rule) -> dict[str, Any]:
    kw: dict[str, Any] = {"family": 2, "priority": rule.priority}
    if rule.src is not None:
        kw.update(src=rule.src, src_len=host_prefix_len(rule.src))
    if rule.fwmark is not None:
        kw.update(fwmark=rule.fwmark, fwmask=rule.fwmask if rule.fwmask is not None else 0xFFFFFFFF)
    if rule.goto is not None:
        kw.update(action="FR_ACT_GOTO", goto=rule.goto)
    else:
        kw.update(table=rule.table)
    return kw


def _delete_rule_msg(msg: Any) -> Callable[[Any], None]:
    def run(ipr: Any) -> None:
        kw: dict[str, Any] = {"family": 2, "priority": msg.get_attr("FRA_PRIORITY") or 0}
        if msg.get_attr("FRA_SRC") is not None:
            kw.update(src=msg.get_attr("FRA_SRC"), src_len=msg["src_len"])
        if msg.get_attr("FRA_FWMARK") is not None:
            kw.update(fwmark=msg.get_attr("FRA_FWMARK"), fwmask=msg.get_attr("FRA_FWMASK"))
        table = msg.get_attr("FRA_TABLE") or msg["table"]
        if msg["action"] == FR_ACT_GOTO:
            kw.update(action="FR_ACT_GOTO", goto=msg.get_attr("FRA_GOTO"))
        elif table:
            kw.update(table=table)
        ipr.rule("del", **kw)

    return run


Op = tuple[Change, Callable[[Any], None]]


def _add_rule(rule: Rule, ipr: Any) -> None:
    ipr.rule("add", **_rule_kwargs(rule))


def diff_rules(desired: tuple[Rule, ...], actual: list[tuple[Rule | None, Any]]) -> Diff[list[Op]]:
    ops: list[Op] = []
    have = [r for r, _ in actual]
    for rule, msg in actual:
        if rule is None or rule not in desired or have.count(rule) > 1:
            what = rule_line(rule) if rule else f"priority {msg.get_attr('FRA_PRIORITY')} (unrecognised)"
            ops.append((Change("rule", "remove", what), _delete_rule_msg(msg)))
            if rule is not None:
                have.remove(rule)
    missing = [rule for rule in desired if rule not in have]
    ops += [(Change("rule", "add", rule_line(rule)), partial(_add_rule, rule)) for rule in missing]
    return Diff(ops, [change for change, _ in ops], unchanged=len(desired) - len(missing))


# -- routes ------------------------------------------------------------------------------------


def _route_from_msg(msg: Any, names: dict[int, str]) -> Route:
    dst = msg.get_attr("RTA_DST")
    dst_text = "default" if dst is None and msg["dst_len"] == 0 else f"{dst}/{msg['dst_len']}"
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    oif = msg.get_attr("RTA_OIF")
    return Route(
        table=table,
        dst=dst_text,
        dev=names.get(oif, f"if{oif}"),
        gateway=msg.get_attr("RTA_GATEWAY"),
        src=msg.get_attr("RTA_PREFSRC"),
        scope=SCOPES.get(msg["scope"], str(msg["scope"])),
        local=msg["type"] == RTN_LOCAL,
        onlink=bool(msg["flags"] & RTNH_F_ONLINK),
    )


def read_routes(ipr: Any, tables: tuple[int, ...]) -> list[tuple[Route, Any]]:
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    result = []
    for table in tables:
        for msg in ipr.get_routes(family=2, table=table):
            if (msg.get_attr("RTA_TABLE") or msg["table"]) == table:
                result.append((_route_from_msg(msg, names), msg))
    return result


def _route_kwargs(route: Route, ipr: Any) -> dict[str, Any]:
    indexes = ipr.link_lookup(ifname=route.dev)
    if not indexes:
        raise CniError(f"route `{route_line(route)}` (table {route.table}): device {route.dev} does not exist")
    kw: dict[str, Any] = {
        "family": 2,
        "table": route.table,
        "dst": "0.0.0.0/0" if route.dst == "default" else route.dst,
        "oif": indexes[0],
        "scope": SCOPE_NUMBERS[route.scope],
        "type": "local" if route.local else "unicast",
        "proto": ROUTE_PROTO,
    }
    if route.gateway:
        kw["gateway"] = route.gateway
    if route.src:
        kw["prefsrc"] = route.src
    if route.onlink:
        kw["flags"] = RTNH_F_ONLINK
    return kw


def _delete_route_msg(msg: Any) -> Callable[[Any], None]:
    def run(ipr: Any) -> None:
        kw: dict[str, Any] = {
            "family": 2,
            "table": msg.get_attr("RTA_TABLE") or msg["table"],
            "dst_len": msg["dst_len"],
            "type": msg["type"],
            "scope": msg["scope"],
        }
        if msg.get_attr("RTA_DST"):
            kw["dst"] = msg.get_attr("RTA_DST")
        if msg.get_attr("RTA_OIF"):
            kw["oif"] = msg.get_attr("RTA_OIF")
        if msg.get_attr("RTA_PRIORITY") is not None:
            kw["priority"] = msg.get_attr("RTA_PRIORITY")
        try:
            ipr.route("del", **kw)
        except NetlinkError as exc:
            if exc.code != 3:  # ESRCH: already gone (its device was deleted)
                raise

    return run


def _add_route(route: Route, ipr: Any) -> None:
    ipr.route("add", **_route_kwargs(route, ipr))


def diff_routes(desired: tuple[Route, ...], actual: list[tuple[Route, Any]]) -> Diff[list[Op]]:
    """Routes are keyed by (table, destination): a changed route is replaced, others are untouched."""
    ops: list[Op] = []
    wanted = {(r.table, r.dst): r for r in desired}
    have: dict[tuple[int, str], Route] = {}
    for route, msg in actual:
        key = (route.table, route.dst)
        if wanted.get(key) == route and key not in have:
            have[key] = route
            continue
        ops.append((Change("route", "remove", f"table {route.table}: {route_line(route)}"), _delete_route_msg(msg)))
    for key, route in wanted.items():
        if key not in have:
            ops.append((Change("route", "add", f"table {route.table}: {route_line(route)}"), partial(_add_route, route)))
    return Diff(ops, [change for change, _ in ops], unchanged=len(have))


def apply(netns: Netns, d: Diff[list[Op]]) -> list[Change]:
    return run_netlink_ops(netns, d.work)

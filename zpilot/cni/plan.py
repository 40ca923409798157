"""The node plan: every rule, route, link and set entry the node and its ztunnel pod must hold.

Pure: the mesh index and a few facts about the node (:class:`NodeFacts`) go in, an immutable
:class:`~zpilot.cni.desired.NodePlan` comes out, with no I/O. That makes the plan printable
offline (``zpilot cni plan``, from its arguments alone), testable without root, and the single
thing the reconciler compares the kernel against. The agent (``zpilot cni run``) is what
discovers the facts on the node.

The rules are those of the 2022 ambient CNI agent (``CreateRulesOnNode``) and the ztunnel
DaemonSet's init script, which the article lists; see docs/cni.md for a walk through them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from .. import contract as c
from ..model.addresses import host_cidr, is_ipv4, sort_key
from ..model.index import MeshIndex
from ..model.objects import Node, Workload
from .desired import (
    MANGLE,
    NAT,
    NODE_OWNERSHIP,
    ZTUNNEL_OWNERSHIP,
    IpsetEntry,
    IpsetPlan,
    IptablesChain,
    Jump,
    Mode,
    NetnsPlan,
    NodePlan,
    Route,
    Rule,
    Sysctl,
    Tunnel,
    TunnelKind,
)
from .errors import CniError

#: Outer IPv4 (20) + UDP (8) + Geneve/VXLAN (8) + inner Ethernet (14): 1460 -> 1410 as in the article.
TUNNEL_OVERHEAD = 50
#: Stands in for the ztunnel's host-side veth where only the node itself could tell its name
#: (``zpilot cni plan`` without ``--ztunnel-veth``, ``zpilot explain``).
UNKNOWN_ZTUNNEL_VETH = "ZTUNNEL-VETH"


@dataclass(frozen=True)
class NodeFacts:
    """What the plan needs that the model does not know: discovered on the node by the agent, or
    given as arguments (``zpilot cni plan``)."""

    ztunnel_veth: str | None = None  # host side of the ztunnel pod's veth
    host_ip: str | None = None  # the node's address on the pod network; None: the node's InternalIP
    mtu: int = 1460 - TUNNEL_OVERHEAD
    tunnel_kind: TunnelKind = TunnelKind.GENEVE
    pod_veths: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    ztunnel_iface: str = c.POD_INTERFACE  # the ztunnel pod's own interface


class PlanError(CniError):
    """The plan cannot be made (unknown node, no address to use); the message names the object."""


# -- the node namespace ------------------------------------------------------------------------


def _node_chains(ztunnel_veth: str, ztunnel_ip: str, host_ip: str, port: int) -> tuple[IptablesChain, ...]:
    skip = f"{c.MARK_SKIP:#x}/{c.MARK_SKIP:#x}"
    conn_skip = f"{c.MARK_CONN_SKIP:#x}/{c.MARK_CONN_SKIP:#x}"
    proxy = f"{c.MARK_PROXY:#x}/{c.MARK_PROXY:#x}"
    proxy_return = f"{c.MARK_PROXY_RETURN:#x}/{c.MARK_PROXY_RETURN:#x}"
    outbound = f"{c.MARK_OUTBOUND:#x}/{c.MARK_OUTBOUND:#x}"
    prerouting = (
        # out of a tunnel: the ztunnel already handled it
        f"-i {c.INBOUND_TUNNEL} -j MARK --set-xmark {skip}",
        f"-i {c.INBOUND_TUNNEL} -j RETURN",
        f"-i {c.OUTBOUND_TUNNEL} -j MARK --set-xmark {skip}",
        f"-i {c.OUTBOUND_TUNNEL} -j RETURN",
        # the tunnels' own packets
        f"-p udp -m udp --dport {port} -j RETURN",
        f"-m connmark --mark {conn_skip} -j MARK --set-xmark {skip}",
        f"-m mark --mark {skip} -j RETURN",
        # replies to connections the ztunnel made for a pod go back to the ztunnel
        f"! -i {ztunnel_veth} -m connmark --mark {proxy} -j MARK --set-xmark {proxy_return}",
        f"-m mark --mark {proxy_return} -j RETURN",
        f"! -s {host_cidr(ztunnel_ip)} -i {ztunnel_veth} -j MARK --set-xmark {proxy}",
        f"-m mark --mark {skip} -j RETURN",
        f"-i {ztunnel_veth} -j MARK --set-xmark {conn_skip}",
        f"-p udp -j MARK --set-xmark {conn_skip}",
        f"-m mark --mark {skip} -j RETURN",
        # the one that matters: TCP from a meshed pod goes to the ztunnel
        f"-p tcp -m set --match-set {c.IPSET_NAME} src -j MARK --set-xmark {outbound}",
    )
    save = (
        f"-m mark --mark {conn_skip} -j CONNMARK --save-mark --nfmask {c.MARK_CONN_SKIP:#x} --ctmask {c.MARK_CONN_SKIP:#x}",
        f"-m mark --mark {proxy} -j CONNMARK --save-mark --nfmask {c.MARK_PROXY:#x} --ctmask {c.MARK_PROXY:#x}",
    )
    # not in the article: the redirected connections' own mark, so that once a pod is no longer
    # redirected its connections' entries (which skipped the DNAT) can be found and deleted (conntrack.py)
    save_outbound = (
        f"-m mark --mark {outbound} -j CONNMARK --save-mark --nfmask {c.MARK_OUTBOUND:#x} --ctmask {c.MARK_OUTBOUND:#x}",
    )
    accept_outbound = (f"-m mark --mark {outbound} -j ACCEPT",)
    return (
        IptablesChain(MANGLE, c.PREROUTING, prerouting),
        IptablesChain(MANGLE, c.INPUT, save),
        IptablesChain(MANGLE, c.FORWARD, save + save_outbound),
        # kubelet probes come from the node's pod-network address: never redirect them
        IptablesChain(MANGLE, c.OUTPUT, (f"-s {host_cidr(host_ip)} -j MARK --set-xmark {c.MARK_CONN_SKIP:#x}/0xffffffff",)),
        IptablesChain(MANGLE, c.POSTROUTING),
        # skip kube-proxy's DNAT so the ztunnel sees the service VIP
        IptablesChain(NAT, c.PREROUTING, accept_outbound),
        IptablesChain(NAT, c.POSTROUTING, accept_outbound),
    )


def _jumps_for(chains: tuple[IptablesChain, ...]) -> tuple[Jump, ...]:
    return tuple(Jump(ch.table, ch.name.removeprefix(c.CHAIN_PREFIX), ch.name) for ch in chains)


def _rp_filter(iface: str, value: str = "0") -> Sysctl:
    return Sysctl(f"net/ipv4/conf/{iface}/rp_filter", value)


def _accept_local(iface: str) -> Sysctl:
    return Sysctl(f"net/ipv4/conf/{iface}/accept_local", "1")


_IFNAME = re.compile(r"[^\s/:]{1,15}")
_UNSAFE_COMMENT = re.compile(r"[^A-Za-z0-9._:/-]")


def check_ifname(what: str, name: str) -> None:
    """An interface name goes into iptables-restore lines and sysctl paths: refuse anything else by name."""
    if not _IFNAME.fullmatch(name):
        raise PlanError(f"{what} {name!r} is not an interface name (1-15 characters, no spaces, '/' or ':')")


def ipset_comment(w: Workload) -> str:
    """The pod's UID (its name if it has none), reduced to characters ``ipset restore`` takes unquoted."""
    text = _UNSAFE_COMMENT.sub("_", w.uid or f"{w.namespace}/{w.name}")
    return text[:255]


def _ipset(meshed: tuple[Workload, ...]) -> IpsetPlan:
    entries = tuple(sorted((IpsetEntry(w.ip, ipset_comment(w)) for w in meshed if w.ip), key=lambda e: sort_key(e.ip)))
    return IpsetPlan(c.IPSET_NAME, c.IPSET_TYPE, entries)


def _redirecting_node_side(
    ztunnel: Workload, meshed: tuple[Workload, ...], host_ip: str, facts: NodeFacts, veth: str
) -> NetnsPlan:
    zt_ip = ztunnel.ip
    assert zt_ip is not None  # MeshIndex only indexes pods with IPs
    chains = _node_chains(veth, zt_ip, host_ip, c.TUNNEL_PORT)
    tunnels = (
        Tunnel(c.INBOUND_TUNNEL, facts.tunnel_kind, c.INBOUND_VNI, zt_ip, c.INBOUND_NODE_ADDRESS,
               c.TUNNEL_PREFIXLEN, facts.mtu),
        Tunnel(c.OUTBOUND_TUNNEL, facts.tunnel_kind, c.OUTBOUND_VNI, zt_ip, c.OUTBOUND_NODE_ADDRESS,
               c.TUNNEL_PREFIXLEN, facts.mtu),
    )
    p100, p101, p102, p103 = c.NODE_RULE_PRIORITIES
    rules = (
        Rule(p100, fwmark=c.MARK_SKIP, fwmask=c.MARK_SKIP, goto=c.MAIN_RULE_PRIORITY),
        Rule(p101, table=c.TABLE_OUTBOUND, fwmark=c.MARK_OUTBOUND, fwmask=c.MARK_OUTBOUND),
        Rule(p102, table=c.TABLE_PROXY_RETURN, fwmark=c.MARK_PROXY_RETURN, fwmask=c.MARK_PROXY_RETURN),
        Rule(p103, table=c.TABLE_INBOUND),
    )
    ztunnel_route = [Route(t, host_cidr(zt_ip), veth, scope="link") for t in c.OWNED_TABLES]
    routes = [
        *ztunnel_route,
        Route(c.TABLE_OUTBOUND, "default", c.OUTBOUND_TUNNEL, gateway=c.OUTBOUND_ZTUNNEL_ADDRESS),
        Route(c.TABLE_PROXY_RETURN, "default", veth, gateway=zt_ip, onlink=True),
    ]
    for entry in _ipset(meshed).entries:
        routes.append(
            Route(c.TABLE_INBOUND, host_cidr(entry.ip), c.INBOUND_TUNNEL, gateway=c.INBOUND_ZTUNNEL_ADDRESS, src=host_ip)
        )
    sysctls = [
        Sysctl("net/ipv4/ip_forward", "1"),
        _rp_filter("all"),
        _rp_filter("default"),
        _rp_filter(veth),
        _accept_local(veth),
    ]
    for tunnel in tunnels:
        sysctls += [_rp_filter(tunnel.name), _accept_local(tunnel.name)]
    for w in meshed:
        pod_veth = facts.pod_veths.get(w.ip or "")
        if pod_veth:
            sysctls.append(_rp_filter(pod_veth))
    return NetnsPlan(
        NODE_OWNERSHIP,
        chains=chains,
        jumps=_jumps_for(chains),
        ipset=_ipset(meshed),
        tunnels=tunnels,
        rules=rules,
        routes=tuple(sorted(routes, key=route_sort_key)),
        sysctls=tuple(dict.fromkeys(sysctls)),
    )


def _fail_closed_node_side(meshed: tuple[Workload, ...]) -> NetnsPlan:
    """No ztunnel: keep the set of meshed pods, and drop their TCP rather than let it out in clear."""
    chains = (
        IptablesChain(
            MANGLE,
            c.PREROUTING,
            (
                f"-p tcp -m set --match-set {c.IPSET_NAME} src -j DROP",
                f"-p tcp -m set --match-set {c.IPSET_NAME} dst -j DROP",
            ),
        ),
    )
    return NetnsPlan(NODE_OWNERSHIP, chains=chains, jumps=_jumps_for(chains), ipset=_ipset(meshed))


# -- the ztunnel pod's namespace -----------------------------------------------------------------


def ztunnel_side(zt_ip: str, host_ip: str, facts: NodeFacts) -> NetnsPlan:
    """The ztunnel pod's own rules. They depend on its IP and the node's only, not on the model, so
    they can also be set up from inside the pod (``zpilot cni ztunnel-setup``, the 2022 init script's job).
    """
    eth = facts.ztunnel_iface
    tproxy = f"--on-ip 127.0.0.1 --tproxy-mark {c.TPROXY_MARK:#x}/{c.ZTUNNEL_MARK_MASK:#x}"
    mangle = IptablesChain(
        MANGLE,
        c.PREROUTING,
        (
            f"-i {c.ZTUNNEL_INBOUND_TUNNEL} -p tcp -m tcp --dport {c.PORT_HBONE} -j TPROXY --on-port {c.PORT_HBONE} {tproxy}",
            f"-i {c.ZTUNNEL_OUTBOUND_TUNNEL} -p tcp -j TPROXY --on-port {c.PORT_OUTBOUND} {tproxy}",
            f"-i {c.ZTUNNEL_INBOUND_TUNNEL} -p tcp -j TPROXY --on-port {c.PORT_INBOUND_PLAINTEXT} {tproxy}",
            f"! -d {host_cidr(zt_ip)} -i {eth} -p tcp -j MARK --set-xmark {c.PASSTHROUGH_MARK:#x}/{c.ZTUNNEL_MARK_MASK:#x}",
        ),
    )
    nat = IptablesChain(
        NAT,
        c.OUTPUT,
        (f"-p tcp -m tcp --dport {c.PORT_HBONE_LOCAL} -j REDIRECT --to-ports {c.PORT_HBONE}",),
    )
    chains = (mangle, nat)
    tunnels = (
        Tunnel(c.ZTUNNEL_INBOUND_TUNNEL, facts.tunnel_kind, c.INBOUND_VNI, host_ip, c.INBOUND_ZTUNNEL_ADDRESS,
               c.TUNNEL_PREFIXLEN, facts.mtu),
        Tunnel(c.ZTUNNEL_OUTBOUND_TUNNEL, facts.tunnel_kind, c.OUTBOUND_VNI, host_ip, c.OUTBOUND_ZTUNNEL_ADDRESS,
               c.TUNNEL_PREFIXLEN, facts.mtu),
    )
    mask = c.ZTUNNEL_MARK_MASK
    hairpin, p0, p1, p2, p3 = c.ZTUNNEL_RULE_PRIORITIES
    rules = (
        Rule(hairpin, table=c.TABLE_INBOUND, fwmark=c.INBOUND_SOCKET_MARK, fwmask=mask, src=c.HAIRPIN_SOURCE),
        Rule(p0, table=c.TABLE_INBOUND, fwmark=c.TPROXY_MARK, fwmask=mask),
        Rule(p1, table=c.TABLE_OUTBOUND, fwmark=c.OUTBOUND_SOCKET_MARK, fwmask=mask),
        Rule(p2, table=c.TABLE_PROXY_RETURN, fwmark=c.INBOUND_SOCKET_MARK, fwmask=mask),
        Rule(p3, table=c.TABLE_INBOUND, fwmark=c.PASSTHROUGH_MARK, fwmask=mask),
    )
    routes = (
        Route(c.TABLE_INBOUND, "default", "lo", scope="host", local=True),
        Route(c.TABLE_OUTBOUND, host_cidr(host_ip), eth, scope="link"),
        Route(c.TABLE_OUTBOUND, "default", c.ZTUNNEL_OUTBOUND_TUNNEL, gateway=c.OUTBOUND_NODE_ADDRESS),
        Route(c.TABLE_PROXY_RETURN, host_cidr(host_ip), eth, scope="link"),
        Route(c.TABLE_PROXY_RETURN, "default", c.ZTUNNEL_INBOUND_TUNNEL, gateway=c.INBOUND_NODE_ADDRESS),
    )
    sysctls = [_rp_filter("all"), _rp_filter("default"), _rp_filter(eth)]
    for tunnel in tunnels:
        sysctls += [_rp_filter(tunnel.name), _accept_local(tunnel.name)]
    return NetnsPlan(
        ZTUNNEL_OWNERSHIP,
        chains=chains,
        jumps=_jumps_for(chains),
        tunnels=tunnels,
        rules=rules,
        routes=tuple(sorted(routes, key=route_sort_key)),
        sysctls=tuple(sysctls),
    )


# -- the whole node ----------------------------------------------------------------------------


def route_sort_key(route: Route) -> tuple:
    """Table, then the kernel's order within a table (``default`` first, then by address)."""
    if route.dst == "default":
        return (route.table, 0, 0)
    net = ipaddress.ip_network(route.dst)
    return (route.table, 1, net.version, int(net.network_address), net.prefixlen)


def host_ip_for(node: Node, facts: NodeFacts) -> str | None:
    """The 2022 rule: the node's address inside its pod CIDR if one was found, else its InternalIP."""
    return facts.host_ip or node.internal_ip


def _uncaptured(index: MeshIndex, node_name: str, meshed: tuple[Workload, ...]) -> tuple[str, ...]:
    captured = {w.ip for w in meshed}
    return tuple(sorted({w.ip for w in index.workloads_on(node_name) if w.ip and is_ipv4(w.ip)} - captured,
                        key=sort_key))


def build_plan(
    index: MeshIndex,
    node_name: str,
    facts: NodeFacts,
    *,
    fail_closed: bool = False,
) -> NodePlan:
    """The desired state of ``node_name`` and of its ztunnel pod.

    Membership (which pods are meshed, which pod is the node's ztunnel) comes from
    :class:`MeshIndex` only, so this agent and the xDS translators never disagree about it; that
    includes the address family (the index holds IPv4 addresses only, and reports the others).
    """
    node = index.nodes.get(node_name)
    if node is None:
        known = ", ".join(sorted(index.nodes)) or "none"
        raise PlanError(f"Node {node_name} is not in the model (known nodes: {known})")
    meshed_t = tuple(index.meshed_workloads_on(node_name))
    ztunnel = index.ztunnel_on(node_name)
    host_ip = host_ip_for(node, facts)
    alerts: list[str] = []

    if ztunnel is None:
        empty = NetnsPlan.empty(NODE_OWNERSHIP)
        if not meshed_t:
            return NodePlan(node, Mode.IDLE, None, (), host_ip, empty, None)
        names = ", ".join(str(w.ref) for w in meshed_t[:5]) + (" ..." if len(meshed_t) > 5 else "")
        if fail_closed:
            alerts.append(
                f"NO READY ZTUNNEL on {node.ref} while {len(meshed_t)} enrolled pod(s) run there ({names}):"
                " failing closed, their TCP traffic is DROPPED until a ztunnel is ready"
            )
            node_side = replace(_fail_closed_node_side(meshed_t), uncaptured=_uncaptured(index, node_name, meshed_t))
            return NodePlan(node, Mode.FAIL_CLOSED, None, meshed_t, host_ip, node_side, None, tuple(alerts))
        alerts.append(
            f"NO READY ZTUNNEL on {node.ref} while {len(meshed_t)} enrolled pod(s) run there ({names}):"
            " failing open, their traffic is NOT meshed (no mTLS, no policy) until a ztunnel is ready"
        )
        return NodePlan(node, Mode.FAIL_OPEN, None, meshed_t, host_ip, empty, None, tuple(alerts))

    if not is_ipv4(host_ip):
        raise PlanError(
            f"{node.ref}: no IPv4 address for the tunnels' node end (got {host_ip!r} from --host-ip, the pod"
            f" CIDR or InternalIP {node.internal_ip!r}); pass --host-ip with the node's address on the pod network"
        )
    assert host_ip is not None
    veth = facts.ztunnel_veth
    if not veth:
        raise PlanError(
            f"the host-side veth of {ztunnel.ref} ({ztunnel.ip}) on {node.ref} is unknown:"
            " it was not found in the node's routes; pass --ztunnel-veth"
        )
    check_ifname("--ztunnel-veth", veth)
    check_ifname("--ztunnel-iface", facts.ztunnel_iface)
    assert ztunnel.ip is not None  # MeshIndex only indexes pods with (IPv4) IPs
    node_side = replace(_redirecting_node_side(ztunnel, meshed_t, host_ip, facts, veth),
                        uncaptured=_uncaptured(index, node_name, meshed_t))
    return NodePlan(node, Mode.REDIRECT, ztunnel, meshed_t, host_ip, node_side, ztunnel_side(ztunnel.ip, host_ip, facts))

"""What a node's redirection consists of: the desired state the plan holds and the reconcilers apply.

Plain immutable data, one type per kind of kernel object (an iptables chain, an ipset, a tunnel
device, an ``ip rule``, a route, a sysctl), grouped per network namespace (:class:`NetnsPlan`)
and per node (:class:`NodePlan`). The builders that fill them from the model are in
:mod:`zpilot.cni.plan`; each reconciler (``iptables``, ``ipset``, ``links``, ``routing``,
``sysctl``) compares one kind against the kernel. Rule texts are kept exactly as
``iptables-save`` prints them, so comparing desired and actual chains is a string comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .. import contract as c
from ..model.objects import Node, Workload

MANGLE = "mangle"
NAT = "nat"
#: Tables in which every chain named ``ztunnel-*`` belongs to zpilot.
OWNED_IPTABLES_TABLES = (MANGLE, NAT)


class TunnelKind(str, Enum):
    GENEVE = "geneve"
    VXLAN = "vxlan"


class Role(str, Enum):
    NODE = "node"
    ZTUNNEL = "ztunnel"


class Mode(str, Enum):
    """What the node does with its meshed pods; shown by ``zpilot cni status``."""

    REDIRECT = "redirect"  # a ready ztunnel: meshed pods' TCP goes through it
    IDLE = "idle"  # neither a ztunnel nor meshed pods: nothing to do
    FAIL_OPEN = "fail-open"  # meshed pods but no ztunnel: they run unmeshed (no rules)
    FAIL_CLOSED = "fail-closed"  # meshed pods but no ztunnel: their TCP is dropped


@dataclass(frozen=True)
class IptablesChain:
    """A chain zpilot owns, with its rules as ``iptables-save`` prints them (without ``-A NAME``)."""

    table: str
    name: str
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Jump:
    """``-j target`` as the first rule of a built-in chain, so ours run before kube-proxy's."""

    table: str
    hook: str
    target: str

    @property
    def spec(self) -> str:
        return f"-j {self.target}"


@dataclass(frozen=True)
class IpsetEntry:
    ip: str
    comment: str  # the pod UID: who put this IP here, as the 2022 agent did


@dataclass(frozen=True)
class IpsetPlan:
    name: str
    type: str
    entries: tuple[IpsetEntry, ...]


@dataclass(frozen=True)
class Tunnel:
    name: str
    kind: TunnelKind
    vni: int
    remote: str
    address: str
    prefixlen: int
    mtu: int
    port: int = c.TUNNEL_PORT


@dataclass(frozen=True)
class Rule:
    """An ``ip rule``: ``priority: from (all | SRC) [fwmark m/k] (lookup T | goto P)``."""

    priority: int
    table: int | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    goto: int | None = None
    src: str | None = None  # a single IPv4 address (/32), or None for "all"


@dataclass(frozen=True)
class Route:
    table: int
    dst: str  # "default" or "a.b.c.d/len"
    dev: str
    gateway: str | None = None
    src: str | None = None
    scope: str = "universe"  # universe | link | host
    local: bool = False  # a ``local`` route (TPROXY delivery), not unicast
    onlink: bool = False


@dataclass(frozen=True)
class Sysctl:
    path: str  # under /proc/sys, slash-separated (interface names may hold dots)
    value: str


@dataclass(frozen=True)
class Ownership:
    """What zpilot may change in one network namespace: everything else is left alone."""

    role: Role
    ipset: str | None
    links: tuple[str, ...]
    rule_priorities: tuple[int, ...]
    tables: tuple[int, ...] = c.OWNED_TABLES
    chain_prefix: str = c.CHAIN_PREFIX
    iptables_tables: tuple[str, ...] = OWNED_IPTABLES_TABLES


NODE_OWNERSHIP = Ownership(
    Role.NODE, c.IPSET_NAME, (c.INBOUND_TUNNEL, c.OUTBOUND_TUNNEL), c.NODE_RULE_PRIORITIES
)
ZTUNNEL_OWNERSHIP = Ownership(
    Role.ZTUNNEL, None, (c.ZTUNNEL_INBOUND_TUNNEL, c.ZTUNNEL_OUTBOUND_TUNNEL), c.ZTUNNEL_RULE_PRIORITIES
)


@dataclass(frozen=True)
class NetnsPlan:
    """The desired state of one network namespace (the node's or the ztunnel pod's)."""

    ownership: Ownership
    chains: tuple[IptablesChain, ...] = ()
    jumps: tuple[Jump, ...] = ()
    ipset: IpsetPlan | None = None
    tunnels: tuple[Tunnel, ...] = ()
    rules: tuple[Rule, ...] = ()
    routes: tuple[Route, ...] = ()
    sysctls: tuple[Sysctl, ...] = ()
    #: The node's pods that are not captured while others are (their IPv4 addresses): none of their
    #: connections may keep a decision of the redirect (conntrack.py). With none captured, no one's may.
    uncaptured: tuple[str, ...] = ()

    @classmethod
    def empty(cls, ownership: Ownership) -> "NetnsPlan":
        """Nothing desired: reconciling against it removes all that zpilot owns (cleanup)."""
        return cls(ownership)

    @property
    def is_empty(self) -> bool:
        return not (self.chains or self.jumps or self.ipset or self.tunnels or self.rules or self.routes)


@dataclass(frozen=True)
class NodePlan:
    node: Node
    mode: Mode
    ztunnel: Workload | None
    meshed: tuple[Workload, ...]
    host_ip: str | None
    node_side: NetnsPlan
    ztunnel_side: NetnsPlan | None
    alerts: tuple[str, ...] = ()  # loud: shown first by status and logged as warnings

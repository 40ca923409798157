"""Connections the redirect decided for, left behind when a pod stops being redirected.

The kernel takes a connection's NAT decision on its first packet and keeps it in the
connection's conntrack entry. A captured pod's connection skips kube-proxy's DNAT (its SYN is
marked ``0x100``, which nat ``ztunnel-PREROUTING`` accepts), so its entry says "no DNAT". When
the node stops redirecting the pod (fail-open, the pod taken out of the mesh) the entry stays:
120 s for a SYN the dead ztunnel never answered, days for an established connection. A new
connection of the pod with the same 5-tuple matches it (the kernel picks source ports in a
sequence per destination that comes round again after a few thousand connections, and checks
them against the pod's own sockets only), inherits "no DNAT" and goes to the service VIP
untranslated, into nothing, until the entry expires.

So the plan saves the ``0x100`` mark in the connection (mangle ``ztunnel-FORWARD``), which makes
these entries visible in the kernel, and this concern holds the node to: no entry carrying it
whose original source is not a captured pod. What differs is deleted over netlink (pyroute2's
``Conntrack``, opened in the node's namespace); an entry that expired meanwhile is no error.
"""

from __future__ import annotations

import errno
import socket
from collections import defaultdict
from dataclasses import dataclass, field

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from .. import contract as c
from .changes import Change, Diff
from .errors import CniError
from .netns import Netns, PartialFailure

#: At most this many connections named per pod in a change (the count is always whole).
EXAMPLES = 3


@dataclass(frozen=True)
class Flow:
    """A connection's original direction, as conntrack keys it."""

    proto: int
    src: str
    sport: int
    dst: str
    dport: int

    def __str__(self) -> str:
        name = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}.get(self.proto, str(self.proto))
        return f"{name} {self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass
class Deletions:
    """What ``apply`` deletes: the stale flows, one group per pod (source IP), with its change."""

    groups: list[tuple[Change, list[Flow]]] = field(default_factory=list)


def _open(netns: Netns) -> Conntrack:
    netns.check_exists()
    return Conntrack(netns=netns.path) if netns.path else Conntrack()


def read(netns: Netns) -> list[Flow]:
    """The connections whose first packet was redirected (connmark ``0x100``); the kernel filters."""
    try:
        with _open(netns) as ct:
            return [
                Flow(e.tuple_orig.proto, e.tuple_orig.saddr, e.tuple_orig.sport or 0, e.tuple_orig.daddr,
                     e.tuple_orig.dport or 0)
                for e in ct.dump_entries(mark=c.MARK_OUTBOUND, mark_mask=c.MARK_OUTBOUND)
            ]
    except (NetlinkError, OSError) as exc:
        raise CniError(f"cannot read the conntrack table in {netns} ({exc}): the agent needs the kernel's"
                       " conntrack over netlink (module nf_conntrack_netlink) and CAP_NET_ADMIN") from exc


def diff(captured: set[str], redirected: list[Flow]) -> Diff[Deletions]:
    """Redirected connections of pods still captured are as planned; the others are to go."""
    d: Diff[Deletions] = Diff(Deletions())
    stale: dict[str, list[Flow]] = defaultdict(list)
    for flow in redirected:
        if flow.src in captured:
            d.unchanged += 1
        else:
            stale[flow.src].append(flow)
    for src in sorted(stale):
        flows = stale[src]
        shown = ", ".join(str(f) for f in flows[:EXAMPLES]) + (", ..." if len(flows) > EXAMPLES else "")
        change = Change("conntrack", "remove",
                        f"{len(flows)} connection(s) of {src} redirected while it was captured ({shown})")
        d.changes.append(change)
        d.work.groups.append((change, flows))
    return d


def apply(netns: Netns, d: Diff[Deletions]) -> None:
    """Delete the stale entries; on a failure, the pods whose entries are all gone are reported done."""
    done: list[Change] = []
    with _open(netns) as ct:
        for change, flows in d.work.groups:
            for flow in flows:
                try:
                    ct.delete(NFCTAttrTuple(saddr=flow.src, daddr=flow.dst, proto=flow.proto, sport=flow.sport,
                                            dport=flow.dport))
                except NetlinkError as exc:
                    if exc.code == errno.ENOENT:  # expired (or closed) since it was read
                        continue
                    raise PartialFailure(f"deleting conntrack entry {flow} failed in {netns}: {exc}", done) from exc
            done.append(change)

"""Connections the redirect decided for, left behind when a pod stops being redirected.

The kernel takes a connection's NAT decision on its first packet and keeps it in the
connection's conntrack entry. A captured pod's connection skips kube-proxy's DNAT (its SYN is
marked ``MARK_OUTBOUND``, which the plan's nat PREROUTING chain accepts), so its entry says "no DNAT". When
the node stops redirecting the pod (fail-open, the pod taken out of the mesh) the entry stays:
120 s for a SYN the dead ztunnel never answered, days for an established connection. A new
connection of the pod with the same 5-tuple matches it (the kernel picks source ports in a
sequence per destination that comes round again after a few thousand connections, and checks
them against the pod's own sockets only), inherits "no DNAT" and goes to the service VIP
untranslated, into nothing, until the entry expires.

So the plan saves that mark in the connection (its mangle FORWARD chain), which makes
these entries visible in the kernel, and this concern holds the node to: no entry carrying it
whose original source is a pod the node does not capture. The kernel does the filtering (pyroute2
parses about 1,000 entries a second, and a node holds many): when nothing is captured (fail-open,
cleanup) one flush by mark removes them all, else one dump per uncaptured pod of the node, by
mark and source, lists what to delete. An entry that expired meanwhile is no error.
"""

from __future__ import annotations

import errno
import socket
from collections import defaultdict
from dataclasses import dataclass, field

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink import NETLINK_NETFILTER, NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_GET, NFCTAttrTuple, nfct_msg

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
    """What ``apply`` deletes: everything marked (nothing is captured), or these flows, one group per pod."""

    everything: bool = False
    groups: list[tuple[Change, list[Flow]]] = field(default_factory=list)


def _open(netns: Netns) -> Conntrack:
    netns.check_exists()
    if netns.path is None:
        return Conntrack()
    return Conntrack(fileno=netns.netlink_socket(NETLINK_NETFILTER))


def _flow(entry) -> Flow:
    t = entry.tuple_orig
    return Flow(t.proto, t.saddr, t.sport or 0, t.daddr, t.dport or 0)


def _marked_from(ct: Conntrack, src: str) -> list[Flow]:
    """Filtered by the kernel on mark and source both (pyroute2's own dump drops the mark when given a
    tuple); checked again here, for a kernel that ignores the filter (before 5.8)."""
    match = NFCTAttrTuple(saddr=src)
    match.attrs()  # computes the filter's flags
    msg = nfct_msg.create_from(tuple_orig=match, cta_filter={"attrs": [["CTA_FILTER_ORIG_FLAGS", match.flags]]},
                               mark=c.MARK_OUTBOUND, mark_mask=c.MARK_OUTBOUND)
    flows = []
    for reply in ct.request(msg, IPCTNL_MSG_CT_GET, msg_flags=NLM_F_REQUEST | NLM_F_DUMP):
        t = NFCTAttrTuple.from_netlink(reply["nfgen_family"], reply.get_attr("CTA_TUPLE_ORIG"))
        if t.saddr == src and (reply.get_attr("CTA_MARK") or 0) & c.MARK_OUTBOUND:
            flows.append(Flow(t.proto, t.saddr, t.sport or 0, t.daddr, t.dport or 0))
    return flows


def read(netns: Netns, sources: tuple[str, ...] | None) -> list[Flow]:
    """The redirected connections (``MARK_OUTBOUND`` in their connmark) of ``sources``; None: of any source, of
    which only the first :data:`EXAMPLES` are read (``apply`` flushes them in the kernel)."""
    marked = {"mark": c.MARK_OUTBOUND, "mark_mask": c.MARK_OUTBOUND}
    try:
        with _open(netns) as ct:
            if sources is None:
                return [_flow(e) for e, _ in zip(ct.dump_entries(**marked), range(EXAMPLES))]
            return [flow for src in sources for flow in _marked_from(ct, src)]
    except (NetlinkError, OSError) as exc:
        raise CniError(f"cannot read the conntrack table in {netns} ({exc}): the agent needs the kernel's"
                       " conntrack over netlink (module nf_conntrack_netlink) and CAP_NET_ADMIN") from exc


def _examples(flows: list[Flow]) -> str:
    return ", ".join(str(f) for f in flows[:EXAMPLES]) + (", ..." if len(flows) > EXAMPLES else "")


def diff(sources: tuple[str, ...] | None, stale: list[Flow]) -> Diff[Deletions]:
    """``stale`` as :func:`read` found it for ``sources`` (None: nothing is captured)."""
    d: Diff[Deletions] = Diff(Deletions())
    if sources is None:
        if stale:
            d.work.everything = True
            d.changes.append(Change("conntrack", "remove", "every connection redirected while its pod was"
                                    f" captured (e.g. {_examples(stale)})"))
        return d
    by_src: dict[str, list[Flow]] = defaultdict(list)
    for flow in stale:
        by_src[flow.src].append(flow)
    for src in sorted(by_src):
        flows = by_src[src]
        change = Change("conntrack", "remove",
                        f"{len(flows)} connection(s) of {src} redirected while it was captured ({_examples(flows)})")
        d.changes.append(change)
        d.work.groups.append((change, flows))
    return d


def apply(netns: Netns, d: Diff[Deletions]) -> None:
    """Delete the stale entries; on a failure, the pods whose entries are all gone are reported done."""
    done: list[Change] = []
    with _open(netns) as ct:
        if d.work.everything:
            ct.flush(mark=c.MARK_OUTBOUND, mark_mask=c.MARK_OUTBOUND)
            return
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

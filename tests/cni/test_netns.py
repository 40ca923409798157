"""Netlink sockets opened inside a namespace (zpilot/cni/netns.py): by a thread that enters it, not a
forked process; the socket sees that namespace whichever thread uses it, and the caller's stays put."""

from __future__ import annotations

import os

import pytest

from zpilot.cni import conntrack
from zpilot.cni.netns import Netns

from .topology import PODS, ZTUNNEL_VETH

pytestmark = [pytest.mark.root, pytest.mark.netns]


def _own_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_a_namespaces_netlink_sockets_see_it_and_leave_the_caller_where_it_was(topology):
    before = _own_netns()
    with Netns(topology.node).iproute() as ipr:
        node_links = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    with Netns(topology.ztunnel).iproute() as ipr:
        ztunnel_links = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    with Netns(None).iproute() as ipr:
        own_links = {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    assert _own_netns() == before
    assert {ZTUNNEL_VETH, *(veth for _ip, veth in PODS.values())} <= node_links
    assert ZTUNNEL_VETH not in ztunnel_links and "eth0" in ztunnel_links
    assert ZTUNNEL_VETH not in own_links
    with conntrack._open(Netns(topology.node)) as ct:  # the netfilter family, the same way
        assert list(ct.dump_entries()) == []
    assert _own_netns() == before


def test_a_namespace_that_cannot_be_entered_is_named(tmp_path):
    not_a_netns = tmp_path / "net"
    not_a_netns.write_text("")
    with pytest.raises(Exception, match=f"cannot open a netlink socket in netns {not_a_netns}"):
        Netns(str(not_a_netns)).iproute()

"""Desired against actual, per concern, without a kernel: what would be changed, and what not.

Every concern answers with the same :class:`~zpilot.cni.changes.Diff`: the changes, how many
objects are already as planned, and the concern's own work for ``apply``."""

from __future__ import annotations

import pytest

from zpilot.cni import conntrack, ipset, iptables, links, preflight, routing, sysctl
from zpilot.cni.errors import CniError
from zpilot.cni.iptables import TableState
from zpilot.cni.desired import IpsetEntry, IpsetPlan, IptablesChain, Jump, Route, Rule, Sysctl, Tunnel, TunnelKind

CHAIN = IptablesChain("nat", "ztunnel-PREROUTING", ("-m mark --mark 0x100/0x100 -j ACCEPT",))
JUMP = Jump("nat", "PREROUTING", "ztunnel-PREROUTING")
KUBE = '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'


def table_diff(chains: dict[str, list[str]]):
    return iptables.diff_table("nat", [CHAIN], [JUMP], TableState(chains), "ztunnel-")


def test_iptables_from_nothing_creates_chain_and_jump_first():
    d = table_diff({"PREROUTING": [KUBE], "KUBE-SERVICES": []})
    assert d.unchanged == 0
    assert "iptables: add nat chain ztunnel-PREROUTING (1 rule)" in [str(c) for c in d.changes]  # not "1 rules"
    assert d.work.script("nat") == (
        "*nat\n:ztunnel-PREROUTING - [0:0]\n-A ztunnel-PREROUTING -m mark --mark 0x100/0x100 -j ACCEPT\n"
        "-I PREROUTING 1 -j ztunnel-PREROUTING\nCOMMIT\n")


def test_iptables_in_sync_is_left_alone():
    d = table_diff({"PREROUTING": ["-j ztunnel-PREROUTING", KUBE], "ztunnel-PREROUTING": list(CHAIN.rules)})
    assert d.changes == [] and d.work.script("nat") == "*nat\nCOMMIT\n"
    assert d.unchanged == 2  # the chain and its jump


def test_iptables_changed_chain_is_rewritten_whole_and_named():
    d = table_diff({"PREROUTING": ["-j ztunnel-PREROUTING"], "ztunnel-PREROUTING": ["-j RETURN"]})
    assert [str(c) for c in d.changes] == [
        "iptables: update nat chain ztunnel-PREROUTING: --j RETURN; +-m mark --mark 0x100/0x100 -j ACCEPT"]
    assert d.work.declare == ["ztunnel-PREROUTING"] and d.work.insert_first == []
    assert d.unchanged == 1  # the jump


def test_iptables_duplicate_or_late_jumps_are_replaced_by_one_first():
    d = table_diff({"PREROUTING": [KUBE, "-j ztunnel-PREROUTING", "-j ztunnel-PREROUTING"],
                    "ztunnel-PREROUTING": list(CHAIN.rules)})
    assert d.work.delete_rules == [("PREROUTING", "-j ztunnel-PREROUTING")] * 2
    assert d.work.insert_first == [("PREROUTING", "-j ztunnel-PREROUTING")]


def test_iptables_stale_chain_and_its_references_go_foreign_rules_stay():
    d = table_diff({"PREROUTING": ["-j ztunnel-PREROUTING", KUBE], "ztunnel-PREROUTING": list(CHAIN.rules),
                    "OUTPUT": ["-j ztunnel-OUTPUT"], "ztunnel-OUTPUT": ["-j RETURN"], "KUBE-SERVICES": ["-j RETURN"]})
    script = d.work.script("nat")
    assert "-D OUTPUT -j ztunnel-OUTPUT\n" in script and "-F ztunnel-OUTPUT\n-X ztunnel-OUTPUT\n" in script
    assert "KUBE" not in script


def test_iptables_parse_save():
    state = iptables.parse_save("# x\n*nat\n:PREROUTING ACCEPT [0:0]\n:ztunnel-X - [0:0]\n-A PREROUTING -j ztunnel-X\nCOMMIT\n")
    assert state["nat"].chains == {"PREROUTING": ["-j ztunnel-X"], "ztunnel-X": []}


SET = IpsetPlan("ztunnel-pods-ips", "hash:ip", (IpsetEntry("10.4.4.19", "uid-sleep"), IpsetEntry("10.4.4.7", "uid-d")))


def test_ipset_adds_removes_and_recomments_only_what_differs():
    actual = ipset.parse_save("ztunnel-pods-ips", 'create ztunnel-pods-ips hash:ip family inet hashsize 1024 maxelem 65536 comment\n'
                              'add ztunnel-pods-ips 10.4.4.7 comment "uid-old"\nadd ztunnel-pods-ips 10.4.4.99 comment "uid-gone"\n')
    d = ipset.diff("ztunnel-pods-ips", SET, actual)
    assert d.work.script == ["del ztunnel-pods-ips 10.4.4.7", 'add ztunnel-pods-ips 10.4.4.7 comment "uid-d"',
                             "del ztunnel-pods-ips 10.4.4.99", 'add ztunnel-pods-ips 10.4.4.19 comment "uid-sleep"']
    assert [c.action for c in d.changes] == ["update", "remove", "add"] and d.unchanged == 0
    assert not d.work.destroy


def test_ipset_entries_already_there_are_counted_not_touched():
    actual = ipset.parse_save("ztunnel-pods-ips", 'create ztunnel-pods-ips hash:ip comment\n'
                              'add ztunnel-pods-ips 10.4.4.7 comment "uid-d"\n')
    d = ipset.diff("ztunnel-pods-ips", SET, actual)
    assert d.work.script == ['add ztunnel-pods-ips 10.4.4.19 comment "uid-sleep"'] and d.unchanged == 1


def test_ipset_without_comments_is_swapped_not_destroyed():
    actual = ipset.parse_save("ztunnel-pods-ips", "create ztunnel-pods-ips hash:ip family inet hashsize 1024 maxelem 65536\n")
    d = ipset.diff("ztunnel-pods-ips", SET, actual)
    assert d.work.script[0] == "create ztunnel-pods-ips-new hash:ip comment"
    assert d.work.script[-2:] == ["swap ztunnel-pods-ips-new ztunnel-pods-ips", "destroy ztunnel-pods-ips-new"]


def test_ipset_not_wanted_is_destroyed_last():
    actual = ipset.parse_save("ztunnel-pods-ips", "create ztunnel-pods-ips hash:ip comment\n")
    d = ipset.diff("ztunnel-pods-ips", None, actual)
    assert d.work.destroy and d.work.script == []
    one = ipset.parse_save("ztunnel-pods-ips", 'create ztunnel-pods-ips hash:ip comment\nadd ztunnel-pods-ips 10.0.0.1 comment "u"\n')
    assert [str(c) for c in ipset.diff("ztunnel-pods-ips", None, one).changes] == [
        "ipset: remove set ztunnel-pods-ips (1 entry)"]  # not "1 entries"


def test_routes_keyed_by_table_and_destination():
    keep = Route(100, "10.4.4.18/32", "veth300a1d80", scope="link")
    pod = Route(100, "10.4.4.19/32", "istioin", gateway="192.168.126.2", src="10.4.4.1")
    stale = Route(100, "10.4.4.50/32", "istioin", gateway="192.168.126.2", src="10.4.4.1")
    moved = Route(101, "10.4.4.18/32", "vethold", scope="link")
    want_moved = Route(101, "10.4.4.18/32", "veth300a1d80", scope="link")
    d = routing.diff_routes((keep, pod, want_moved), [(keep, None), (stale, None), (moved, None)])
    assert d.unchanged == 1 and [c for c, _ in d.work] == d.changes
    assert [str(c) for c in d.changes] == [
        "route: remove table 100: 10.4.4.50 via 192.168.126.2 dev istioin src 10.4.4.1",
        "route: remove table 101: 10.4.4.18 dev vethold scope link",
        "route: add table 100: 10.4.4.19 via 192.168.126.2 dev istioin src 10.4.4.1",
        "route: add table 101: 10.4.4.18 dev veth300a1d80 scope link",
    ]


def test_rules_unrecognised_or_duplicated_at_our_priorities_are_removed():
    r101 = Rule(101, table=101, fwmark=0x100, fwmask=0x100)

    class Msg:
        def get_attr(self, name):
            return 101

    d = routing.diff_rules((r101, Rule(103, table=100)), [(r101, None), (r101, None), (None, Msg())])
    assert d.unchanged == 1  # one of the two copies of 101 stays
    assert [str(c) for c in d.changes] == [
        "rule: remove 101:\tfrom all fwmark 0x100/0x100 lookup 101",
        "rule: remove priority 101 (unrecognised)",
        "rule: add 103:\tfrom all lookup 100",
    ]


def test_sysctls_that_differ_or_do_not_exist_yet_are_written():
    forward, rp = Sysctl("net/ipv4/ip_forward", "1"), Sysctl("net/ipv4/conf/istioin/rp_filter", "0")
    d = sysctl.diff((forward, rp), {"net/ipv4/ip_forward": "1"})
    assert d.work == [rp] and d.unchanged == 1
    assert [str(c) for c in d.changes] == ["sysctl: update net.ipv4.conf.istioin.rp_filter = 0"]


TUNNEL = Tunnel("istioin", TunnelKind.VXLAN, 1000, "10.4.4.30", "192.168.126.1", 30, 1410)


def link_state(**kw):
    base = dict(name="istioin", index=7, kind="vxlan", vni=1000, remote="10.4.4.18", port=6081, mtu=1410, up=True,
                addresses=[("192.168.126.1", 30)])
    base.update(kw)
    return links.LinkState(**base)


def test_link_new_remote_is_changed_in_place():
    d = links.diff((TUNNEL,), {"istioin": link_state()}, ("istioin", "istioout"))
    assert [str(c) for c in d.changes] == ["link: update istioin remote 10.4.4.18 -> 10.4.4.30"]
    assert d.unchanged == 0


def test_link_as_planned_is_counted():
    d = links.diff((TUNNEL,), {"istioin": link_state(remote="10.4.4.30")}, ("istioin", "istioout"))
    assert d.in_sync and d.work == [] and d.unchanged == 1


def test_link_of_another_kind_is_replaced_and_stale_links_removed():
    d = links.diff((TUNNEL,), {"istioin": link_state(kind="geneve", remote="10.4.4.30"),
                               "istioout": link_state(name="istioout")}, ("istioin", "istioout"))
    assert [str(c) for c in d.changes] == [
        "link: remove istioout (vxlan)",
        "link: update istioin vxlan id 1000 remote 10.4.4.30 dstport 6081 mtu 1410 (replaces geneve id 1000 dstport 6081)",
    ]


def test_missing_tools_are_named_with_their_packages(monkeypatch):
    monkeypatch.setattr(preflight.shutil, "which", lambda tool: None if tool in ("ipset", "nsenter") else f"/usr/sbin/{tool}")
    with pytest.raises(CniError, match=r"missing tools, nothing was changed: ipset \(package ipset\), nsenter \(package util-linux\)"):
        preflight.check_tools(ipset=True, netns=True)


def test_missing_kernel_features_are_named():
    features = preflight.KernelFeatures(missing={"TPROXY": "the TPROXY target (module xt_TPROXY): No such file"})
    with pytest.raises(CniError, match="kernel lacks .* TPROXY: the TPROXY target"):
        preflight.require(features, ("TPROXY", "ipset"))
    preflight.require(features, ("ipset",))  # not needed: no complaint


def test_geneve_tunnels_are_asked_for_as_in_2022():
    attrs = links._tunnel_attrs(Tunnel("istioout", TunnelKind.GENEVE, 1001, "10.4.4.18", "192.168.127.1", 30, 1410))
    assert attrs == {"kind": "geneve", "geneve_id": 1001, "geneve_remote": "10.4.4.18", "geneve_port": 6081,
                     "geneve_udp_csum": 0}


@pytest.mark.root
def test_a_killed_agent_s_probe_namespace_is_removed(monkeypatch):
    import subprocess

    stale = f"{preflight.PROBE_PREFIX}999999999"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        preflight._remove_stale_probes()
        assert stale not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_conntrack_redirected_flows_of_uncaptured_pods_go_grouped_per_pod():
    flows = [conntrack.Flow(6, "10.4.4.19", 40000 + i, "10.8.14.226", 9080) for i in range(5)]
    flows += [conntrack.Flow(6, "10.4.4.25", 42000, "10.8.1.10", 80)]
    d = conntrack.diff(("10.4.4.19", "10.4.4.25"), flows)
    assert [str(ch) for ch in d.changes] == [
        "conntrack: remove 5 connection(s) of 10.4.4.19 redirected while it was captured (tcp 10.4.4.19:40000"
        " -> 10.8.14.226:9080, tcp 10.4.4.19:40001 -> 10.8.14.226:9080, tcp 10.4.4.19:40002 -> 10.8.14.226:9080, ...)",
        "conntrack: remove 1 connection(s) of 10.4.4.25 redirected while it was captured (tcp 10.4.4.25:42000"
        " -> 10.8.1.10:80)",
    ]
    assert [len(group) for _change, group in d.work.groups] == [5, 1] and not d.work.everything
    assert conntrack.diff(("10.4.4.19",), []).in_sync


def test_conntrack_with_no_pod_captured_every_redirected_flow_goes_in_one_flush():
    flows = [conntrack.Flow(6, "10.4.4.19", 40000, "10.8.14.226", 9080)]
    d = conntrack.diff(None, flows)
    assert d.work.everything and [str(ch) for ch in d.changes] == [
        "conntrack: remove every connection redirected while its pod was captured"
        " (e.g. tcp 10.4.4.19:40000 -> 10.8.14.226:9080)"]
    assert conntrack.diff(None, []).in_sync

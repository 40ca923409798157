"""Applying the plan to real network namespaces (the article's node A), and taking it away again."""

from __future__ import annotations

import asyncio
import re
import shutil
import time

import pytest

from zpilot import contract as c

from .conftest import ARTICLE, TESTDATA
from .kernel_state import ip_route_table, ip_rule, ipset_list, iptables_save, snapshot, tunnel_summary
from .topology import add_foreign_state, get_sysctl, in_ns, sh

pytestmark = [pytest.mark.root, pytest.mark.netns]

NODE_TUNNELS = (c.INBOUND_TUNNEL, c.OUTBOUND_TUNNEL)
ZTUNNEL_TUNNELS = (c.ZTUNNEL_INBOUND_TUNNEL, c.ZTUNNEL_OUTBOUND_TUNNEL)


def expected(name: str) -> str:
    return (TESTDATA / name).read_text()


def apply_ok(agent):
    plan, reports = agent.reconcile_once()
    for report in reports:
        assert report.ok, report.errors
    return plan, reports


def changes(reports) -> list[str]:
    return [str(ch) for r in reports for ch in r.changes]


def test_applied_state_matches_the_article_listings(topology, make_agent):
    add_foreign_state(topology)
    apply_ok(make_agent())
    node, zt = topology.node, topology.ztunnel
    assert iptables_save(node) == expected("node.iptables-save.txt")
    assert ip_rule(node) == expected("node.ip-rule.txt")
    for table in ("100", "101", "102"):
        assert ip_route_table(node, table) == expected(f"node.route-{table}.txt"), table
    assert ipset_list(node) == expected("node.ipset-list.txt")
    assert tunnel_summary(node, NODE_TUNNELS) == expected("node.tunnels.txt")
    assert iptables_save(zt) == expected("ztunnel.iptables-save.txt")
    assert ip_rule(zt) == expected("ztunnel.ip-rule.txt")
    for table in ("100", "101", "102"):
        assert ip_route_table(zt, table) == expected(f"ztunnel.route-{table}.txt"), table
    assert tunnel_summary(zt, ZTUNNEL_TUNNELS) == expected("ztunnel.tunnels.txt")
    assert get_sysctl(node, "net/ipv4/conf/veth300a1d80/rp_filter") == "0"
    assert get_sysctl(node, "net/ipv4/conf/vethsleep/rp_filter") == "0"
    assert get_sysctl(node, "net/ipv4/ip_forward") == "1"
    assert get_sysctl(zt, "net/ipv4/conf/pistioout/accept_local") == "1"


def test_the_article_s_own_lines_are_all_there(topology, make_agent):
    """Every line the article prints for node A and ztunnel A (veth names as in its iptables listing)."""
    add_foreign_state(topology)
    apply_ok(make_agent())
    listings = expected("article-node-a.txt")
    actual = {
        "node iptables-save": iptables_save(topology.node),
        "node ip rule": ip_rule(topology.node),
        "node ip route show table 101": ip_route_table(topology.node, "101"),
        "ztunnel iptables-save": iptables_save(topology.ztunnel),
        "ztunnel ip rule": ip_rule(topology.ztunnel),
        "ztunnel ip route show table 100": ip_route_table(topology.ztunnel, "100"),
    }
    section = None
    for line in listings.splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif line and not line.startswith("#"):
            text = actual[section]
            if section.endswith("iptables-save"):
                # the article's rules sit in the built-in chain; ours in a chain jumped to from it
                line = re.sub(r"^-A PREROUTING (-i pistio)", r"-A ztunnel-PREROUTING \1", line)
            assert re.sub(r"\s+", " ", line.strip()) in {re.sub(r"\s+", " ", l.strip()) for l in text.splitlines()}, (
                section, line)


def test_applying_twice_changes_nothing_and_keeps_counters(topology, make_agent):
    agent = make_agent()
    apply_ok(agent)
    in_ns(topology.pod("sleep"), "python3", "-c",
          "import socket\ns=socket.socket(); s.settimeout(0.5)\ntry: s.connect(('10.8.14.226', 9080))\nexcept OSError: pass")
    before = iptables_save(topology.node, counters=True)
    assert re.search(r"\[[1-9]\d*:\d+\] -A ztunnel-PREROUTING -p tcp -m set", before), "the SYN was not counted"
    _, reports = apply_ok(agent)
    assert changes(reports) == []
    assert all(r.in_sync for r in reports)
    assert iptables_save(topology.node, counters=True) == before


def test_adding_and_removing_a_pod_touches_only_its_entries(topology, make_agent, manifests):
    pods = manifests / "pods.yaml"
    original = pods.read_text()
    # take sleep out of the model: it is no longer a pod of node A
    pods.write_text(original.replace("nodeName: gke-jimmy-cluster-default-pool-d5041909-d10i\n    containers:\n    - name: sleep",
                                     "nodeName: elsewhere\n    containers:\n    - name: sleep"))
    agent = make_agent()
    apply_ok(agent)
    node = topology.node
    iptables_before, rules_before = iptables_save(node), ip_rule(node)
    links_before = in_ns(node, "ip", "-o", "link", "show", "istioin")
    pods.write_text(original)
    _, reports = apply_ok(agent)
    assert sorted(changes(reports)) == [
        "ipset: add ztunnel-pods-ips 10.4.4.19 (pod uid 85c8c34e-7ae3-4d29-9582-0819e2b10c69)",
        "route: add table 100: 10.4.4.19 via 192.168.126.2 dev istioin src 10.4.4.1",
        "sysctl: update net.ipv4.conf.vethsleep.rp_filter = 0",
    ]
    assert (iptables_save(node), ip_rule(node)) == (iptables_before, rules_before)
    assert in_ns(node, "ip", "-o", "link", "show", "istioin") == links_before
    pods.write_text(original.replace("nodeName: gke-jimmy-cluster-default-pool-d5041909-d10i\n    containers:\n    - name: sleep",
                                     "nodeName: elsewhere\n    containers:\n    - name: sleep"))
    _, reports = apply_ok(agent)
    assert sorted(changes(reports)) == [
        "ipset: remove ztunnel-pods-ips 10.4.4.19 (pod uid 85c8c34e-7ae3-4d29-9582-0819e2b10c69)",
        "route: remove table 100: 10.4.4.19 via 192.168.126.2 dev istioin src 10.4.4.1",
    ]
    assert "10.4.4.19" not in ipset_list(node) and "10.4.4.19" not in ip_route_table(node, "100")


def test_a_new_ztunnel_pod_updates_in_place(topology, make_agent, manifests):
    """A ztunnel rollout: new IP (and veth); tunnels are re-pointed, the pods' routes are not touched."""
    agent = make_agent()
    apply_ok(agent)
    node = topology.node
    index_before = in_ns(node, "cat", "/sys/class/net/istioin/ifindex")
    # the new ztunnel pod: 10.4.4.30 behind a new veth, the old one gone
    sh("ip", "-n", node, "route", "add", "10.4.4.30/32", "dev", "veth300a1d80", "scope", "link")
    path = manifests / "istio-system.yaml"
    path.write_text(path.read_text().replace("10.4.4.18", "10.4.4.30"))
    _, reports = apply_ok(agent)
    done = changes(reports)
    assert "link: update istioin remote 10.4.4.18 -> 10.4.4.30" in done
    assert not any("ztunnel-pods-ips" in ch or "via 192.168.126.2" in ch for ch in done), done
    assert in_ns(node, "cat", "/sys/class/net/istioin/ifindex") == index_before
    assert "remote 10.4.4.30" in in_ns(node, "ip", "-d", "link", "show", "istioout")
    assert "! -s 10.4.4.30/32 -i veth300a1d80" in iptables_save(node)
    assert "10.4.4.30 dev veth300a1d80 scope link" in ip_route_table(node, "101")
    _, reports = apply_ok(agent)
    assert changes(reports) == []


async def test_resync_restores_what_was_deleted_by_hand(topology, make_agent):
    agent = make_agent()
    await asyncio.to_thread(apply_ok, agent)
    node = topology.node
    wanted = iptables_save(node), ip_rule(node), ip_route_table(node, "100"), ipset_list(node)
    in_ns(node, "iptables", "-t", "mangle", "-D", "ztunnel-PREROUTING", "-p", "tcp", "-m", "set", "--match-set",
          "ztunnel-pods-ips", "src", "-j", "MARK", "--set-xmark", "0x100/0x100")
    in_ns(node, "iptables", "-t", "nat", "-D", "PREROUTING", "-j", "ztunnel-PREROUTING")
    sh("ip", "-n", node, "rule", "del", "priority", "101")
    sh("ip", "-n", node, "route", "del", "10.4.4.7/32", "table", "100")
    in_ns(node, "ipset", "del", "ztunnel-pods-ips", "10.4.4.11")
    stop = asyncio.Event()
    rounds: list[list[str]] = []
    run = asyncio.create_task(agent.run(stop, resync=0.2, on_reconcile=lambda p, r: rounds.append(changes(r))))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(rounds) < 2:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)
    assert len(rounds) >= 2, "the agent did not reconcile twice in 10 s"
    assert (iptables_save(node), ip_rule(node), ip_route_table(node, "100"), ipset_list(node)) == wanted
    assert any("rule: add 101:" in ch for ch in rounds[0]) and rounds[-1] == []


def test_the_nat_jump_is_moved_back_in_front_of_kube_proxy(topology, make_agent):
    add_foreign_state(topology)
    agent = make_agent()
    apply_ok(agent)
    node = topology.node
    in_ns(node, "iptables", "-t", "nat", "-D", "PREROUTING", "-j", "ztunnel-PREROUTING")
    in_ns(node, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", "ztunnel-PREROUTING")
    _, reports = apply_ok(agent)
    assert changes(reports) == ["iptables: update nat PREROUTING: -j ztunnel-PREROUTING (make it the first rule)"]
    nat = in_ns(node, "iptables-save", "-t", "nat")
    prerouting = [l for l in nat.splitlines() if l.startswith("-A PREROUTING")]
    assert prerouting[:2] == ["-A PREROUTING -j ztunnel-PREROUTING",
                              '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']


def test_cleanup_leaves_no_residue(topology, make_agent):
    add_foreign_state(topology)
    namespaces = (topology.node, topology.ztunnel)
    before = {ns: snapshot(ns) for ns in namespaces}
    agent = make_agent()
    apply_ok(agent)
    assert snapshot(topology.node) != before[topology.node]
    reports = agent.cleanup()
    assert all(r.ok for r in reports) and changes(reports)
    for ns in namespaces:
        after = snapshot(ns)
        for what in before[ns]:
            assert after[what] == before[ns][what], f"{ns}: {what}"
    assert all(r.in_sync for r in agent.cleanup())  # and a second cleanup finds nothing


def test_a_failure_half_way_is_reported_and_the_next_reconcile_converges(topology, make_agent):
    agent = make_agent()
    # the ztunnel side cannot be applied: its interface is not eth0 under this name
    broken = make_agent(ztunnel_iface="nosuchif0")
    plan, reports = broken.reconcile_once()
    node_report, zt_report = reports
    assert node_report.ok
    assert not zt_report.ok and "nosuchif0" in zt_report.errors[0]
    _, reports = apply_ok(agent)
    assert changes(reports)
    _, reports = apply_ok(agent)
    assert changes(reports) == []


def test_missing_ztunnel_fails_open_then_closed(topology, make_agent, manifests):
    agent = make_agent()
    apply_ok(agent)
    (manifests / "istio-system.yaml").unlink()
    plan, reports = apply_ok(agent)
    assert plan.mode.value == "fail-open" and "NO READY ZTUNNEL" in plan.alerts[0]
    assert "ztunnel-" not in iptables_save(topology.node) and "ztunnel-pods-ips" not in ipset_list(topology.node)
    plan, reports = apply_ok(make_agent(fail_closed=True))
    assert plan.mode.value == "fail-closed"
    saved = iptables_save(topology.node)
    assert "-A ztunnel-PREROUTING -p tcp -m set --match-set ztunnel-pods-ips src -j DROP" in saved
    assert "10.4.4.19" in ipset_list(topology.node)
    assert ip_rule(topology.node).count("lookup") == 3  # local, main, default: nothing of ours
    # the ztunnel is back: full redirection again, without the drops
    shutil.copy(ARTICLE / "istio-system.yaml", manifests / "istio-system.yaml")
    plan, reports = apply_ok(make_agent(fail_closed=True))
    assert plan.mode.value == "redirect" and not plan.alerts
    saved = iptables_save(topology.node)
    assert "-j DROP" not in saved and "--match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100" in saved
    assert ip_rule(topology.node) == expected("node.ip-rule.txt").replace("200:\tfrom all fwmark 0x4000/0x4000 lookup 200\n", "")


def test_a_node_on_iptables_legacy_gets_legacy_rules(topology, make_agent):
    """kube-proxy in legacy mode: our rules must go where its rules are, or neither set works fully."""
    in_ns(topology.node, "iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES")
    in_ns(topology.node, "iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES")
    agent = make_agent(ztunnel_netns=None)
    apply_ok(agent)
    assert agent.node.backend.name == "legacy"
    legacy = in_ns(topology.node, "iptables-legacy-save", "-t", "nat")
    assert "-A PREROUTING -j ztunnel-PREROUTING\n-A PREROUTING -j KUBE-SERVICES" in legacy
    assert "ztunnel-" not in in_ns(topology.node, "iptables-nft-save")
    _, reports = apply_ok(agent)
    assert changes(reports) == []
    assert all(r.ok for r in agent.cleanup())
    assert "ztunnel-" not in in_ns(topology.node, "iptables-legacy-save")

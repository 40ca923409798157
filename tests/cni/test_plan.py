"""The node plan, computed from the model without touching the kernel."""

from __future__ import annotations

import dataclasses

import pytest

from zpilot import contract as c
from zpilot.cni.desired import Mode, TunnelKind
from zpilot.cni.plan import NodeFacts, PlanError, build_plan
from zpilot.cni.preflight import KernelFeatures, choose_tunnel
from zpilot.cni.render import render_plan
from zpilot.cni.errors import CniError
from zpilot.kube.manifests import load_manifests
from zpilot.model.index import MeshIndex
from zpilot.model.objects import Cluster, Workload

from .conftest import ARTICLE, TESTDATA
from .topology import NODE_A

FACTS = NodeFacts(ztunnel_veth="veth300a1d80", host_ip="10.4.4.1", tunnel_kind=TunnelKind.VXLAN)


def article() -> Cluster:
    return load_manifests(ARTICLE).cluster


def plan_for(cluster: Cluster, facts: NodeFacts = FACTS, **kw):
    return build_plan(MeshIndex.build(cluster), NODE_A, facts, **kw)


def without(cluster: Cluster, name_prefix: str) -> Cluster:
    return dataclasses.replace(cluster, workloads=tuple(w for w in cluster.workloads if not w.name.startswith(name_prefix)))


def test_node_a_plan_renders_as_the_checked_in_listing():
    """The article's node A: its chains, set, rules, tables and tunnels, as an operator reads them."""
    text = render_plan(plan_for(article()))
    assert text == (TESTDATA / "node-a.plan.txt").read_text()


def test_meshed_pods_are_the_index_s():
    plan = plan_for(article())
    assert plan.mode is Mode.REDIRECT
    assert [w.name for w in plan.meshed] == [
        "details-v1-6997d94bb9-4jssp", "reviews-v1-9c6bb6658-4jgrh", "sleep-5644bdc767-2dfg7"]
    entries = {e.ip: e.comment for e in plan.node_side.ipset.entries}
    assert entries["10.4.4.19"] == "85c8c34e-7ae3-4d29-9582-0819e2b10c69"
    assert "10.4.4.25" not in entries  # legacy-client opted out
    assert plan.ztunnel.name == "ztunnel-rts54"


def test_the_outbound_mark_rule_is_last_and_matches_the_set():
    chain = next(ch for ch in plan_for(article()).node_side.chains if ch.table == "mangle" and ch.name == c.PREROUTING)
    assert chain.rules[-1] == "-p tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100"
    assert "! -s 10.4.4.18/32 -i veth300a1d80 -j MARK --set-xmark 0x210/0x210" in chain.rules


def test_ztunnel_side_hairpins_15088_to_15008():
    zt = plan_for(article()).ztunnel_side
    nat = next(ch for ch in zt.chains if ch.table == "nat")
    assert nat.rules == ("-p tcp -m tcp --dport 15088 -j REDIRECT --to-ports 15008",)
    assert [j.hook for j in zt.jumps if j.table == "nat"] == ["OUTPUT"]


def test_a_pod_added_changes_only_its_set_entry_and_route():
    before = plan_for(without(article(), "sleep-"))
    after = plan_for(article())
    assert set(after.node_side.routes) - set(before.node_side.routes) == {
        next(r for r in after.node_side.routes if r.dst == "10.4.4.19/32")}
    assert set(before.node_side.routes) <= set(after.node_side.routes)
    assert after.node_side.chains == before.node_side.chains
    assert after.node_side.tunnels == before.node_side.tunnels and after.node_side.rules == before.node_side.rules
    assert {e.ip for e in after.node_side.ipset.entries} - {e.ip for e in before.node_side.ipset.entries} == {"10.4.4.19"}


def test_no_ztunnel_fails_open_by_default_and_says_so():
    plan = plan_for(without(article(), "ztunnel-rts54"))
    assert plan.mode is Mode.FAIL_OPEN
    assert plan.node_side.is_empty and plan.ztunnel_side is None
    assert len(plan.alerts) == 1 and "NO READY ZTUNNEL" in plan.alerts[0] and "NOT meshed" in plan.alerts[0]
    assert "Pod default/sleep-5644bdc767-2dfg7" in plan.alerts[0]


def test_no_ztunnel_fail_closed_drops_meshed_tcp():
    plan = plan_for(without(article(), "ztunnel-rts54"), fail_closed=True)
    assert plan.mode is Mode.FAIL_CLOSED
    assert "DROPPED" in plan.alerts[0]
    (chain,) = plan.node_side.chains
    assert chain.rules == ("-p tcp -m set --match-set ztunnel-pods-ips src -j DROP",
                           "-p tcp -m set --match-set ztunnel-pods-ips dst -j DROP")
    assert len(plan.node_side.ipset.entries) == 3 and not plan.node_side.tunnels and not plan.node_side.rules


def test_an_unready_ztunnel_does_not_count():
    cluster = article()
    cluster = dataclasses.replace(cluster, workloads=tuple(
        dataclasses.replace(w, ready=False) if w.name == "ztunnel-rts54" else w for w in cluster.workloads))
    assert plan_for(cluster).mode is Mode.FAIL_OPEN


def test_no_ztunnel_and_no_meshed_pods_is_quietly_idle():
    cluster = dataclasses.replace(article(), workloads=())
    plan = plan_for(cluster)
    assert plan.mode is Mode.IDLE and not plan.alerts and plan.node_side.is_empty


def test_unknown_node_is_named():
    with pytest.raises(PlanError, match="Node nope is not in the model.*gke-jimmy"):
        build_plan(MeshIndex.build(article()), "nope", FACTS)


def test_unknown_ztunnel_veth_asks_for_the_flag():
    with pytest.raises(PlanError, match=r"host-side veth of Pod istio-system/ztunnel-rts54 .*--ztunnel-veth"):
        plan_for(article(), dataclasses.replace(FACTS, ztunnel_veth=None))


def test_host_ip_falls_back_to_internal_ip():
    plan = plan_for(article(), dataclasses.replace(FACTS, host_ip=None))
    assert plan.host_ip == "10.168.15.222"
    assert any("-s 10.168.15.222/32" in r for ch in plan.node_side.chains for r in ch.rules)


def test_ipv6_pod_is_reported_and_left_out():
    cluster = article()
    v6 = Workload("v6", "default", "uid-v6", ("fd00::5",), NODE_A, "default", phase="Running")
    cluster = dataclasses.replace(cluster, workloads=cluster.workloads + (v6,))
    index = MeshIndex.build(cluster)
    plan = build_plan(index, NODE_A, FACTS)
    assert "fd00::5" not in {e.ip for e in plan.node_side.ipset.entries}
    assert any("IPv4-only" in str(p) and "default/v6" in str(p) for p in index.problems)


def test_pod_veths_get_loose_rp_filter():
    plan = plan_for(article(), dataclasses.replace(FACTS, pod_veths={"10.4.4.19": "vethsleep"}))
    assert any(s.path == "net/ipv4/conf/vethsleep/rp_filter" and s.value == "0" for s in plan.node_side.sysctls)


@pytest.mark.parametrize(
    ("requested", "geneve", "vxlan", "expected"),
    [("auto", True, True, TunnelKind.GENEVE), ("auto", False, True, TunnelKind.VXLAN),
     ("vxlan", True, True, TunnelKind.VXLAN), ("geneve", True, False, TunnelKind.GENEVE)],
)
def test_tunnel_choice(requested, geneve, vxlan, expected):
    assert choose_tunnel(requested, KernelFeatures(geneve=geneve, vxlan=vxlan)) is expected


def test_tunnel_choice_refuses_what_the_kernel_lacks():
    with pytest.raises(CniError, match="cannot create Geneve"):
        choose_tunnel("geneve", KernelFeatures(geneve=False, vxlan=True))
    with pytest.raises(CniError, match="neither Geneve nor VXLAN"):
        choose_tunnel("auto", KernelFeatures())


def test_odd_uids_become_safe_ipset_comments():
    cluster = article()
    odd = [dataclasses.replace(w, uid='a b"c;d') if w.name.startswith("sleep-") else
           dataclasses.replace(w, uid="") if w.name.startswith("details-") else w for w in cluster.workloads]
    plan = plan_for(dataclasses.replace(cluster, workloads=tuple(odd)))
    comments = {e.ip: e.comment for e in plan.node_side.ipset.entries}
    assert comments["10.4.4.19"] == "a_b_c_d"
    assert comments["10.4.4.7"] == "default/details-v1-6997d94bb9-4jssp"


@pytest.mark.parametrize("veth", ["", "a very long veth name", "veth/1"])
def test_bad_interface_names_are_refused_by_name(veth):
    with pytest.raises(PlanError, match="ztunnel-veth|host-side veth"):
        plan_for(article(), dataclasses.replace(FACTS, ztunnel_veth=veth))


def test_bad_host_ip_is_named():
    with pytest.raises(PlanError, match=r"got 'not-an-ip' from --host-ip"):
        plan_for(article(), dataclasses.replace(FACTS, host_ip="not-an-ip"))

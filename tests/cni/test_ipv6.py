"""IPv6 and dual-stack pods (issue 11, point 3) on the CNI side: the agent keeps working for every pod.

Before the fix, discovery looked up each meshed pod's veth as an IPv4 address: one IPv6 pod on the node
made every reconcile of ``zpilot cni run`` fail, for every pod.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from zpilot.cni import agent as agent_module
from zpilot.cni.agent import AgentOptions, NodeAgent
from zpilot.cni.desired import Mode, TunnelKind
from zpilot.cni.plan import NodeFacts, build_plan
from zpilot.cni.preflight import KernelFeatures
from zpilot.cni.render import render_plan
from zpilot.kube.directory import ManifestDirectorySource
from zpilot.kube.manifests import load_manifests
from zpilot.kube.source import load_model
from zpilot.model import MeshIndex

from ..ipv6_cluster import DUAL_STACK_V4, IPV6_ADDRESSES, NODE_A, article_with_ipv6
from .kernel_state import ip_route_table, ipset_list
from .topology import HOST_IP, ZTUNNEL_VETH

MESHED_V4 = {"10.4.4.7", "10.4.4.11", "10.4.4.19", *DUAL_STACK_V4.values()}


@pytest.fixture
def dual_stack(tmp_path) -> Path:
    return article_with_ipv6(tmp_path / "cluster")


def test_plan_keeps_the_ipv4_pods_and_holds_no_ipv6(dual_stack: Path) -> None:
    loaded = load_manifests(dual_stack)
    index = MeshIndex.build(loaded.cluster, loaded.problems)
    plan = build_plan(index, NODE_A, NodeFacts(ztunnel_veth=ZTUNNEL_VETH, host_ip=HOST_IP, tunnel_kind=TunnelKind.VXLAN))
    assert plan.mode is Mode.REDIRECT
    assert {e.ip for e in plan.node_side.ipset.entries} == MESHED_V4
    text = render_plan(plan)
    assert [ip for ip in IPV6_ADDRESSES if ip in text] == []


def test_plans_of_dual_stack_and_ipv6_only_nodes(dual_stack: Path) -> None:
    index = MeshIndex.build(load_manifests(dual_stack).cluster)
    facts = NodeFacts(ztunnel_veth=ZTUNNEL_VETH)
    assert build_plan(index, "node-dual", facts).host_ip == "10.168.15.5"
    assert build_plan(index, "node-v6-only", facts).host_ip is None


def test_the_agent_s_plan_discovers_in_its_own_namespace_without_raising(dual_stack: Path, monkeypatch) -> None:
    """The agent's whole planning path (load, discover in the agent's own netns, plan), read-only:
    only the kernel probe, which needs a scratch namespace, answers from here."""
    monkeypatch.setattr(agent_module.preflight, "probe_kernel", lambda backend: KernelFeatures(geneve=True, vxlan=True))
    source = ManifestDirectorySource(dual_stack)
    agent = NodeAgent(AgentOptions(node=NODE_A, ztunnel_veth=ZTUNNEL_VETH, host_ip=HOST_IP, tunnel="vxlan"), source)
    index = load_model(source)
    plan = agent.plan(index)
    assert {w.ip for w in plan.meshed} == MESHED_V4
    assert any("v6-only-a" in p.subject and "IPv6-only" in p.reason for p in index.problems)


@pytest.mark.root
@pytest.mark.netns
def test_the_agent_reconciles_the_other_pods(topology, make_agent, dual_stack: Path) -> None:
    plan, reports = make_agent(manifests=dual_stack).reconcile_once()
    assert all(r.ok for r in reports), [r.errors for r in reports]
    assert plan.mode is Mode.REDIRECT
    members = ipset_list(topology.node)
    assert all(ip in members for ip in MESHED_V4), members
    routes = ip_route_table(topology.node, "100")
    assert f"{DUAL_STACK_V4['dual-v6-first']} via" in routes
    assert not any(ip in members + routes for ip in IPV6_ADDRESSES)

"""Fixtures for the CNI tests: the article's node A in throwaway network namespaces.

Tests marked ``root`` are skipped (with the reason) when not run as root or when the tools they
drive are missing; every namespace a test creates is deleted afterwards, also when it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from zpilot.cni.agent import AgentOptions, NodeAgent
from zpilot.kube.directory import ManifestDirectorySource

from .topology import NODE_A, Topology

REPO = Path(__file__).resolve().parents[2]
ARTICLE = REPO / "examples" / "article"
TESTDATA = Path(__file__).parent / "testdata"
TOOLS = ("ip", "iptables-save", "iptables-restore", "ipset", "nsenter")


def pytest_collection_modifyitems(config, items):
    missing = [t for t in TOOLS if shutil.which(t) is None]
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, iptables)"
    elif missing:
        reason = "missing tools: " + ", ".join(missing)
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    here = Path(__file__).parent
    for item in items:  # this hook sees the whole session's items: only ours are touched
        if "root" in item.keywords and here in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture
def topology():
    topo = Topology().build()
    try:
        yield topo
    finally:
        topo.destroy()


@pytest.fixture
def manifests(tmp_path) -> Path:
    """A private copy of the article's cluster, so a test can add and remove pods."""
    target = tmp_path / "cluster"
    shutil.copytree(ARTICLE, target)
    return target


@pytest.fixture
def make_agent(topology, manifests):
    def make(source=None, manifests: Path = manifests, **overrides) -> NodeAgent:
        options = dict(node=NODE_A, netns=topology.node, ztunnel_netns=topology.ztunnel,
                       tunnel="vxlan")  # the checked-in expectations have VXLAN standing in for Geneve
        options.update(overrides)
        return NodeAgent(AgentOptions(**options), source or ManifestDirectorySource(manifests, interval=0.05))

    return make

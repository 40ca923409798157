"""``zpilot cni`` as an operator runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from zpilot.cli import main

from .conftest import ARTICLE, TESTDATA
from .kernel_state import snapshot
from .topology import NODE_A, add_foreign_state, in_ns


def test_plan_prints_the_article_listing(capsys):
    code = main(["cni", "plan", "--node", NODE_A, "--manifests", str(ARTICLE), "--host-ip", "10.4.4.1",
                 "--ztunnel-veth", "veth300a1d80", "--tunnel", "vxlan"])
    assert code == 0
    assert capsys.readouterr().out == (TESTDATA / "node-a.plan.txt").read_text()


def test_plan_depends_on_its_arguments_only(capsys, monkeypatch):
    """Offline: no namespace, route or kernel is read, whoever runs it: what is not given comes from
    the model (the Node's InternalIP) or is a named placeholder (the veth only the node knows)."""
    from zpilot.cni import agent, discover, iptables, netns, preflight

    def untouchable(*_args, **_kw):
        raise AssertionError("zpilot cni plan looked at this machine")

    for module, name in ((netns.Netns, "run"), (netns.Netns, "iproute"), (preflight, "probe_kernel"),
                         (iptables, "detect_backend"), (discover, "discover"), (agent, "discover"),
                         (agent.preflight, "probe_kernel")):
        monkeypatch.setattr(module, name, untouchable)
    monkeypatch.setenv("NODE_NAME", "not-this-one")
    code = main(["cni", "plan", "--node", NODE_A, "--manifests", str(ARTICLE)])
    captured = capsys.readouterr()
    assert code == 0
    assert "veth of Pod istio-system/ztunnel-rts54 is known only on the node: shown as ZTUNNEL-VETH" in captured.err
    assert "! -i ZTUNNEL-VETH -m connmark" in captured.out
    assert "node address 10.168.15.222; tunnels geneve" in captured.out  # InternalIP, Geneve as in 2022
    assert "istioin: mtu 1410" in captured.out


def test_plan_needs_the_node_named(capsys, monkeypatch):
    monkeypatch.setenv("NODE_NAME", NODE_A)  # the agent's default, not the offline plan's
    with pytest.raises(SystemExit):
        main(["cni", "plan", "--manifests", str(ARTICLE)])
    assert "--node" in capsys.readouterr().err


def test_unknown_node_is_one_clear_line(capsys):
    code = main(["cni", "plan", "--node", "gke-nope", "--manifests", str(ARTICLE)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("zpilot cni: error: Node gke-nope is not in the model") and "Traceback" not in err


def test_missing_manifest_directory_is_named(capsys, tmp_path):
    code = main(["cni", "plan", "--node", NODE_A, "--manifests", str(tmp_path / "nope")])
    assert code == 2 and "manifest directory" in capsys.readouterr().err


#: Runs in a fresh interpreter: the flags of ``zpilot cni <command> --manifests`` parsed, the model source and
#: the agent's own pod taken from them as the command does, then whether the Kubernetes client was loaded.
SOURCE_WITHOUT_CLUSTER = """
import sys
from zpilot.cli import build_parser
from zpilot.cni.cli import _own_pod, _source
args = build_parser().parse_args(sys.argv[1:])
_own_pod(args) if hasattr(args, "cleanup_on_exit") else None
print(type(_source(args)).__name__, "kubernetes_asyncio" in sys.modules)
"""


@pytest.mark.parametrize("command", ["apply", "status", "run"])
def test_manifests_source_does_not_load_the_kubernetes_client(command):
    """With --manifests the agent and ``cni status``/``apply`` never talk to a cluster, so they do not import
    its client (kubernetes_asyncio: 0.5 s of CPU in every ``zpilot cni status`` the world's tests run)."""
    proc = subprocess.run([sys.executable, "-c", SOURCE_WITHOUT_CLUSTER, "cni", command, "--node", NODE_A,
                           "--manifests", str(ARTICLE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ManifestDirectorySource", "False"]


def test_missing_netns_is_named_before_anything_happens(capsys):
    code = main(["cni", "cleanup", "--netns", "zpilot-no-such-netns"])
    out = capsys.readouterr()
    assert code == 1
    assert "network namespace 'zpilot-no-such-netns' does not exist" in out.out


@pytest.mark.root
@pytest.mark.netns
def test_apply_status_cleanup(topology, manifests, capsys):
    ns = ["--netns", topology.node, "--ztunnel-netns", topology.ztunnel]
    model = ["--node", NODE_A, "--manifests", str(manifests), "--tunnel", "vxlan"]
    add_foreign_state(topology)  # the tables a real node has (see test_apply's cleanup test)
    before = snapshot(topology.node)

    assert main(["cni", "apply", *model, *ns]) == 0
    out = capsys.readouterr().out
    assert "mode redirect" in out and "changed: iptables: add mangle chain ztunnel-PREROUTING (15 rules)" in out

    assert main(["cni", "status", *model, *ns]) == 0
    out = capsys.readouterr().out
    assert "ztunnel Pod istio-system/ztunnel-rts54 10.4.4.18 via veth300a1d80; tunnels vxlan; 3 meshed pod(s)" in out
    assert f"netns {topology.node}: in sync" in out and f"netns {topology.ztunnel}: in sync" in out
    assert f"netns {topology.node}: 0 connections marked for the ztunnel; istioin rx 0 tx 0; istioout rx 0 tx 0" in out
    assert f"netns {topology.ztunnel}: TPROXY 15008: 0 packets; TPROXY 15001: 0 packets; TPROXY 15006: 0 packets" in out

    in_ns(topology.node, "ip", "rule", "del", "priority", "101")
    assert main(["cni", "status", *model, *ns]) == 1
    out = capsys.readouterr().out
    assert "OUT OF SYNC, 1 difference(s)" in out and "rule: add 101:\tfrom all fwmark 0x100/0x100 lookup 101" in out
    assert "101:" not in in_ns(topology.node, "ip", "rule")  # status only looks

    (manifests / "istio-system.yaml").unlink()
    assert main(["cni", "status", *model, *ns]) == 1
    out = capsys.readouterr().out
    assert "mode fail-open" in out and "!!! NO READY ZTUNNEL on Node gke-jimmy" in out

    assert main(["cni", "cleanup", *ns]) == 0
    assert "removed: link: remove istioin (vxlan)" in capsys.readouterr().out
    assert snapshot(topology.node) == before


@pytest.mark.root
@pytest.mark.netns
def test_missing_ipset_tool_is_named_and_nothing_changes(topology, manifests, capsys, monkeypatch):
    from zpilot.cni import preflight

    real_which = preflight.shutil.which
    monkeypatch.setattr(preflight.shutil, "which", lambda tool: None if tool == "ipset" else real_which(tool))
    before = snapshot(topology.node)
    code = main(["cni", "apply", "--node", NODE_A, "--manifests", str(manifests), "--netns", topology.node])
    assert code == 2
    assert "missing tools, nothing was changed: ipset (package ipset)" in capsys.readouterr().err
    assert snapshot(topology.node) == before


@pytest.mark.root
@pytest.mark.netns
def test_missing_tproxy_is_named_and_nothing_changes(topology, manifests, capsys, monkeypatch):
    from zpilot.cni import agent, preflight

    lacking = preflight.KernelFeatures(missing={"TPROXY": "the TPROXY target (module xt_TPROXY): No chain/target/match"},
                                       vxlan=True)
    monkeypatch.setattr(agent.preflight, "probe_kernel", lambda backend: lacking)
    before = snapshot(topology.node), snapshot(topology.ztunnel)
    code = main(["cni", "apply", "--node", NODE_A, "--manifests", str(manifests), "--netns", topology.node,
                 "--ztunnel-netns", topology.ztunnel])
    err = capsys.readouterr().err
    assert code == 2
    assert "the kernel lacks what the redirection needs, nothing was changed: TPROXY: the TPROXY target" in err
    assert (snapshot(topology.node), snapshot(topology.ztunnel)) == before


@pytest.mark.root
@pytest.mark.netns
def test_ztunnel_setup_from_inside_the_pod_matches_the_agent_s_ztunnel_side(topology, capsys):
    """Found from the pod alone (eth0's address, the default gateway, eth0's MTU): no model, no node access."""
    from .kernel_state import ip_route_table, ip_rule, iptables_save, tunnel_summary
    from .test_apply import ZTUNNEL_TUNNELS, expected

    add_foreign_state(topology)
    zt = topology.ztunnel
    before = snapshot(zt)
    assert main(["cni", "ztunnel-setup", "--netns", zt, "--tunnel", "vxlan"]) == 0
    assert "ztunnel 10.4.4.18, node 10.4.4.1, tunnels vxlan mtu 1410" in capsys.readouterr().out
    assert iptables_save(zt) == expected("ztunnel.iptables-save.txt")
    assert ip_rule(zt) == expected("ztunnel.ip-rule.txt")
    for table in ("100", "101", "102"):
        assert ip_route_table(zt, table) == expected(f"ztunnel.route-{table}.txt")
    assert tunnel_summary(zt, ZTUNNEL_TUNNELS) == expected("ztunnel.tunnels.txt")
    assert main(["cni", "ztunnel-setup", "--netns", zt, "--tunnel", "vxlan", "--dry-run"]) == 0
    assert "in sync, no changes" in capsys.readouterr().out
    assert main(["cni", "ztunnel-setup", "--netns", zt, "--cleanup"]) == 0
    assert snapshot(zt) == before


@pytest.mark.root
@pytest.mark.netns
def test_ztunnel_setup_without_a_gateway_asks_for_host_ip(topology, capsys):
    in_ns(topology.ztunnel, "ip", "route", "del", "default")
    assert main(["cni", "ztunnel-setup", "--netns", topology.ztunnel, "--tunnel", "vxlan"]) == 2
    assert f"found no default route via eth0 in netns {topology.ztunnel}: pass --host-ip" in capsys.readouterr().err

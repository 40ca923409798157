"""The stopping agent asks the API server whether it is uninstalled (zpilot/cni/exit_cleanup.py): its own pod,
then the DaemonSet that controls it, through the in-process API server and the agent's credential flags."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zpilot.cli import main
from zpilot.cni.exit_cleanup import PERMISSIONS, ExitDecision, PodRef, decide, log_decision
from zpilot.cni.errors import CniError
from zpilot.kube.credentials import Credentials

from ..kube.apiserver import ApiServer
from ..kube.apiserver.objects import make_pod

NAMESPACE = "istio-system"
DAEMONSET = "zpilot-cni-node"
POD = PodRef(NAMESPACE, "zpilot-cni-node-x7k2p")
#: What the chart's Role for the agent grants, as the test server's token allowance.
AGENT_ALLOWANCE = {(verb, f"{resource}.{group}" if group else resource) for verb, group, resource in PERMISSIONS}


def make_daemonset(name: str = DAEMONSET) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "cni-agent",
                                                                                           "image": "zpilot"}]}}}}


def agent_pod(server: ApiServer, daemonset: dict | None) -> dict:
    """The agent's pod as the DaemonSet controller makes it: controlled by ``daemonset`` (its uid)."""
    pod = make_pod(POD.name, NAMESPACE, node="node-a", host_network=True, ip="10.128.0.2")
    if daemonset is not None:
        pod["metadata"]["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": daemonset["metadata"]["name"],
             "uid": daemonset["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    return server.create(pod)


@pytest.fixture
def cluster(apiserver: ApiServer) -> ApiServer:
    """The agent's namespace, DaemonSet and pod."""
    apiserver.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    agent_pod(apiserver, apiserver.create(make_daemonset()))
    return apiserver


def agent_credentials(server: ApiServer, tmp_path: Path, allow=AGENT_ALLOWANCE) -> Credentials:
    path = server.write_kubeconfig(tmp_path / "agent.kubeconfig", token=server.add_token(allow=allow))
    return Credentials(kubeconfig=path, environ={})


async def test_a_rollout_or_restart_keeps_the_rules(cluster: ApiServer, tmp_path: Path):
    decision = await decide(agent_credentials(cluster, tmp_path), POD)
    assert decision == ExitDecision(False, decision.reason, answered=True)
    assert "still there" in decision.reason
    asked = [(r.verb, r.resource, r.namespace) for r in cluster.requests if r.verb == "get"]
    assert asked == [("get", "pods", NAMESPACE), ("get", "daemonsets.apps", NAMESPACE)]


async def test_a_deleted_daemonset_removes_them(cluster: ApiServer, tmp_path: Path):
    cluster.delete("daemonsets", DAEMONSET, NAMESPACE)
    decision = await decide(agent_credentials(cluster, tmp_path), POD)
    assert decision.cleanup and "gone" in decision.reason


async def test_a_daemonset_being_deleted_removes_them(cluster: ApiServer, tmp_path: Path):
    cluster.terminate("daemonsets", DAEMONSET, NAMESPACE)  # kubectl delete --cascade=foreground
    decision = await decide(agent_credentials(cluster, tmp_path), POD)
    assert decision.cleanup and "deletionTimestamp" in decision.reason


async def test_a_daemonset_deleted_and_made_again_is_not_the_pods_owner(cluster: ApiServer, tmp_path: Path):
    cluster.delete("daemonsets", DAEMONSET, NAMESPACE)
    cluster.create(make_daemonset())  # uninstall then install: a new uid; its own agent converges
    decision = await decide(agent_credentials(cluster, tmp_path), POD)
    assert decision.cleanup and "another one" in decision.reason


@pytest.mark.parametrize("allow", [set(), {("get", "pods")}], ids=["no-role", "pods-only"])
async def test_refused_credentials_are_the_uninstall_s_trace(cluster: ApiServer, tmp_path: Path, allow):
    """helm uninstall deletes the agent's RoleBinding right after its DaemonSet: 403."""
    decision = await decide(agent_credentials(cluster, tmp_path, allow), POD)
    assert decision.cleanup and decision.answered and "403" in decision.reason


async def test_an_unknown_token_is_refused_credentials_too(cluster: ApiServer, tmp_path: Path):
    """Its ServiceAccount deleted, the pod's token no longer authenticates: 401."""
    path = cluster.write_kubeconfig(tmp_path / "gone.kubeconfig", token="a-token-the-server-never-issued")
    decision = await decide(Credentials(kubeconfig=path, environ={}), POD)
    assert decision.cleanup and "401" in decision.reason


async def test_an_unreachable_api_server_keeps_the_rules_and_says_so_loudly(cluster: ApiServer, tmp_path: Path,
                                                                              caplog):
    credentials = agent_credentials(cluster, tmp_path)
    cluster.stop()
    decision = await decide(credentials, POD)
    assert not decision.cleanup and not decision.answered
    assert "cannot connect" in decision.reason
    log_decision(decision)
    (record,) = [r for r in caplog.records if r.name == "zpilot.cni"]
    assert record.levelno == logging.ERROR and "CANNOT TELL" in record.message
    assert "zpilot cni cleanup" in record.message


async def test_a_server_error_keeps_the_rules(cluster: ApiServer, tmp_path: Path):
    cluster.inject(status=500, verb="get", resource="daemonsets", times=5)
    decision = await decide(agent_credentials(cluster, tmp_path), POD)
    assert not decision.cleanup and not decision.answered and "500" in decision.reason


async def test_a_silent_api_server_is_waited_for_a_bounded_time(cluster: ApiServer, tmp_path: Path):
    cluster.inject(delay=10.0, verb="get", resource="pods")
    decision = await decide(agent_credentials(cluster, tmp_path), POD, seconds=0.5)
    assert not decision.cleanup and not decision.answered and "within 0.5 s" in decision.reason


async def test_its_own_pod_gone_keeps_the_rules(cluster: ApiServer, tmp_path: Path):
    """Force-deleted: its owner cannot be read, so an uninstall cannot be told from a restart."""
    cluster.delete("pods", POD.name, NAMESPACE)
    decision = await decide(agent_credentials(cluster, tmp_path), POD)
    assert not decision.cleanup and not decision.answered and "404" in decision.reason


async def test_a_pod_no_daemonset_controls_cleans_up_only_when_deleted(apiserver: ApiServer, tmp_path: Path):
    apiserver.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    agent_pod(apiserver, None)
    credentials = agent_credentials(apiserver, tmp_path)
    assert not (await decide(credentials, POD)).cleanup  # a container restart
    apiserver.terminate("pods", POD.name, NAMESPACE)
    assert (await decide(credentials, POD)).cleanup


def test_pod_names_are_checked():
    with pytest.raises(CniError, match="namespace"):
        PodRef.parse("Istio_System", "p")
    with pytest.raises(CniError, match="pod name"):
        PodRef.parse("istio-system", "../../nodes/x")
    # a final newline: re's "$" matched before it, and the name went into the GET's path
    with pytest.raises(CniError, match="namespace"):
        PodRef.parse("istio-system\n", "p")
    with pytest.raises(CniError, match="pod name"):
        PodRef.parse("istio-system", "zpilot-cni-node-x7k2p\n")


def test_a_controller_whose_name_is_not_a_name_is_no_daemonset_to_ask_for():
    from zpilot.cni.exit_cleanup import _controller

    ref = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": DAEMONSET, "uid": "u", "controller": True}
    assert _controller({"metadata": {"ownerReferences": [ref]}}) == (DAEMONSET, "u")
    assert _controller({"metadata": {"ownerReferences": [{**ref, "name": DAEMONSET + "\n"}]}}) is None


def test_uninstall_mode_needs_the_api_and_the_pod(capsys, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    code = main(["cni", "run", "--node", "node-a", "--manifests", str(tmp_path), "--cleanup-on-exit=uninstall",
                 "--pod", f"{POD}"])
    assert code == 2 and "not with --manifests" in capsys.readouterr().err
    code = main(["cni", "run", "--node", "node-a", "--kubeconfig", str(tmp_path / "k"), "--cleanup-on-exit",
                 "uninstall"])
    assert code == 2 and "$POD_NAMESPACE and $POD_NAME" in capsys.readouterr().err
    code = main(["cni", "run", "--node", "node-a", "--kubeconfig", str(tmp_path / "k"), "--cleanup-on-exit",
                 "uninstall", "--pod", "just-a-name"])
    assert code == 2 and "NAMESPACE/NAME" in capsys.readouterr().err


def test_the_bare_flag_still_means_always():
    from zpilot.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["cni", "run", "--cleanup-on-exit"]).cleanup_on_exit == "always"
    assert parse(["cni", "run"]).cleanup_on_exit == "never"
    assert parse(["cni", "run", "--cleanup-on-exit=uninstall"]).cleanup_on_exit == "uninstall"
    with pytest.raises(SystemExit):
        parse(["cni", "run", "--cleanup-on-exit=sometimes"])

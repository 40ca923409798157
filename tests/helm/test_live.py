"""The chart's commands, run as a cluster would run them: the ztunnel's init container writes the
bootstrap (``zpilot bootstrap`` with the rendered arguments), Envoy accepts it, and an Envoy started
with the rendered Envoy arguments connects to a ``zpilot serve`` started with the rendered
control-plane arguments, which reads the in-process API server with a token allowed exactly the
chart's RBAC, and goes LIVE. Both readiness probes are the rendered ones.

A pod is emulated, not simulated: everything runs in a network namespace of its own (so the
rendered ports, 15010 and the rest, are free whatever else runs on this machine), the API server
listens inside it, each volume a container mounts is a directory of the test's, and the control
plane's Service name resolves to it through ``/etc/netns/<ns>/hosts`` (``ip netns exec`` mounts it
over ``/etc/hosts``, as a cluster's DNS would answer). What a pod would take from its service
account mount, ``zpilot serve`` takes from one flag the test adds: ``--kubeconfig``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kube.apiserver import ApiServer, seed_article
from zpilot.envoy_binary import envoy_path, validate

from .chart import NAMESPACE, container, pod_spec, render, zpilot_argv
from .pod import Pod, as_container, downward, mounted, until
from .rbac import grants, token_allowance

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.root, pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="creates a network namespace; Envoy needs CAP_NET_ADMIN")]

ROOT = Path(__file__).resolve().parents[2]
NODE = "gke-jimmy-cluster-default-pool-d5041909-d10i"  # node A of examples/article
ZTUNNEL_POD = "ztunnel-rts54"  # its ztunnel pod, in examples/article/istio-system.yaml


@pytest.fixture
def pod(tmp_path: Path):
    p = Pod(tmp_path)
    try:
        yield p
    finally:
        p.close()


def test_envoy_from_the_rendered_bootstrap_goes_live_against_the_rendered_control_plane(pod: Pod, tmp_path: Path):
    rendered = render()
    deployment, ztunnel = rendered.get("Deployment", "zpilot"), rendered.get("DaemonSet", "ztunnel")
    service = rendered.get("Service", "zpilot")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}  # as the image's

    # The cluster: examples/article behind the API server, plus the release namespace (helm --create-namespace).
    server = pod.started_inside(lambda: ApiServer(tmp_path / "api", tls=True, bootstrap=True, controllers=True).start())
    try:
        seed_article(server)  # its ztunnel pods are in istio-system already (helm install --create-namespace)
        server.install_istio_crds()  # so the policy kinds are read too, with the chart's grants
        assert server.get("namespaces", NAMESPACE)
        # The control plane's service account may do what the chart's roles bound to it grant, nothing more.
        allowed = set()
        for binding in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
            if binding["subjects"][0]["name"] == pod_spec(deployment)["serviceAccountName"]:
                allowed |= token_allowance(grants(rendered.get(binding["roleRef"]["kind"], binding["roleRef"]["name"])["rules"]))
        account = f"system:serviceaccount:{NAMESPACE}:{pod_spec(deployment)['serviceAccountName']}"
        zp = container(deployment, "zpilot")
        kubeconfig = server.write_kubeconfig(tmp_path / "zpilot.kubeconfig",
                                             token=server.add_token(user=account, allow=allowed))

        # zpilot serve, with the Deployment's arguments and its container's capabilities (none; as root,
        # see as_container).
        serve_log = tmp_path / "serve.log"
        user = as_container(pod_spec(deployment), zp, user=False)
        serve = pod.start([*user, sys.executable, "-m", "zpilot.cli", *zpilot_argv(zp), "--kubeconfig",
                           str(kubeconfig)], serve_log, env=env)
        probe = zp["readinessProbe"]["exec"]["command"]
        until(lambda: serve.poll() is None and pod.run([*user, *probe], env=env).returncode == 0,
              "zpilot serve ready (the rendered readiness probe)", 60, serve_log)
        until(lambda: bool(server.list("configmaps", NAMESPACE)), "the trust bundle published", 30, serve_log)

        # The ztunnel pod's volumes, as the kubelet fills them: empty directories, its projected token
        # (of the audience and lifetime asked), the ConfigMap serve published the trust bundle in.
        volumes = {v["name"]: tmp_path / "volumes" / v["name"] for v in pod_spec(ztunnel)["volumes"]}
        for volume in pod_spec(ztunnel)["volumes"]:
            directory = volumes[volume["name"]]
            directory.mkdir(parents=True)
            if "projected" in volume:
                (source,) = volume["projected"]["sources"]
                projected = source["serviceAccountToken"]
                token = server.issue_token(NAMESPACE, pod_spec(ztunnel)["serviceAccountName"], pod=ZTUNNEL_POD,
                                           audiences=[projected["audience"]], expires_in=projected["expirationSeconds"])
                (directory / projected["path"]).write_text(token)
            elif "configMap" in volume:
                published = server.get("configmaps", volume["configMap"]["name"], NAMESPACE)
                for key, value in published["data"].items():
                    (directory / key).write_text(value)
        init = container(ztunnel, "bootstrap")
        argv = mounted(ztunnel, volumes, downward(init, zpilot_argv(init), NODE))
        written = subprocess.run([*as_container(pod_spec(ztunnel), init), sys.executable, "-m", "zpilot.cli", *argv],
                                 capture_output=True, text=True, env=env)
        assert written.returncode == 0, written.stderr
        envoy_spec = container(ztunnel, "envoy")
        envoy_argv = mounted(ztunnel, volumes, envoy_spec["args"])
        config_path = Path(envoy_argv[envoy_argv.index("-c") + 1])
        config = json.loads(config_path.read_text())
        assert config["node"]["metadata"]["NODE_NAME"] == NODE
        result = validate(config)
        assert result.ok, result.output[-2000:]

        # The Service name the bootstrap dials resolves, inside the namespace, to the control plane.
        pod.resolve({f"{service['metadata']['name']}.{NAMESPACE}.svc": "127.0.0.1"})
        envoy_log = tmp_path / "envoy.log"
        assert envoy_spec["command"] == ["envoy"]
        envoy = pod.start([*as_container(pod_spec(ztunnel), envoy_spec), envoy_path(), *envoy_argv], envoy_log)
        ready = envoy_spec["readinessProbe"]["httpGet"]
        port = next(p["containerPort"] for p in envoy_spec["ports"] if p["name"] == ready["port"])
        url = f"http://127.0.0.1:{port}{ready['path']}"
        get = ["python3", "-I", "-c", "import sys, urllib.request as u; r = u.urlopen(sys.argv[1], timeout=2);"
                                      " print(r.status, r.read().decode().strip())", url]
        until(lambda: envoy.poll() is None and pod.run(get).stdout.strip() == "200 LIVE",
              "Envoy LIVE (the rendered readiness probe)", 60, envoy_log)

        # zpilot served it every type over authenticated ADS, and Envoy ACKed them all.
        args = zpilot_argv(zp)
        debug = args[args.index("--debug-port") + 1]
        syncz = pod.run(["python3", "-I", "-c", "import sys, urllib.request as u; print(u.urlopen(sys.argv[1]).read().decode())",
                         f"http://127.0.0.1:{debug}/debug/syncz?node={NODE}"])
        (connection,) = json.loads(syncz.stdout)
        assert connection["known_node"] is True
        states = {t["type"]: t["state"] for t in connection["types"]}
        assert states and set(states.values()) == {"SYNCED"}, states
        assert serve.poll() is None and envoy.poll() is None
        # Every kind was read, and every request the control plane made was granted.
        made = [r for r in server.requests if r.user == account]
        assert {"authorizationpolicies", "peerauthentications", "pods", "secrets"} <= {
            r.resource.split(".")[0] for r in made if r.verb == "list"}  # plural[.group]
        refused = [(r.verb, r.resource, r.status) for r in made if r.status >= 400]
        assert refused in ([], [("get", "configmaps", 404)]), refused  # 404: before serve published it
        # The ztunnel's token was reviewed (that is how its stream was tied to node A).
        assert any(r.verb == "create" and r.resource.startswith("tokenreviews") and r.status < 300 for r in made)
    finally:
        server.stop()

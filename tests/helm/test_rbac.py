"""The chart's RBAC grants exactly what the code calls: derived from the lists the code exports,
not from a second list kept by hand. A new kind watched, or a new API call, fails this test until
the chart grants it; a grant nothing uses fails it too."""

from __future__ import annotations

from zpilot.certs import kube_secret, trust_bundle_configmap
from zpilot.cni import exit_cleanup
from zpilot.kube import api_resources
from zpilot.xds import token_review

from .chart import NAMESPACE, VARIANTS, container, pod_spec, render, zpilot_argv
from .rbac import as_access, grants


def _bound(rendered, kind: str, name: str, service_account: str) -> set:
    """What ``service_account`` gets from the binding ``name`` (and the role it names)."""
    binding = rendered.get(kind, name)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]
    role = rendered.get(binding["roleRef"]["kind"], binding["roleRef"]["name"])
    if kind == "RoleBinding":
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    return grants(role["rules"])


def _core(permissions) -> set[tuple[str, str, str]]:
    """A module's (verb, resource) list of the core group as (verb, group, resource)."""
    return {(verb, "", resource) for verb, resource in permissions}


def test_cluster_wide_the_control_plane_reads_what_the_api_watch_reads_and_reviews_tokens():
    granted = _bound(render(), "ClusterRoleBinding", "zpilot", "zpilot")
    assert as_access(granted) == set(api_resources.API_ACCESS) | set(token_review.CLUSTER_PERMISSIONS)
    assert all(names == () for *_, names in granted)


def test_in_its_namespace_the_control_plane_may_use_its_ca_secret_its_configmap_and_read_ztunnel_pods():
    for variant, secret in (("default", "zpilot-ca"), ("user-provided-ca", "cacerts")):
        rendered = render(VARIANTS[variant])
        granted = _bound(rendered, "RoleBinding", "zpilot", "zpilot")
        assert as_access(granted) == (_core(kube_secret.PERMISSIONS) | _core(trust_bundle_configmap.PERMISSIONS)
                                      | set(token_review.NAMESPACE_PERMISSIONS))
        args = zpilot_argv(container(rendered.get("Deployment", "zpilot"), "zpilot"))
        configmap = args[args.index("--trust-bundle-configmap") + 1]
        assert args[args.index("--ca-secret") + 1] == f"{NAMESPACE}/{secret}"
        assert args[args.index("--ztunnel-service-account") + 1].startswith(f"{NAMESPACE}/")
        # Narrowed to the object's name wherever the code asks by name (the CA Secret by a
        # metadata.name field selector, the ConfigMap by get and replace); a create cannot be narrowed.
        names = {"secrets": (secret,), "configmaps": (configmap.split("/")[1],)}
        for group, resource, verb, allowed in granted:
            expected = names[resource] if verb in ("list", "watch", "get", "update") and resource in names else ()
            assert allowed == expected, (verb, resource, allowed)


def test_the_cni_agent_reads_its_node_s_pods_and_the_namespaces_only():
    granted = _bound(render(), "ClusterRoleBinding", "zpilot-cni", "zpilot-cni")
    assert as_access(granted) == set(api_resources.NODE_AGENT_API_ACCESS)


def test_in_its_namespace_the_cni_agent_may_read_its_pod_and_its_daemonset_only():
    """What it asks as it stops, to tell an uninstall from a rollout: its own pod (a name not known in advance)
    and the DaemonSet that controls it, narrowed to the chart's."""
    rendered = render()
    granted = _bound(rendered, "RoleBinding", "zpilot-cni", "zpilot-cni")
    assert as_access(granted) == set(exit_cleanup.PERMISSIONS)
    daemonset = rendered.get("DaemonSet", "zpilot-cni-node")
    assert pod_spec(daemonset)["serviceAccountName"] == "zpilot-cni"
    names = {resource: allowed for _, resource, _, allowed in granted}
    assert names == {"pods": (), "daemonsets": (daemonset["metadata"]["name"],)}


def test_no_other_role_binding_or_service_account_token():
    rendered = render()
    roles = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects if o["kind"].endswith("Role")}
    bindings = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects if o["kind"].endswith("Binding")}
    assert roles == {("ClusterRole", "zpilot"), ("Role", "zpilot"), ("ClusterRole", "zpilot-cni"), ("Role", "zpilot-cni")}
    assert bindings == {("ClusterRoleBinding", "zpilot"), ("RoleBinding", "zpilot"),
                        ("ClusterRoleBinding", "zpilot-cni"), ("RoleBinding", "zpilot-cni")}
    # Each workload runs as its own service account; the ztunnel's has no role and no API token.
    accounts = {w["metadata"]["name"]: pod_spec(w)["serviceAccountName"]
                for w in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet")}
    assert accounts == {"zpilot": "zpilot", "ztunnel": "ztunnel", "zpilot-cni-node": "zpilot-cni"}
    assert pod_spec(rendered.get("DaemonSet", "ztunnel"))["automountServiceAccountToken"] is False
    assert {o["metadata"]["name"] for o in rendered.of_kind("ServiceAccount")} == {"zpilot", "ztunnel", "zpilot-cni"}

"""The chart's RBAC grants exactly what the code calls: derived from the lists the code exports,
not from a second list kept by hand. A new kind watched, or a new API call, fails this test until
the chart grants it; a grant nothing uses fails it too."""

from __future__ import annotations

from zpilot.certs import kube_secret
from zpilot.kube import api_resources

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


def test_the_control_plane_lists_and_watches_what_the_api_watch_reads_and_nothing_else():
    rendered = render()
    granted = _bound(rendered, "ClusterRoleBinding", "zpilot", "zpilot")
    assert as_access(granted) == set(api_resources.API_ACCESS)
    assert all(names == () for *_, names in granted)


def test_the_control_plane_may_list_watch_and_create_its_ca_secret_only():
    for variant, secret in (("default", "zpilot-ca"), ("user-provided-ca", "cacerts")):
        rendered = render(VARIANTS[variant])
        granted = _bound(rendered, "RoleBinding", "zpilot-ca", "zpilot")
        assert as_access(granted) == {(verb, "", resource) for verb, resource in kube_secret.PERMISSIONS}
        # The store reads its Secret by a metadata.name field selector, so list and watch are narrowed
        # to that name; create cannot be narrowed by name (the object does not exist yet).
        for group, resource, verb, names in granted:
            assert names == ((secret,) if verb in ("list", "watch") else ()), (verb, names)
        args = zpilot_argv(container(rendered.get("Deployment", "zpilot"), "zpilot"))
        assert args[args.index("--ca-secret") + 1] == f"{NAMESPACE}/{secret}"


def test_the_cni_agent_reads_its_node_s_pods_and_the_namespaces_only():
    rendered = render()
    granted = _bound(rendered, "ClusterRoleBinding", "zpilot-cni", "zpilot-cni")
    assert as_access(granted) == set(api_resources.NODE_AGENT_API_ACCESS)


def test_no_other_role_binding_or_service_account_token():
    rendered = render()
    roles = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects if o["kind"].endswith("Role")}
    bindings = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects if o["kind"].endswith("Binding")}
    assert roles == {("ClusterRole", "zpilot"), ("Role", "zpilot-ca"), ("ClusterRole", "zpilot-cni")}
    assert bindings == {("ClusterRoleBinding", "zpilot"), ("RoleBinding", "zpilot-ca"),
                        ("ClusterRoleBinding", "zpilot-cni")}
    # Each workload runs as its own service account; the ztunnel's has no role and no API token.
    accounts = {w["metadata"]["name"]: pod_spec(w)["serviceAccountName"]
                for w in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet")}
    assert accounts == {"zpilot": "zpilot", "ztunnel": "ztunnel", "zpilot-cni-node": "zpilot-cni"}
    assert pod_spec(rendered.get("DaemonSet", "ztunnel"))["automountServiceAccountToken"] is False
    assert {o["metadata"]["name"] for o in rendered.of_kind("ServiceAccount")} == {"zpilot", "ztunnel", "zpilot-cni"}

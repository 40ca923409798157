"""The chart renders (Helm's Go SDK), lints, and every object it renders is valid Kubernetes, in
strict mode (no unknown field anywhere), for the oldest and the newest Kubernetes the README claims."""

from __future__ import annotations

import copy

import helm_python as helm
import kubernetes_validate
import pytest

from .chart import VARIANTS, chart_metadata, claimed_kubernetes_versions, lint, render

OLDEST, NEWEST = claimed_kubernetes_versions()
#: Kinds whose schema Kubernetes does not have: a CRD's (the Prometheus Operator's), checked by
#: tests/helm/test_workloads.py instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_every_rendered_object_is_valid_kubernetes(variant: str, version: str) -> None:
    rendered = render(VARIANTS[variant])
    assert len(rendered.objects) >= 12
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        used = kubernetes_validate.validate(obj, f"{version}.0", strict=True)
        assert used == version, f"validated against {used}, not {version}: kubernetes-validate lacks {version}"


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The check above can fail: an unknown field in a container is refused."""
    deployment = copy.deepcopy(render().get("Deployment", "zpilot"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, f"{NEWEST}.0", strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_helm_lint_finds_nothing(variant: str, version: str) -> None:
    report = lint(VARIANTS[variant], kube_version=f"{version}.0")
    assert report["errors"] == []
    # Only the info that the chart has no icon.
    assert [m["error"] for m in report["messages"] if m["severity"] > 1] == []


def test_the_chart_declares_the_oldest_kubernetes_claimed() -> None:
    """``helm install`` refuses a cluster older than Chart.yaml's kubeVersion (lint does not check it)."""
    assert chart_metadata()["kubeVersion"] == f">={OLDEST}.0-0"


def test_another_namespace_is_refused_naming_the_fix() -> None:
    with pytest.raises(helm.HelmError) as failed:
        render(namespace="zpilot")
    assert "must be installed into namespace istio-system" in str(failed.value)
    assert "--namespace istio-system" in str(failed.value)


def test_notes_tell_how_to_check_the_install() -> None:
    notes = render().notes
    for step in ("kubectl -n istio-system port-forward deployment/zpilot 15014:15014", "/debug/syncz?node=",
                 "zpilot diff --envoy-admin http://127.0.0.1:15000 --server http://127.0.0.1:15014",
                 "curl -s http://127.0.0.1:15020/metrics", "istio.io/dataplane-mode=ambient"):
        assert step in notes, step
    assert "Secret istio-system/zpilot-ca" in notes
    assert "Secret istio-system/cacerts" not in render(VARIANTS["user-provided-ca"]).notes

"""Rendering charts/zpilot with Helm's own Go SDK (PyPI ``helm-python-sdk``: Helm v4 as a shared
library bound with ctypes; no ``helm`` binary, nothing downloaded) and reading what it renders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "zpilot"
README = ROOT / "README.md"
NAMESPACE = "istio-system"
RELEASE = "zpilot"

#: Non-default values the tests render besides the defaults, by name: each exercises a part of
#: the chart the defaults leave out.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "one-replica": {"controlPlane": {"replicas": 1}},
    "custom-images-and-resources": {
        "image": {"repository": "registry.example.com/mesh/zpilot", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "ztunnel": {"image": {"repository": "registry.example.com/mirror/envoy", "tag": "distroless-v1.40.0",
                              "pullPolicy": "Always"},
                    "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}},
        "controlPlane": {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2, "memory": "4Gi"}}},
        "cni": {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}},
    },
    "user-provided-ca": {"ca": {"secretName": "cacerts", "provided": {
        "caCert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "caKey": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        "rootCert": "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
    }}},
    "metrics-exposed": {
        "metrics": {"scrapeAnnotations": False, "serviceMonitor": {"enabled": True, "interval": "15s",
                                                                    "labels": {"release": "prometheus"}}},
        "controlPlane": {"debugApi": {"expose": True, "tokenSecret": "zpilot-debug"}},
    },
    "tuned": {
        "logFormat": "json", "logLevel": "debug", "trustDomain": "mesh.example.com",
        "controlPlane": {"layout": "linear", "certLifetime": 3600, "extraArgs": ["--max-streams", "20000"]},
        "ztunnel": {"delta": True, "concurrency": 4, "logLevel": "debug", "clusterStats": "eager", "serviceStats": "all",
                    "podClusterStats": "all"},
        "cni": {"failClosed": True, "tunnel": "vxlan", "iptables": "nft", "resync": 10, "cleanupOnExit": "never"},
    },
}


@dataclass
class Rendered:
    """The objects of one render, and NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
        return found[0]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def has(self, kind: str, name: str) -> bool:
        return any(o["kind"] == kind and o["metadata"]["name"] == name for o in self.objects)


def render(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE) -> Rendered:
    """``helm template`` of the chart (offline: no cluster is contacted)."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return Rendered(objects, notes)


def lint(values: dict[str, Any] | None = None, *, kube_version: str) -> dict[str, Any]:
    return helm.lint(str(CHART), values or {}, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}")


def chart_metadata() -> dict[str, Any]:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def claimed_kubernetes_versions() -> tuple[str, str]:
    """(oldest, newest) Kubernetes minor versions the README's install section claims."""
    match = re.search(r"Kubernetes (\d+\.\d+) to (\d+\.\d+)", README.read_text())
    assert match, "README.md must say which Kubernetes versions the chart supports: 'Kubernetes 1.X to 1.Y'"
    return match.group(1), match.group(2)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of a workload's pods, init containers first."""
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(workload) if c["name"] == name]
    return found


def zpilot_argv(c: dict[str, Any]) -> list[str]:
    """The arguments after ``zpilot`` (the image's entrypoint) of a container of the zpilot image."""
    assert "command" not in c, f"container {c['name']} overrides the zpilot image's entrypoint"
    return [str(a) for a in c["args"]]

"""Rendering helpers shared by the translator tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zpilot.certs.ca import CertificateAuthority
from zpilot.certs.identity import IdentityCache
from zpilot.certs.secrets import build_secrets
from zpilot.kube.manifests import load_manifests
from zpilot.model import MeshIndex, Problems
from zpilot.translators import NodeResources, TranslateOptions, translate_node
from zpilot.xds.config_dump import config_dump

REPO = Path(__file__).resolve().parents[2]
ARTICLE = REPO / "examples" / "article"
NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"
NODE_B = "gke-jimmy-cluster-default-pool-d5041909-c1da"

_CA = CertificateAuthority.generate()  # one throwaway CA per test session: issuing keys is slow


def index_of(manifests: Path | str) -> tuple[MeshIndex, Problems]:
    loaded = load_manifests(manifests)
    return MeshIndex.build(loaded.cluster, loaded.problems), loaded.problems


def render(manifests: Path | str, node: str, options: TranslateOptions | None = None):
    index, problems = index_of(manifests)
    resources = translate_node(index, node, options)
    secrets = build_secrets(resources.secrets.values(), IdentityCache(_CA), problems)
    return resources, secrets, problems


def blank_certificates(dump: dict[str, Any]) -> dict[str, Any]:
    """Blank what legitimately changes between runs (certificates and their versions), in place."""
    for part in dump["configs"]:
        for entry in part.get("dynamic_active_secrets", []):
            entry["version_info"] = "<secret version>"
            secret = entry["secret"]
            if "tls_certificate" in secret:
                secret["tls_certificate"]["certificate_chain"]["inline_bytes"] = "<certificate chain>"
            if "validation_context" in secret:
                secret["validation_context"]["trusted_ca"]["inline_bytes"] = "<trust bundle>"
    return dump


def stable_dump(resources: NodeResources, secrets: dict) -> dict[str, Any]:
    """The config dump with certificates blanked."""
    return blank_certificates(config_dump(resources, secrets))


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"

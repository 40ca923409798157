"""Rendering helpers shared by the translator tests."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zpilot.certs.ca import CertificateAuthority
from zpilot.certs.identity import IdentityCache
from zpilot.certs.secrets import build_secrets
from zpilot.kube.convert import CONVERTERS
from zpilot.kube.manifests import load_manifests
from zpilot.kube.store import ObjectStore
from zpilot.model import MeshIndex, Problems
from zpilot.synthetic import Shape, synthetic_manifests
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


def synthetic_index(shape: Shape) -> MeshIndex:
    """The model of a synthetic cluster of ``shape``, converted as a source converts API objects."""
    store = ObjectStore()
    for doc in synthetic_manifests(shape):
        store.put(CONVERTERS[doc["kind"]](doc))
    return MeshIndex.build(store.snapshot(), Problems())


@dataclass(frozen=True)
class Rendered:
    """One node's translation of a manifest set, with what went into it."""

    index: MeshIndex
    problems: Problems
    resources: NodeResources
    secrets: dict  # name -> Secret, issued by the session's throwaway CA


def render_node(manifests: Path | str, node: str, options: TranslateOptions | None = None) -> Rendered:
    index, problems = index_of(manifests)
    resources = translate_node(index, node, options)
    secrets = build_secrets(resources.secrets.values(), IdentityCache(_CA), problems)
    return Rendered(index, problems, resources, secrets)


def render(manifests: Path | str, node: str, options: TranslateOptions | None = None):
    rendered = render_node(manifests, node, options)
    return rendered.resources, rendered.secrets, rendered.problems


def blank_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """Blank a (protojson) Secret's certificates, which change on every run, in place. Keys are not
    blanked here: they must already read ``[redacted]``, and the goldens show that they do."""
    if "tls_certificate" in secret:
        secret["tls_certificate"]["certificate_chain"]["inline_bytes"] = "<certificate chain>"
    if "validation_context" in secret:
        secret["validation_context"]["trusted_ca"]["inline_bytes"] = "<trust bundle>"
    return secret


def blank_certificates(dump: dict[str, Any]) -> dict[str, Any]:
    """Blank what legitimately changes between runs (certificates and their versions), in place."""
    for part in dump["configs"]:
        for entry in part.get("dynamic_active_secrets", []):
            entry["version_info"] = "<secret version>"
            blank_secret(entry["secret"])
    return dump


def stable_dump(resources: NodeResources, secrets: dict) -> dict[str, Any]:
    """The config dump with certificates blanked."""
    return blank_certificates(config_dump(resources, secrets))


def dumps(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


#: Set (to anything) to rewrite every golden from the current output instead of comparing; then review the diff.
UPDATE_GOLDEN = "ZPILOT_UPDATE_GOLDEN"


def golden(path: Path, actual: str) -> str:
    """The golden text at ``path`` for the caller to compare with ``actual``; written from ``actual``
    first when updating. A golden that does not exist is a failure: new goldens are made on purpose."""
    if os.environ.get(UPDATE_GOLDEN):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    if not path.exists():
        pytest.fail(f"no golden {path}: run with {UPDATE_GOLDEN}=1 to write it, then review it", pytrace=False)
    return path.read_text()

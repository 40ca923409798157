"""The article's cluster (examples/article) in one call, and a loader for any manifest directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

if TYPE_CHECKING:
    from .server import ApiServer

ARTICLE = Path(__file__).resolve().parents[3] / "examples" / "article"
#: Dependencies first: namespaces before what lives in them, services before pods (so each pod lands in
#: the slices of an existing service, as in a cluster that grew normally).
ORDER = ["CustomResourceDefinition", "Namespace", "Node", "ServiceAccount", "Secret", "ConfigMap", "Service",
         "EndpointSlice", "Pod"]


def _documents(root: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".json")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "List":
                yield from (item for item in doc.get("items") or () if isinstance(item, dict))
            else:
                yield doc


def seed(server: "ApiServer", root: Path) -> list[dict[str, Any]]:
    """Apply every object under ``root`` (create, or replace what bootstrap made); return them as stored.

    Manifest uids and creationTimestamps are kept, so the objects match what the manifest source reads.
    """
    docs = sorted(_documents(root), key=lambda d: ORDER.index(d["kind"]) if d.get("kind") in ORDER else len(ORDER))
    return [server.apply(doc) for doc in docs]


def seed_article(server: "ApiServer") -> list[dict[str, Any]]:
    """The article's two nodes, namespaces, bookinfo, ztunnels and legacy namespace."""
    return seed(server, ARTICLE)

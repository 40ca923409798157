"""The manifest-directory source: a folder of YAML (or JSON) documents as the cluster's state.

What ``kubectl get pods,services,... -o yaml`` prints can be dropped in as it is: multi-document
files and ``kind: List`` are both read. A bad document is reported with its file, document
index, kind/name and reason, and skipped; everything else still loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..model.objects import Cluster
from ..model.problems import Problems, brief
from .bounded_yaml import Unreadable, load_documents
from .convert import CONVERTERS, InvalidObject, describe
from .store import ObjectStore, key_of

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
#: Largest manifest file read (``kubectl get pods -A -o yaml`` of 10,000 pods is about 50 MiB).
MAX_FILE_BYTES = 64 << 20
#: Most objects read from one file (documents, and the items of ``kind: List`` documents).
MAX_DOCUMENTS = 50_000
#: Kinds that commonly sit beside the ones zpilot reads; skipped without a warning.
IGNORED_KINDS = frozenset(
    {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob", "ConfigMap", "Secret",
     "Endpoints", "EndpointSlice", "Event"}
)


@dataclass(frozen=True)
class ManifestSet:
    cluster: Cluster
    problems: Problems
    files: tuple[Path, ...]


def manifest_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))


def _read(path: Path, problems: Problems) -> str | None:
    """The file's text, or None (reported) when it is unreadable or larger than the limit."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # never more, even if the file grows while we read
    except OSError as exc:
        problems.error(str(path), f"cannot read: {exc}")
        return None
    if len(data) > MAX_FILE_BYTES:
        problems.error(str(path), f"larger than {MAX_FILE_BYTES:,} bytes: skipped (split it into several files)")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.error(str(path), f"cannot read: not UTF-8 ({exc.reason} at byte {exc.start})")
        return None


def _documents(path: Path, problems: Problems) -> Iterator[tuple[str, Any]]:
    """(where, document) for each document of a file, flattening ``kind: List``."""
    text = _read(path, problems)
    if text is None:
        return
    count = 0
    for index, doc in enumerate(load_documents(text)):
        where = f"{path} doc {index}"
        if isinstance(doc, Unreadable):
            problems.error(where, f"{doc.reason}; {'rest of file' if doc.last else 'document'} skipped")
            continue
        if doc is None:
            continue
        items: list[tuple[str, Any]]
        if isinstance(doc, Mapping) and doc.get("kind") == "List":
            listed = doc.get("items")
            if not isinstance(listed, list):
                problems.error(where, "kind List without an items list")
                continue
            items = [(f"{where} item {i}", item) for i, item in enumerate(listed)]
        else:
            items = [(where, doc)]
        for item in items:
            count += 1
            if count > MAX_DOCUMENTS:
                problems.error(item[0], f"more than {MAX_DOCUMENTS:,} objects in one file: the rest are skipped")
                return
            yield item


def load_into(store: ObjectStore, root: Path, problems: Problems) -> list[Path]:
    """Read every manifest below ``root`` into ``store``; return the files read."""
    files = manifest_files(root)
    if not files:
        problems.warning(str(root), "no manifest files (*.yaml, *.yml, *.json) found")
    seen: dict[tuple[str, str, str], str] = {}
    for path in files:
        for where, doc in _documents(path, problems):
            if not isinstance(doc, Mapping):
                problems.error(where, f"a document must be a mapping, not {type(doc).__name__}")
                continue
            kind = doc.get("kind")
            converter = CONVERTERS.get(kind) if isinstance(kind, str) else None
            subject = f"{where} ({describe(doc)})"
            if converter is None:
                if kind not in IGNORED_KINDS:
                    problems.warning(subject, f"unsupported kind {brief(kind)}: skipped")
                continue
            try:
                obj = converter(doc)
            except InvalidObject as exc:
                problems.error(subject, f"{exc}: skipped")
                continue
            except (TypeError, ValueError, AttributeError) as exc:  # a shape no check foresaw: still just this object
                log.warning("%s: converter failed", subject, exc_info=True)
                problems.error(subject, f"cannot be read ({type(exc).__name__}): skipped")
                continue
            key = key_of(obj)
            if key in seen:
                problems.error(subject, f"duplicate of {seen[key]}: skipped")
                continue
            seen[key] = where
            store.put(obj)
    return files


def load_manifests(root: str | Path) -> ManifestSet:
    problems = Problems()
    store = ObjectStore()
    files = load_into(store, Path(root), problems)
    return ManifestSet(store.snapshot(), problems, tuple(files))

"""The manifest-directory source: a folder of YAML (or JSON) documents as the cluster's state.

What ``kubectl get pods,services,... -o yaml`` prints can be dropped in as it is: multi-document
files and ``kind: List`` are both read. A bad document is reported with its file, document
index, kind/name and reason, and skipped; everything else still loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from ..model.objects import Cluster
from ..model.problems import Problems
from .convert import CONVERTERS, InvalidObject, describe
from .store import ObjectStore, key_of

SUFFIXES = (".yaml", ".yml", ".json")
#: libyaml's parser when PyYAML was built with it: ~6x faster, which is most of a push's latency.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
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


def _documents(path: Path, problems: Problems) -> Iterator[tuple[str, Any]]:
    """(where, document) for each document of a file, flattening ``kind: List``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.error(str(path), f"cannot read: {exc}")
        return
    loader = yaml.load_all(text, Loader=_SAFE_LOADER)
    index = 0
    while True:
        where = f"{path} doc {index}"
        try:
            doc = next(loader)
        except StopIteration:
            return
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark is not None else ""
            problems.error(where, f"malformed YAML{at}: {getattr(exc, 'problem', None) or exc}; rest of file skipped")
            return
        index += 1
        if doc is None:
            continue
        if isinstance(doc, Mapping) and doc.get("kind") == "List":
            items = doc.get("items")
            if not isinstance(items, list):
                problems.error(where, "kind List without an items list")
                continue
            for i, item in enumerate(items):
                yield f"{where} item {i}", item
        else:
            yield where, doc


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
                    problems.warning(subject, f"unsupported kind {kind!r}: skipped")
                continue
            try:
                obj = converter(doc)
            except InvalidObject as exc:
                problems.error(subject, f"{exc}: skipped")
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

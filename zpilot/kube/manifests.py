"""Manifest files: a folder of YAML (or JSON) documents as the cluster's state.

What ``kubectl get pods,services,... -o yaml`` prints can be dropped in as it is: multi-document
files and ``kind: List`` are both read. A file is read whole or not at all: one that cannot be
read or parsed, is empty, or looks cut short (a bare scalar document, or one without ``kind``;
``kubectl get -o yaml`` writes ``kind: List`` after the items), is a :attr:`FileRead.failure`
and none of its objects are used, so a file being written is never taken half-way. Within a file that reads, a bad
document is reported with its file, document index, kind/name and reason, and skipped;
everything else still loads.

:func:`read_manifest_file` is what every reader uses: the watched directory source
(``directory.py``) and the one-shot :func:`load_manifests` of ``zpilot render`` and
``zpilot explain``, so they agree on what a directory holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..model.objects import Cluster
from ..model.problems import Problem, Problems, Severity, brief
from .bounded_yaml import Unreadable, load_documents
from .convert import InvalidObject, ModelObject, describe
from .convert_policy import KIND_CONVERTERS
from .source import failure_problem
from .store import merge

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
#: Largest manifest file read (``kubectl get pods -A -o yaml`` of 10,000 pods is about 50 MiB).
MAX_FILE_BYTES = 64 << 20
#: Most objects read from one file (documents, and the items of ``kind: List`` documents).
MAX_DOCUMENTS = 50_000
#: Kinds that commonly sit beside the ones zpilot reads; skipped without a warning.
IGNORED_KINDS = frozenset(
    {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob", "ConfigMap", "Secret",
     "Endpoints", "Event"}
)


@dataclass(frozen=True)
class ManifestSet:
    cluster: Cluster
    problems: Problems
    files: tuple[Path, ...]


@dataclass(frozen=True)
class FileRead:
    """One file's objects (each with where it was read) and its documents' problems, or why the
    file as a whole cannot be used (then ``objects`` is empty)."""

    objects: tuple[tuple[str, ModelObject], ...] = ()
    problems: tuple[Problem, ...] = ()
    failure: Problem | None = None


class _Unusable(Exception):
    """The file as a whole cannot be used; the message says why."""

    def __init__(self, reason: str, severity: Severity = Severity.ERROR) -> None:
        super().__init__(reason)
        self.severity = severity


def manifest_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))


def _looks_cut_short(doc: Any, where: str) -> None:
    """Raise if ``doc`` has a shape only a file cut short gives a manifest: a bare scalar (a
    document cut inside its first key), or a mapping without ``kind`` (cut before it; ``kubectl
    get -o yaml`` writes ``kind: List`` after the items)."""
    if isinstance(doc, (str, int, float, bool)):
        raise _Unusable(f"{where} is a bare {type(doc).__name__}: the file looks incomplete")
    if isinstance(doc, Mapping) and (not isinstance(doc.get("kind"), str) or not doc["kind"]):
        raise _Unusable(f"{where} has no kind: the file looks incomplete")


def _read(path: Path) -> str:
    """The file's text; raises :class:`_Unusable` when it is unreadable or larger than the limit."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # never more, even if the file grows while we read
    except OSError as exc:
        raise _Unusable(f"cannot read: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _Unusable(f"larger than {MAX_FILE_BYTES:,} bytes (split it into several files)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unusable(f"cannot read: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _documents(path: Path, problems: Problems) -> Iterator[tuple[str, Any]]:
    """(where, document) for each document of a file, flattening ``kind: List``; raises :class:`_Unusable`.

    A document that breaks YAML's syntax or an expansion limit ends the parse, so the file as a
    whole is unusable (it may be half written); one that parses but cannot be constructed (a
    5,000-digit integer, a bad date) is reported in ``problems`` and skipped.
    """
    text = _read(path)
    index = 0
    found = False
    count = 0
    for doc in load_documents(text):
        where = f"{path} doc {index}"
        index += 1
        if isinstance(doc, Unreadable):
            if doc.last:
                # a syntax error says where; a refused document (a limit) says which
                raise _Unusable(doc.reason if doc.reason.startswith("malformed") else f"doc {index - 1}: {doc.reason}")
            found = True
            problems.error(where, f"{doc.reason}; document skipped")
            continue
        if doc is None:
            continue
        found = True
        _looks_cut_short(doc, f"doc {index - 1}")
        if isinstance(doc, Mapping) and doc.get("kind") == "List":
            items = doc.get("items")
            if items is None:
                items = []
            if not isinstance(items, list):
                raise _Unusable(f"doc {index - 1}: kind List without an items list")
            listed = [(f"{where} item {i}", item) for i, item in enumerate(items)]
            for i, (_, item) in enumerate(listed):
                _looks_cut_short(item, f"doc {index - 1} item {i}")
        else:
            listed = [(where, doc)]
        for item in listed:
            count += 1
            if count > MAX_DOCUMENTS:
                problems.error(item[0], f"more than {MAX_DOCUMENTS:,} objects in one file: the rest are skipped")
                return
            yield item
    if not found:
        raise _Unusable("empty: no documents", Severity.WARNING)


def read_manifest_file(path: Path) -> FileRead:
    """Every object of one file, or the reason the file cannot be used (see the module doc)."""
    problems = Problems()
    objects: list[tuple[str, ModelObject]] = []
    try:
        documents = list(_documents(path, problems))  # parsed whole before any object is used
    except _Unusable as exc:
        return FileRead(failure=Problem(exc.severity, str(path), str(exc)))
    for where, doc in documents:
        if not isinstance(doc, Mapping):
            problems.error(where, f"a document must be a mapping, not {type(doc).__name__}")
            continue
        kind = doc["kind"]
        converter = KIND_CONVERTERS.get(kind)
        subject = describe(doc)
        if converter is None:
            if kind not in IGNORED_KINDS:
                problems.warning(subject, f"unsupported kind {brief(kind)}: skipped", where=where)
            continue
        try:
            objects.append((where, converter(doc)))
        except InvalidObject as exc:
            problems.error(subject, f"{exc}: skipped", where=where)
        except (TypeError, ValueError, AttributeError) as exc:  # a shape no check foresaw: still just this object
            log.warning("%s: converter failed", subject, exc_info=True)
            problems.error(subject, f"cannot be read ({type(exc).__name__}): skipped", where=where)
    return FileRead(tuple(objects), tuple(problems))


def load_manifests(root: str | Path) -> ManifestSet:
    """Read a directory (or one file) once: what ``zpilot render`` and ``zpilot explain`` use.

    The same rules as the watched source's first read: a file that cannot be used adds no object.
    """
    root = Path(root)
    problems = Problems()
    files = manifest_files(root)
    if not files:
        problems.warning(str(root), "no manifest files (*.yaml, *.yml, *.json) found")
    reads = {str(path): read_manifest_file(path) for path in files}
    objects: list[tuple[str, ModelObject]] = []
    for origin in sorted(reads):  # the order the watched source merges in, so duplicates resolve alike
        read = reads[origin]
        problems.extend(list(read.problems))
        if read.failure is not None:
            problems.extend([failure_problem(read.failure, kept=None)])
        objects.extend(read.objects)
    cluster = merge(objects, problems)
    return ManifestSet(cluster, problems, tuple(files))

"""The manifest directory as a model source: polled, and each file read only once it is stable.

Polling file metadata (path, size, mtime) keeps this dependency-free and works on every file
system, including bind mounts and ConfigMap volumes where inotify events are unreliable.

A file is not read while it is being written. ``kubectl get pods -o yaml > pods.yaml`` truncates
the file first and fills it when the API server answers, maybe in pages; an editor may write in
several steps. So a file whose size or mtime changed is announced to the sink as *changing*
(the debounce waits for it) and read only once its metadata has stayed the same for the quiet
window, across at least one more poll; if it changed while being read, it waits again. A file
that then still cannot be used (empty, unparseable, cut short: see ``manifests.py``) keeps the
objects of its last good read, and the problem is reported; removing the file removes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from ..model.policy import DEFAULT_ROOT_NAMESPACE
from ..model.problems import Problem, Severity
from .manifests import FileRead, manifest_files, read_manifest_file
from .source import FeedSource, ObjectSink, OriginContent, SourceError

log = logging.getLogger(__name__)

Stamp = tuple[int, int]  # size, mtime in ns
#: Origin of problems about the directory itself (sorts before every file).
ROOT_ORIGIN = ""


def stamps(root: Path) -> dict[str, Stamp] | None:
    """Every manifest's size and mtime by path; None when ``root`` does not exist."""
    if not root.exists():
        return None
    items: dict[str, Stamp] = {}
    for path in manifest_files(root):
        stamp = _stamp(path)
        if stamp is not None:  # removed between listing and stat: the next poll sees it gone
            items[str(path)] = stamp
    return items


def _stamp(path: str | Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _read_files(paths: list[str]) -> dict[str, tuple[FileRead, Stamp | None]]:
    """Each file's content and its metadata right after reading (to see a write during the read)."""
    return {path: (read_manifest_file(Path(path)), _stamp(path)) for path in paths}


class ManifestDirectory:
    """The :class:`~zpilot.kube.source.Feed` of a directory (or one file) of manifests."""

    def __init__(self, root: str | os.PathLike[str], *, interval: float = 0.05, quiet: float = 0.1,
                 max_delay: float = 10.0) -> None:
        self.root = Path(root)
        self.interval = interval
        self.quiet = quiet
        self.max_delay = max_delay
        self._seen: dict[str, Stamp] = {}  # the metadata of each file at its last look
        self._changing: dict[str, tuple[float, int]] = {}  # file -> (time, poll) of its last change
        self._poll = 0
        self._gone = False
        self._has_files: bool | None = None

    async def run(self, sink: ObjectSink) -> None:
        current = await asyncio.to_thread(stamps, self.root)
        if current is None:
            raise SourceError(f"manifest directory {self.root} does not exist")
        started = time.monotonic()
        self._seen = current
        # The first read is not waited for, but a file that cannot be used may be one being
        # written: it is read again once stable before the initial model is complete.
        await self._read(sorted(current), sink, final=False)
        self._report_no_files(sink)
        synced = False
        while True:
            if not synced and (not self._changing or time.monotonic() - started >= self.max_delay):
                sink.synced()
                synced = True
            await asyncio.sleep(self.interval)
            await self._look(sink)

    async def _look(self, sink: ObjectSink) -> None:
        self._poll += 1
        try:
            current = await asyncio.to_thread(stamps, self.root)
        except OSError as exc:
            log.warning("cannot list %s: %s", self.root, exc)
            return
        now = time.monotonic()
        if current is None:  # unmounted or deleted: never take every node's config away
            if not self._gone:
                log.error("%s is gone; keeping the last config until it is back", self.root)
                self._gone = True
            return
        if self._gone:
            log.warning("%s is back", self.root)
            self._gone = False
        for path in set(current) | set(self._seen):
            stamp = current.get(path)
            if stamp != self._seen.get(path):
                self._note(path, stamp, sink, now)
        stable = [p for p, (t, n) in self._changing.items() if now - t >= self.quiet and n < self._poll]
        for path in [p for p in stable if p not in self._seen]:
            del self._changing[path]
            sink.remove(path)
        await self._read(sorted(p for p in stable if p in self._seen), sink, final=True)
        self._report_no_files(sink)

    def _note(self, path: str, stamp: Stamp | None, sink: ObjectSink, now: float) -> None:
        """``path`` changed (or appeared, or vanished): wait for it to be stable."""
        if stamp is None:
            self._seen.pop(path, None)
        else:
            self._seen[path] = stamp
        self._changing[path] = (now, self._poll)
        sink.changing(path)

    async def _read(self, paths: list[str], sink: ObjectSink, *, final: bool) -> None:
        if not paths:
            return
        results = await asyncio.to_thread(_read_files, paths)
        now = time.monotonic()
        for path, (read, after) in results.items():
            if after != self._seen.get(path):  # written (or removed) while being read: wait again
                self._note(path, after, sink, now)
                continue
            if read.failure is not None and not final:
                self._note(path, after, sink, now)
                continue
            self._changing.pop(path, None)
            if read.failure is not None:
                sink.keep(path, read.failure)
            else:
                sink.set(path, OriginContent(read.objects, read.problems))

    def _report_no_files(self, sink: ObjectSink) -> None:
        has_files = bool(self._seen)
        if has_files == self._has_files:
            return
        self._has_files = has_files
        if has_files:
            sink.remove(ROOT_ORIGIN)
        else:
            problem = Problem(Severity.WARNING, str(self.root), "no manifest files (*.yaml, *.yml, *.json) found")
            sink.set(ROOT_ORIGIN, OriginContent(problems=(problem,)))


class ManifestDirectorySource(FeedSource):
    """A directory of Kubernetes manifests (``kubectl get ... -o yaml`` output) as the cluster."""

    def __init__(self, root: str | os.PathLike[str], *, interval: float = 0.05, quiet: float = 0.1,
                 max_delay: float = 10.0, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> None:
        self.root = Path(root)
        super().__init__(
            lambda: ManifestDirectory(self.root, interval=interval, quiet=quiet, max_delay=max_delay),
            name=f"manifest directory {self.root}", quiet=quiet, max_delay=max_delay, root_namespace=root_namespace,
        )

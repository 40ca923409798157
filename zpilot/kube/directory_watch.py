"""Watch a manifest directory and report changes, debounced.

Polling file metadata (path, size, mtime) keeps this dependency-free and works on every file
system, including bind mounts and ConfigMap volumes where inotify events are unreliable.
Changes are debounced the way istiod debounces pushes: fire once the directory has been quiet
for ``quiet`` seconds, but never later than ``max_delay`` after the first unreported change,
so a directory that keeps changing still gets pushed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from .manifests import manifest_files

log = logging.getLogger(__name__)

Fingerprint = frozenset[tuple[str, int, int]]
#: Called with the monotonic time the first change of the burst was seen.
OnChange = Callable[[float], Awaitable[None]]


def fingerprint(root: Path) -> Fingerprint:
    """What identifies the directory's current content: every manifest's path, size and mtime."""
    items = set()
    for path in manifest_files(root) if root.exists() else []:
        try:
            st = path.stat()
        except OSError:  # removed between listing and stat: the next poll sees it gone
            continue
        items.add((str(path), st.st_size, st.st_mtime_ns))
    return frozenset(items)


@dataclass
class Debouncer:
    """The quiet-period / maximum-delay rule, separated from time and I/O so it can be tested."""

    quiet: float = 0.1
    max_delay: float = 10.0
    first_change: float | None = None
    last_change: float | None = None

    def changed(self, now: float) -> None:
        if self.first_change is None:
            self.first_change = now
        self.last_change = now

    def due(self, now: float) -> float | None:
        """The first change's time if the burst should be reported at ``now`` (and reset), else None."""
        if self.first_change is None or self.last_change is None:
            return None
        if now - self.last_change >= self.quiet or now - self.first_change >= self.max_delay:
            first = self.first_change
            self.first_change = self.last_change = None
            return first
        return None


class DirectoryWatch:
    """Polls ``root`` every ``interval`` seconds; calls ``on_change`` once per debounced burst."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        on_change: OnChange,
        *,
        interval: float = 0.05,
        quiet: float = 0.1,
        max_delay: float = 10.0,
    ) -> None:
        self.root = Path(root)
        self.on_change = on_change
        self.interval = interval
        self.debouncer = Debouncer(quiet=quiet, max_delay=max_delay)
        self._seen: Fingerprint | None = None

    def prime(self) -> None:
        """Take the current content as seen (call after the initial load)."""
        self._seen = fingerprint(self.root)

    async def run(self) -> None:
        if self._seen is None:
            self.prime()
        while True:
            await asyncio.sleep(self.interval)
            try:
                current = await asyncio.to_thread(fingerprint, self.root)
            except OSError as exc:
                log.warning("cannot list %s: %s", self.root, exc)
                continue
            now = time.monotonic()
            if current != self._seen:
                self._seen = current
                self.debouncer.changed(now)
            first = self.debouncer.due(now)
            if first is not None:
                log.info("%s changed (%.0f ms ago): reloading", self.root, (now - first) * 1000)
                try:
                    await self.on_change(first)
                except Exception:  # a failed reload must not stop watching
                    log.exception("reloading %s failed; keeping the previous config", self.root)

"""Where the agent reads the model from.

A source answers two questions: has the model (maybe) changed, and what is it now. The manifest
directory answers the first from file names, sizes and modification times, so polling it costs a
``stat`` per file; a Kubernetes API source will answer it from its watch's resource version.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Hashable, Protocol

from ..kube.manifests import load_manifests, manifest_files
from ..model.index import MeshIndex
from ..model.problems import Problems, Severity
from .errors import CniError


#: Problems that mean a file was not (fully) read, as opposed to an object in it being invalid.
_UNREADABLE = re.compile(r"^(cannot read|malformed YAML)")


class ModelSource(Protocol):
    def version(self) -> Hashable:
        """A value that changes whenever the model may have changed."""

    def load(self, problems: Problems) -> MeshIndex:
        """The model now, with what was wrong with it collected into ``problems``."""


class ManifestDirSource:
    """A directory of Kubernetes manifests (``kubectl get ... -o yaml`` output) as the cluster."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return f"manifest directory {self.root}"

    def version(self) -> Hashable:
        if not self.root.exists():
            return ()
        stamps = []
        for path in manifest_files(self.root):
            try:
                st = path.stat()
            except OSError:  # removed between listing and stat: the next poll sees it gone
                continue
            stamps.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def load(self, problems: Problems) -> MeshIndex:
        """The model; refused whole while a file cannot be read or parsed.

        A half-written file (an editor saving, a copy in progress) would otherwise make its pods
        vanish from the model, and the agent would take them out of the mesh until the next poll.
        A single invalid object, by contrast, is skipped and reported, and the rest applies.
        """
        if not self.root.exists():
            raise CniError(f"manifest directory {self.root} does not exist")
        loaded = load_manifests(self.root)
        unreadable = [p for p in loaded.problems if p.severity is Severity.ERROR and _UNREADABLE.search(p.reason)]
        if unreadable:
            raise CniError(
                f"{self} has unreadable files, the node is left as it is until they read again: "
                + "; ".join(f"{p.subject}: {p.reason}" for p in unreadable)
            )
        problems.extend(loaded.problems)
        return MeshIndex.build(loaded.cluster, problems)


def source_for(manifests: Path | None) -> ModelSource:
    if manifests is None:
        raise CniError("no model source: pass --manifests DIR (a Kubernetes API source comes later)")
    return ManifestDirSource(manifests)

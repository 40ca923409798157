"""Where the agent reads the model from.

A source answers two questions: has the model (maybe) changed, and what is it now. The manifest
directory answers the first from file names, sizes and modification times, so polling it costs a
``stat`` per file; a Kubernetes API source will answer it from its watch's resource version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Hashable, Protocol

from ..kube.manifests import load_manifests, manifest_files
from ..model.index import MeshIndex
from ..model.problems import Problems
from .errors import CniError


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
        if not self.root.exists():
            raise CniError(f"manifest directory {self.root} does not exist")
        loaded = load_manifests(self.root)
        problems.extend(loaded.problems)
        return MeshIndex.build(loaded.cluster, problems)


def source_for(manifests: Path | None) -> ModelSource:
    if manifests is None:
        raise CniError("no model source: pass --manifests DIR (a Kubernetes API source comes later)")
    return ManifestDirSource(manifests)

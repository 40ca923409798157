"""The flags that name a cluster, and the credentials they name, loaded once for the whole process.

Where credentials are looked for, and in which order, is :mod:`zpilot.kube.client`'s to say (the
one place a client is made, for the watch and the CA Secret alike); this carries the flags to it,
describes them, turns its refusal into the source's error, and keeps what it loaded: the start's
check (:meth:`Credentials.problem`), the watch, the CA Secret, token reviews and the trust bundle
all use one :class:`~zpilot.kube.client.ClusterAccess`, so an ``exec`` plugin runs once at the
start (not once for each), and its renewals are shared.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from .in_cluster import SERVICE_ACCOUNT_DIR
from .source import SourceError

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

    from .client import ClusterAccess


@dataclass(frozen=True)
class Credentials:
    """``--kubeconfig`` and ``--context`` (both optional), and where a pod's service account would be."""

    kubeconfig: Path | None = None
    context: str | None = None
    service_account_dir: Path = SERVICE_ACCOUNT_DIR
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, compare=False, repr=False)
    #: The loaded access once made (one per Credentials object: share the object to share it).
    _loaded: dict[str, "asyncio.Future[ClusterAccess]"] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        given = [f"kubeconfig {self.kubeconfig}"] if self.kubeconfig is not None else []
        given += [f"context {self.context}"] if self.context else []
        return f"the Kubernetes API ({', '.join(given)})" if given else "the Kubernetes API"

    async def access(self) -> ClusterAccess:
        """The credentials loaded (the kubeconfig read, its plugin run) the first time, the same after; a
        failed load is not kept (the next call tries again). SourceError naming what is unusable."""
        from .client import KubeConfigError

        loading = self._loaded.get("access")
        if loading is None or (loading.done() and (loading.cancelled() or loading.exception() is not None)):
            loading = self._loaded["access"] = asyncio.ensure_future(self._load())
        try:
            return await asyncio.shield(loading)
        except KubeConfigError as exc:
            raise SourceError(str(exc)) from None

    async def _load(self) -> ClusterAccess:
        from .client import load_access

        return await load_access(self.kubeconfig, self.context, environ=self.environ,
                                 service_account_dir=self.service_account_dir)

    async def client(self) -> ApiClient:
        """A client for the cluster (the caller closes it); SourceError naming what is unusable."""
        return (await self.access()).client()

    async def problem(self) -> str | None:
        """Why no client can be made from these credentials, or None (they are then loaded, for later)."""
        try:
            await self.access()
        except SourceError as exc:
            return str(exc)
        return None

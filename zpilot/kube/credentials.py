"""The flags that name a cluster, kept until the API watch starts and makes its client from them.

Where credentials are looked for, and in which order, is :mod:`zpilot.kube.client`'s to say (the
one place a client is made, for the watch and the CA Secret alike); this only carries the flags to
it, describes them, and turns its refusal into the source's error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from .client import SERVICE_ACCOUNT_DIR, KubeConfigError, api_client
from .source import SourceError

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient


@dataclass(frozen=True)
class Credentials:
    """``--kubeconfig`` and ``--context`` (both optional), and where a pod's service account would be."""

    kubeconfig: Path | None = None
    context: str | None = None
    service_account_dir: Path = SERVICE_ACCOUNT_DIR
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, compare=False, repr=False)

    def __str__(self) -> str:
        given = [f"kubeconfig {self.kubeconfig}"] if self.kubeconfig is not None else []
        given += [f"context {self.context}"] if self.context else []
        return f"the Kubernetes API ({', '.join(given)})" if given else "the Kubernetes API"

    async def client(self) -> ApiClient:
        """A client for the cluster (the caller closes it); SourceError naming what is unusable."""
        try:
            return await api_client(self.kubeconfig, self.context, environ=self.environ,
                                    service_account_dir=self.service_account_dir)
        except KubeConfigError as exc:
            raise SourceError(str(exc)) from None

    async def problem(self) -> str | None:
        """Why no client can be made from these credentials, or None (a client is made and closed)."""
        try:
            api = await self.client()
        except SourceError as exc:
            return str(exc)
        await api.close()
        return None

"""Which cluster, and as whom: a kubeconfig, or the pod's service account.

The order, most explicit first:

1. ``--kubeconfig PATH`` (with ``--context``, if given);
2. ``$KUBECONFIG`` (a ``:``-separated list of files, merged as kubectl merges them);
3. the pod's service account (in a pod: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the token and CA
   mounted at ``/var/run/secrets/kubernetes.io/serviceaccount``); its token is re-read as the
   kubelet rotates it;
4. ``~/.kube/config``.

``--context`` alone means a kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``), never the service
account. A credential that cannot be loaded is a :class:`~zpilot.kube.source.SourceError` naming
the file and the reason: that is configuration, not an outage, so it is not retried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .source import SourceError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
HOST_ENV = "KUBERNETES_SERVICE_HOST"
PORT_ENV = "KUBERNETES_SERVICE_PORT"


@dataclass(frozen=True)
class Credentials:
    """What the flags say; :meth:`resolve` picks the credential, :meth:`load` reads it."""

    kubeconfig: Path | None = None
    context: str | None = None
    #: Where a pod's service account is mounted (tests point it elsewhere).
    service_account_dir: Path = SERVICE_ACCOUNT_DIR
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, compare=False, repr=False)

    def resolve(self) -> tuple[str, str]:
        """``("kubeconfig", paths)`` or ``("in-cluster", directory)``; SourceError if there is none."""
        if self.kubeconfig is not None:
            return "kubeconfig", str(self.kubeconfig)
        env = self.environ.get("KUBECONFIG", "")
        if env:
            return "kubeconfig", env
        if self.context is None and self.environ.get(HOST_ENV) and self.environ.get(PORT_ENV):
            return "in-cluster", str(self.service_account_dir)
        home = Path(self.environ.get("HOME") or Path.home()) / ".kube" / "config"
        if home.exists():
            return "kubeconfig", str(home)
        raise SourceError(
            f"no cluster credentials: not in a pod ({HOST_ENV} is unset) and no kubeconfig"
            " (--kubeconfig, $KUBECONFIG, ~/.kube/config); give one, or --manifests DIR to read manifests instead"
        )

    def __str__(self) -> str:
        try:
            how, where = self.resolve()
        except SourceError:
            return "the Kubernetes API (no credentials found)"
        if how == "in-cluster":
            return "the Kubernetes API (in-cluster service account)"
        context = f", context {self.context}" if self.context else ""
        return f"the Kubernetes API (kubeconfig {where}{context})"

    async def load(self) -> Any:
        """A kubernetes-asyncio ``Configuration`` and, for kubeconfig users with expiring tokens (exec
        plugins, gcp), the loader that refreshes them; SourceError when the credential is unusable."""
        import yaml
        from kubernetes_asyncio.client import Configuration
        from kubernetes_asyncio.config import ConfigException, incluster_config, kube_config

        how, where = self.resolve()
        configuration = Configuration()
        if how == "in-cluster":
            directory = Path(where)
            try:
                incluster_config.InClusterConfigLoader(
                    token_filename=str(directory / "token"), cert_filename=str(directory / "ca.crt"),
                    environ=dict(self.environ),
                ).load_and_set(configuration)
            except (ConfigException, OSError) as exc:
                raise SourceError(f"in-cluster service account ({directory}): {exc}") from None
            return configuration, None
        paths = [p for p in where.split(os.pathsep) if p]
        if not any(Path(p).expanduser().is_file() for p in paths):
            raise SourceError(f"kubeconfig {where}: no such file")
        try:
            loader = await kube_config.load_kube_config(
                config_file=where, context=self.context, client_configuration=configuration, persist_config=False)
        except (ConfigException, OSError, yaml.YAMLError, ValueError, KeyError, TypeError, AttributeError) as exc:
            what = f"kubeconfig {where}" + (f", context {self.context}" if self.context else "")
            raise SourceError(f"{what}: {str(exc)[:300] or type(exc).__name__}") from None
        if not configuration.host:
            raise SourceError(f"kubeconfig {where}: the context names no server")
        return configuration, loader

"""The one place a Kubernetes API client is made, for every part of zpilot that talks to a cluster.

Where the credentials come from, in this order (the first that applies wins):

1. ``--kubeconfig PATH`` (``kubeconfig``): that file; it must exist.
2. ``KUBECONFIG``: the file, or ``:``-separated files merged, as kubectl does.
3. In-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT`` are set and the pod's service account is
   mounted (``/var/run/secrets/kubernetes.io/serviceaccount``): its token (re-read as the kubelet
   rotates it) and CA.
4. ``~/.kube/config``.

``--context`` picks a kubeconfig context (default: the file's current-context); it is an error
with in-cluster credentials, which have no contexts. A kubeconfig is never written back (no token
refresh is persisted into the user's file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

#: Where the kubelet mounts a pod's service account (token, ca.crt, namespace).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")


class KubeConfigError(Exception):
    """No usable credentials: the message says which place was tried and what is wrong with it."""


def in_cluster(environ: Mapping[str, str], service_account_dir: Path) -> bool:
    """Whether this process runs in a pod with a service account (in-cluster config applies)."""
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (service_account_dir / "token").is_file()


async def api_client(
    kubeconfig: Path | str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> client.ApiClient:
    """A kubernetes-asyncio client for the cluster the arguments and environment name (see above).

    The caller closes it (``async with`` or ``await api.close()``). ``server(api)`` says where it
    points, for messages. Raises :class:`KubeConfigError`.
    """
    configuration = client.Configuration()
    explicit = str(kubeconfig) if kubeconfig is not None else environ.get("KUBECONFIG") or None
    if explicit is None and in_cluster(environ, service_account_dir):
        if context:
            raise KubeConfigError(f"--context {context}: in-cluster credentials have no contexts (give --kubeconfig)")
        try:
            config.incluster_config.InClusterConfigLoader(
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=dict(environ),
            ).load_and_set(configuration)
        except ConfigException as exc:
            raise KubeConfigError(f"in-cluster credentials ({service_account_dir}): {exc}") from None
        return client.ApiClient(configuration)
    paths = explicit or str(Path(environ["HOME"]) / ".kube" / "config" if environ.get("HOME")
                            else DEFAULT_KUBECONFIG.expanduser())
    named = "--kubeconfig" if kubeconfig is not None else "KUBECONFIG" if explicit else "default kubeconfig"
    existing = [p for p in paths.split(os.pathsep) if p and Path(p).expanduser().is_file()]
    if not existing:
        raise KubeConfigError(
            f"{named} {paths}: no such file; give --kubeconfig, set KUBECONFIG, or run in a pod with a service account"
        )
    try:
        await config.load_kube_config(
            config_file=os.pathsep.join(existing), context=context, client_configuration=configuration,
            persist_config=False,
        )
    except (ConfigException, OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as exc:  # a malformed file too
        where = f"{named} {paths}" + (f" context {context}" if context else "")
        raise KubeConfigError(f"{where}: {exc}") from None
    return client.ApiClient(configuration)


def server(api: client.ApiClient) -> str:
    """The API server ``api`` talks to (its URL), for messages that must say which cluster failed."""
    return str(api.configuration.host)

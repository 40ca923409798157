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

A client lives as long as the process (``zpilot serve``'s for the CA Secret and token reviews, the
watch's until it fails), and the credentials it was made from expire: a bound service-account token
after about an hour (the kubelet writes the next one before), an ``exec`` plugin's (EKS's
``aws eks get-token``: 15 minutes; GKE's ``gke-gcloud-auth-plugin``: an hour). Before each request
the client brings its token up to date (kubernetes-asyncio's ``refresh_api_key_hook``): the
service-account token file is read again each minute (kubernetes-asyncio's own hook), a kubeconfig
user's ``tokenFile`` too (``TOKEN_FILE_REREAD_SECONDS``), and an ``exec`` plugin is run again once its
token is past its ``expirationTimestamp`` (less kubernetes-asyncio's five minutes of margin), killed if it
gives no answer in ``EXEC_PLUGIN_TIMEOUT_SECONDS``; a failed renewal is tried again after
``RENEWAL_RETRY_SECONDS``. A
plugin's token without an ``expirationTimestamp``, and a client certificate (a plugin's or the
file's), are used as first read, for the client's life.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config import kube_config
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.dateutil import parse_rfc3339
from kubernetes_asyncio.config.exec_provider import ExecProvider

log = logging.getLogger(__name__)

#: Where the kubelet mounts a pod's service account (token, ca.crt, namespace).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")
#: How often a kubeconfig's credentials other than an ``exec`` plugin's are read again (a ``tokenFile``
#: something else renews): kubernetes-asyncio's period for the in-cluster token file.
TOKEN_FILE_REREAD_SECONDS = 60.0
#: How long a renewal (an ``exec`` plugin's run) may take before the request goes on with the token in hand:
#: kubernetes-asyncio waits for a plugin without limit, and every request waits for the one renewing.
EXEC_PLUGIN_TIMEOUT_SECONDS = 30.0
#: After a renewal failed (or timed out), how long requests go on with the token in hand before one tries
#: again: a plugin that fails or hangs is not run once per request.
RENEWAL_RETRY_SECONDS = 10.0


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
        loader = await config.load_kube_config(
            config_file=os.pathsep.join(existing), context=context, client_configuration=configuration,
            persist_config=False,
        )
    except (ConfigException, OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as exc:  # a malformed file too
        where = f"{named} {paths}" + (f" context {context}" if context else "")
        raise KubeConfigError(f"{where}: {exc}") from None
    configuration.refresh_api_key_hook = _kubeconfig_token_refresher(loader)
    return client.ApiClient(configuration)


def _kubeconfig_token_refresher(loader: Any) -> Callable[[client.Configuration], Awaitable[None]]:
    """The hook that brings a kubeconfig client's token up to date before each request (kubernetes-asyncio
    reads a kubeconfig once and sets none): an ``exec`` plugin's token with an expiry through the loader's
    own check (``load_from_exec_plugin`` runs the plugin again only once the token is past it), any other
    user's credentials (a ``tokenFile``, an auth provider's) read again every ``TOKEN_FILE_REREAD_SECONDS``.
    One request at a time refreshes: the others wait for its token rather than run the plugin too. A refresh
    that fails (the plugin exits non-zero or gives no answer in ``EXEC_PLUGIN_TIMEOUT_SECONDS``, the file is
    gone) is logged (at most once a minute), not tried again for ``RENEWAL_RETRY_SECONDS``, and the token in
    hand is sent: the API server's 401, if it has expired, is what the caller retries on."""
    lock = asyncio.Lock()
    read_at = time.monotonic()
    logged_at = -TOKEN_FILE_REREAD_SECONDS
    retry_at = 0.0
    user = loader._user or {}  # the context's user section (kubernetes-asyncio keeps no public handle on it)

    async def refresh(configuration: client.Configuration) -> None:
        nonlocal read_at, logged_at, retry_at
        async with lock:
            try:
                if time.monotonic() < retry_at:  # the last renewal failed a moment ago
                    pass
                elif "exec" in user:
                    if hasattr(loader, "exec_plugin_expiry"):  # (no expiry given: used as first read)
                        await _renew_exec_token(loader)
                elif time.monotonic() - read_at >= TOKEN_FILE_REREAD_SECONDS:
                    read_at = time.monotonic()
                    await asyncio.wait_for(loader.load_and_set(configuration), EXEC_PLUGIN_TIMEOUT_SECONDS)
            except Exception as exc:  # whatever the plugin or the file did: the request goes on as it can
                retry_at = time.monotonic() + RENEWAL_RETRY_SECONDS
                if time.monotonic() - logged_at >= TOKEN_FILE_REREAD_SECONDS:
                    logged_at = time.monotonic()
                    why = (f"no answer in {EXEC_PLUGIN_TIMEOUT_SECONDS:g} s" if isinstance(exc, TimeoutError)
                           else f"{type(exc).__name__}: {str(exc)[:500]}")
                    log.warning("%s: the kubeconfig's credentials could not be renewed (%s); the token in hand is sent",
                                configuration.host, why)
            token = getattr(loader, "token", None)
            if token is not None and configuration.api_key.get("BearerToken") != token:
                configuration.api_key["BearerToken"] = token

    return refresh


async def _renew_exec_token(loader: Any) -> None:
    """What ``loader.load_from_exec_plugin`` does to renew a plugin's token once it is past its expiry (less
    kubernetes-asyncio's margin), but with the plugin killed when it gives no answer in
    ``EXEC_PLUGIN_TIMEOUT_SECONDS`` (kubernetes-asyncio waits for it without limit, and a wait cancelled
    leaves it running: a hung plugin a retry) and never asked to prompt (no terminal: serve runs unattended)."""
    if not kube_config._is_expired(loader.exec_plugin_expiry):
        return
    provider = ExecProvider(loader._user["exec"])  # the command, its arguments and environment, as the library reads them
    info = {"apiVersion": provider.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    proc = await asyncio.create_subprocess_exec(
        *provider.args, env={**provider.env, "KUBERNETES_EXEC_INFO": json.dumps(info)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), EXEC_PLUGIN_TIMEOUT_SECONDS)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode:
        raise ConfigException(f"exec: {provider.args[0]} returned {proc.returncode}: "
                              f"{stderr.decode(errors='replace').strip()[:500]}")
    try:
        status = json.loads(stdout)["status"]
        token = status["token"]
    except (ValueError, KeyError, TypeError) as exc:  # (never the output itself: it holds the token)
        raise ConfigException(f"exec: {provider.args[0]} printed no ExecCredential status with a token "
                              f"({type(exc).__name__})") from None
    loader.token = f"Bearer {token}"
    if "expirationTimestamp" in status:
        loader.exec_plugin_expiry = parse_rfc3339(status["expirationTimestamp"])


def server(api: client.ApiClient) -> str:
    """The API server ``api`` talks to (its URL), for messages that must say which cluster failed."""
    return str(api.configuration.host)

"""The one place a Kubernetes API client is made, for every part of zpilot that talks to a cluster.

Where the credentials come from, in this order (the first that applies wins):

1. ``--kubeconfig PATH`` (``kubeconfig``): that file; it must exist.
2. ``KUBECONFIG``: the file, or ``:``-separated files merged, as kubectl does.
3. In-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT`` are set and the pod's service account is
   mounted (``/var/run/secrets/kubernetes.io/serviceaccount``): its token (re-read as the kubelet
   rotates it) and CA.
4. ``~/.kube/config``.

``--context`` picks a kubeconfig context (default: the first file's current-context); it is an error
with in-cluster credentials, which have no contexts. A kubeconfig is read by :mod:`.kubeconfig` (kubectl's
merge rules) and never written back (no token refresh is persisted into the user's file). An ``exec``
plugin is run by :mod:`.exec_plugin`, at the first load as at each renewal: killed if it gives no answer in
``EXEC_PLUGIN_TIMEOUT_SECONDS`` (``exec_timeout``), the start then failing with an error that names the
kubeconfig user.

The credentials are loaded once (:func:`load_access`: the kubeconfig read, its plugin run) into a
:class:`ClusterAccess`, and every client of the process is made from it (:meth:`ClusterAccess.client`):
``zpilot serve``'s watch, CA Secret, token reviews and trust bundle share one loaded configuration, so a
plugin runs once at the start, and each renewal once for all of them. The kubeconfig's CA, client
certificate and key stay in memory (:mod:`.key_material`), never in a temp file; the TLS context made of
them is shared by the clients too (:mod:`.client_tls`).

A client lives as long as the process (``zpilot serve``'s for the CA Secret and token reviews, the
watch's until it fails), and the credentials it was made from expire: a bound service-account token
after about an hour (the kubelet writes the next one before), an ``exec`` plugin's (EKS's
``aws eks get-token``: 15 minutes; GKE's ``gke-gcloud-auth-plugin``: an hour). Before each request
the client brings its token up to date (kubernetes-asyncio's ``refresh_api_key_hook``): the
service-account token file is read again each minute (kubernetes-asyncio's own hook), a kubeconfig
user's ``tokenFile`` too (``TOKEN_FILE_REREAD_SECONDS``), and an ``exec`` plugin is run again once its
token is within five minutes of its ``expirationTimestamp``, and an ``oidc`` auth provider's ID token is refreshed
once within five minutes of its ``exp`` (:mod:`.oidc`: its IdP's CA in memory, never in a temp file, as
kubernetes-asyncio wrote it); a failed renewal is tried again after
``RENEWAL_RETRY_SECONDS``. A plugin's token without an ``expirationTimestamp``, and a plugin's client
certificate, are used as first read, for the client's life. A user's client certificate and key given as
files are read again every ``CLIENT_CERTIFICATE_REREAD_SECONDS`` before a request, and a new pair is used
for the next connections, the watches open with the last one opened again with it (:mod:`.client_tls`); a pair
that cannot be used is refused, the last good one kept.
"""

from __future__ import annotations

import asyncio
import logging
import functools
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from .client_tls import ClientTls, attach
from .exec_plugin import ExecPluginError, due, run_exec_plugin
from .in_cluster import SERVICE_ACCOUNT_DIR
from .key_material import make_client, ssl_context
from .kubeconfig import ExecCredential, ExecPlugin, read_kubeconfig
from .oidc import OidcError, OidcTokens

log = logging.getLogger(__name__)

DEFAULT_KUBECONFIG = Path("~/.kube/config")
#: How often a kubeconfig's credentials other than an ``exec`` plugin's are read again (a ``tokenFile``
#: something else renews): kubernetes-asyncio's period for the in-cluster token file.
TOKEN_FILE_REREAD_SECONDS = 60.0
#: How often a kubeconfig user's client certificate and key files are read again (client-go: every five minutes),
#: and how soon after a pair that could not be used (a rotation half written: the other file follows).
CLIENT_CERTIFICATE_REREAD_SECONDS = 60.0
CLIENT_CERTIFICATE_RETRY_SECONDS = 10.0
#: How long an ``exec`` plugin's run may take: at the first load (the start then fails), and at a renewal (the
#: request then goes on with the token in hand). kubernetes-asyncio waits for a plugin without limit, and
#: every request waits for the one renewing.
EXEC_PLUGIN_TIMEOUT_SECONDS = 30.0
#: After a renewal failed (or timed out), how long requests go on with the token in hand before one tries
#: again: a plugin that fails or hangs is not run once per request.
RENEWAL_RETRY_SECONDS = 10.0


class KubeConfigError(Exception):
    """No usable credentials: the message says which place was tried and what is wrong with it."""


def in_cluster(environ: Mapping[str, str], service_account_dir: Path) -> bool:
    """Whether this process runs in a pod with a service account (in-cluster config applies)."""
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (service_account_dir / "token").is_file()


class ClusterAccess:
    """One cluster's credentials, loaded once: what every client of the process is made from. The clients
    share one configuration, so one renewal (one plugin run) brings all of their tokens up to date."""

    def __init__(self, configuration: client.Configuration, tls: ClientTls | None = None) -> None:
        self.configuration = configuration
        self._tls = tls  # None: the configuration's own file paths (in-cluster: the mounted ca.crt)

    @property
    def server(self) -> str:
        return str(self.configuration.host)

    def client(self) -> client.ApiClient:
        """A new client (the caller closes it: ``async with`` or ``await api.close()``)."""
        if self._tls is None:
            return client.ApiClient(self.configuration)
        return attach(make_client(self.configuration, self._tls.material), self._tls)


async def api_client(
    kubeconfig: Path | str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    exec_timeout: float | None = None,
) -> client.ApiClient:
    """A client of its own loaded credentials (:func:`load_access`); a process that makes several clients
    loads once and calls :meth:`ClusterAccess.client` instead."""
    access = await load_access(kubeconfig, context, environ=environ, service_account_dir=service_account_dir,
                               exec_timeout=exec_timeout)
    return access.client()


async def load_access(
    kubeconfig: Path | str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    exec_timeout: float | None = None,
) -> ClusterAccess:
    """The credentials of the cluster the arguments and environment name (see above), loaded.

    ``server(api)`` says where a client points, for messages. ``exec_timeout`` (default
    ``EXEC_PLUGIN_TIMEOUT_SECONDS``) bounds each run of a kubeconfig user's ``exec`` plugin. Raises
    :class:`KubeConfigError`.
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
        return ClusterAccess(configuration)
    paths = explicit or str(Path(environ["HOME"]) / ".kube" / "config" if environ.get("HOME")
                            else DEFAULT_KUBECONFIG.expanduser())
    named = "--kubeconfig" if kubeconfig is not None else "KUBECONFIG" if explicit else "default kubeconfig"
    # (``~`` expanded as kubernetes-asyncio did: a KUBECONFIG from a unit file or a container's env has it unexpanded)
    # (--kubeconfig names one file, as kubectl's does; KUBECONFIG is a list)
    listed = [paths] if kubeconfig is not None else paths.split(os.pathsep)
    existing = [p for p in (Path(p).expanduser() for p in listed if p) if p.is_file()]
    if not existing:
        raise KubeConfigError(
            f"{named} {paths}: no such file; give --kubeconfig, set KUBECONFIG, or run in a pod with a service account"
        )
    where = f"{named} {paths}" + (f" context {context}" if context else "")
    timeout = EXEC_PLUGIN_TIMEOUT_SECONDS if exec_timeout is None else exec_timeout
    try:
        kubeconfig_read = read_kubeconfig(existing, context)
        plugin = kubeconfig_read.exec_plugin()
        oidc_provider = kubeconfig_read.oidc_provider() if plugin is None else None
        renew: Callable[[], Awaitable[ExecCredential]] | None = None
        is_due: Callable[[ExecCredential], bool] = due
        credential: ExecCredential | None = None
        if plugin is not None:
            credential = await run_exec_plugin(plugin, timeout)
            renew = functools.partial(_run_again, plugin, timeout)
        elif oidc_provider is not None:
            oidc = OidcTokens(oidc_provider)
            credential = oidc.first() or await oidc.renew(timeout)
            renew, is_due = functools.partial(oidc.renew, timeout), oidc.due
        tls = kubeconfig_read.tls(credential)
        loader = await config.load_kube_config_from_dict(
            kubeconfig_read.document(credential), context=kubeconfig_read.context, client_configuration=configuration,
        )
        client_tls = None
        if any(pem is not None for pem in (tls.ca, tls.client_certificate, tls.client_key)):
            # (a plugin's certificate, where it gave one, is in the files' place)
            files = (kubeconfig_read.client_certificate_files()
                     if credential is None or credential.client_certificate is None else None)
            client_tls = ClientTls(
                tls, functools.partial(ssl_context, configuration=configuration, cluster=kubeconfig_read.cluster_name,
                                       user=kubeconfig_read.user_name),
                user=str(kubeconfig_read.user_name), files=files, reread_seconds=CLIENT_CERTIFICATE_REREAD_SECONDS,
                retry_seconds=CLIENT_CERTIFICATE_RETRY_SECONDS)
    except (ExecPluginError, OidcError, ConfigException, OSError, yaml.YAMLError, ValueError, KeyError,
            TypeError) as exc:
        raise KubeConfigError(f"{where}: {exc}") from None  # (a malformed file too)
    configuration.refresh_api_key_hook = _token_refresher(loader, renew, credential, timeout, is_due)
    return ClusterAccess(configuration, client_tls)


async def _run_again(plugin: ExecPlugin, timeout: float) -> ExecCredential:
    """A renewal of ``plugin``'s token: it is run again, and must answer a token again."""
    renewed = await run_exec_plugin(plugin, timeout)
    if renewed.token is None:
        raise ExecPluginError(f"kubeconfig user {plugin.user}: exec plugin {plugin.command}: "
                              "answered a certificate where it had given a token")
    return renewed


class StaleCredential(Exception):
    """A renewal answered a token that has expired already."""


def _token_refresher(
    loader: Any, renew: Callable[[], Awaitable[ExecCredential]] | None, credential: ExecCredential | None,
    timeout: float, is_due: Callable[[ExecCredential], bool] = due,
) -> Callable[[client.Configuration], Awaitable[None]]:
    """The hook that brings a kubeconfig client's token up to date before each request (kubernetes-asyncio
    reads a kubeconfig once and sets none).

    - An ``exec`` plugin's token with an expiry, or an ``oidc`` provider's: ``renew`` (the plugin run again,
      :func:`run_exec_plugin`; the ID token refreshed, :mod:`.oidc`) once the token is due (``is_due``:
      :func:`due`, the provider's). A renewal that answers a token expired already counts as failed (else it
      would be renewed again before every request).
    - Any other user's credentials (a ``tokenFile``, an auth provider's): read again every
      ``TOKEN_FILE_REREAD_SECONDS`` through the loader's public ``load_and_set``.

    One request at a time refreshes: the others wait for its token rather than run the plugin too. A refresh
    that fails (the plugin exits non-zero or gives no answer in ``timeout``, the file is gone) is logged (at
    most once a minute), not tried again for ``RENEWAL_RETRY_SECONDS``, and the token in hand is sent: the API
    server's 401, if it has expired, is what the caller retries on."""
    locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}  # (loaded in one loop, used in another: per loop)
    read_at = time.monotonic()
    logged_at = -TOKEN_FILE_REREAD_SECONDS
    retry_at = 0.0
    # (a plugin's certificate, or a token without an expiry, is used as first read)
    renewable = credential is not None and credential.token is not None and credential.expiry is not None

    async def refresh(configuration: client.Configuration) -> None:
        nonlocal read_at, logged_at, retry_at, credential
        loop = asyncio.get_running_loop()
        lock = locks.get(loop)
        if lock is None:
            locks.clear()  # (a loop that ran the check before serving is closed: its lock is no use)
            lock = locks[loop] = asyncio.Lock()
        async with lock:
            try:
                if time.monotonic() < retry_at:  # the last renewal failed a moment ago
                    pass
                elif renew is not None:
                    if renewable and is_due(credential):
                        credential = await renew()
                        if credential.expiry is not None and credential.expiry <= datetime.now(timezone.utc):
                            raise StaleCredential(f"the renewed token expired at {credential.expiry:%Y-%m-%dT%H:%M:%SZ}"
                                                  " already (a clock skew?)")
                elif time.monotonic() - read_at >= TOKEN_FILE_REREAD_SECONDS:
                    read_at = time.monotonic()
                    await asyncio.wait_for(loader.load_and_set(configuration), timeout)
            except Exception as exc:  # whatever the plugin or the file did: the request goes on as it can
                retry_at = time.monotonic() + RENEWAL_RETRY_SECONDS
                if time.monotonic() - logged_at >= TOKEN_FILE_REREAD_SECONDS:
                    logged_at = time.monotonic()
                    why = (f"no answer in {timeout:g} s" if isinstance(exc, TimeoutError)
                           else f"{type(exc).__name__}: {str(exc)[:500]}")
                    log.warning("%s: the kubeconfig's credentials could not be renewed (%s); the token in hand is sent",
                                configuration.host, why)
            token = (f"Bearer {credential.token}" if credential is not None and credential.token is not None
                     else getattr(loader, "token", None))
            if token is not None and configuration.api_key.get("BearerToken") != token:
                configuration.api_key["BearerToken"] = token

    return refresh


def server(api: client.ApiClient) -> str:
    """The API server ``api`` talks to (its URL), for messages that must say which cluster failed."""
    return str(api.configuration.host)

"""The mesh's trust bundle published in a ConfigMap, where ztunnels read it to check zpilot serve.

With ``--xds-auth token`` a ztunnel proves its node with its ServiceAccount token and checks the
ADS server's certificate against the mesh CA's roots (``zpilot bootstrap --ca-bundle``). In a
cluster those roots reach the ztunnel pods in a ConfigMap volume (Istio's ``istio-ca-root-cert``
does the same), never from the CA Secret: a pod that mounts a Secret lets its node's kubelet read
all of it, the CA key included, and the ztunnel DaemonSet runs on every node.

Every replica keeps the ConfigMap equal to its CA's trust bundle (:meth:`CertificateAuthority.trust_bundle_pem`:
the roots of the signing chain and the extra roots, so a root rotation's overlap reaches the
ztunnels before the new root signs anything). Replicas share one CA, so they write the same bytes:
a replica that finds them there writes nothing. It reads the ConfigMap by name, creates it when
absent and replaces its one key when it differs; a racing replica's create or update (409) makes
it read again. Other keys of the ConfigMap are left as they are.

:data:`PERMISSIONS` lists every (verb, resource) this module asks the API server for, all on
``configmaps`` in the ConfigMap's namespace (a Role there; ``get`` and ``update`` can be narrowed
to the ConfigMap's name, ``create`` cannot).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from .kube_secret import MANAGED_BY, SecretName, status_message, retry_delay

log = logging.getLogger("zpilot.certs.trust_bundle")

#: ``--trust-bundle-configmap`` alone.
DEFAULT_CONFIGMAP = "istio-system/zpilot-ca-root"
#: The key holding the bundle (PEM), as in Istio's cacerts and istio-ca-root-cert.
BUNDLE_KEY = "root-cert.pem"
#: Every (verb, resource) this module uses.
PERMISSIONS: tuple[tuple[str, str], ...] = (("get", "configmaps"), ("create", "configmaps"), ("update", "configmaps"))

_API_ERRORS = (ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class TrustBundleUnavailable(Exception):
    """The API server did not let zpilot read or write the ConfigMap: the message says which server and why."""


class TrustBundlePublisher:
    """Keeps one ConfigMap's :data:`BUNDLE_KEY` equal to the bundle it is given."""

    def __init__(self, api: client.ApiClient, configmap: SecretName) -> None:
        self.configmap = configmap
        self.server = str(api.configuration.host)
        self._core = client.CoreV1Api(api)
        self._published: str | None = None  # what this publisher last saw in place

    def _failure(self, verb: str, exc: BaseException) -> TrustBundleUnavailable:
        what = f"{self.server}: {verb} ConfigMap {self.configmap}"
        if isinstance(exc, ApiException):
            reason = f"{exc.status} {status_message(exc)}"
            if exc.status in (401, 403):
                needed = ", ".join(v for v, _ in PERMISSIONS)
                reason += (f"; zpilot serve needs {needed} on configmaps in namespace {self.configmap.namespace}"
                           " (a Role bound to its service account)")
            return TrustBundleUnavailable(f"{what}: {reason}")
        return TrustBundleUnavailable(f"{what}: {type(exc).__name__}: {str(exc)[:300] or 'no detail'}")

    async def publish(self, bundle_pem: bytes) -> bool:
        """Make the ConfigMap hold ``bundle_pem``; True if this call wrote it, False if it was there.

        Raises TrustBundleUnavailable when the API server refuses or fails (worth retrying).
        """
        text = bundle_pem.decode("ascii")
        if text == self._published:
            return False
        for _ in range(5):  # another replica created or changed it in between: read again
            try:
                current = await self._core.read_namespaced_config_map(self.configmap.name, self.configmap.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise self._failure("get", exc) from None
                current = None
            except _API_ERRORS as exc:
                raise self._failure("get", exc) from None
            if current is not None and (current.data or {}).get(BUNDLE_KEY) == text:
                self._published = text
                return False
            try:
                if current is None:
                    await self._core.create_namespaced_config_map(self.configmap.namespace, client.V1ConfigMap(
                        metadata=client.V1ObjectMeta(name=self.configmap.name, namespace=self.configmap.namespace,
                                                     labels=dict(MANAGED_BY)),
                        data={BUNDLE_KEY: text},
                    ))
                else:
                    current.data = {**(current.data or {}), BUNDLE_KEY: text}
                    await self._core.replace_namespaced_config_map(self.configmap.name, self.configmap.namespace,
                                                                   current)
            except ApiException as exc:
                if exc.status == 409:  # AlreadyExists, or Conflict on a stale resourceVersion
                    continue
                raise self._failure("create" if current is None else "update", exc) from None
            except _API_ERRORS as exc:
                raise self._failure("create" if current is None else "update", exc) from None
            self._published = text
            log.info("published the trust bundle in ConfigMap %s", self.configmap)
            return True
        raise TrustBundleUnavailable(f"{self.server}: ConfigMap {self.configmap} keeps changing under us")

    async def keep_published(self, bundle: Callable[[], bytes], changed: asyncio.Event) -> None:
        """Publish ``bundle()`` now and whenever ``changed`` is set, retrying failures with a growing
        delay; never returns (cancel it)."""
        attempt = 0
        while True:
            changed.clear()
            try:
                await self.publish(bundle())
                attempt = 0
                await changed.wait()
            except TrustBundleUnavailable as exc:
                delay = retry_delay(attempt)
                log.error("cannot publish the trust bundle: %s; retrying in %.1f s", exc, delay)
                attempt += 1
                try:  # a change meanwhile is published at the retry, not sooner
                    await asyncio.wait_for(changed.wait(), delay)
                except asyncio.TimeoutError:
                    pass

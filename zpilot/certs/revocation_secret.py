"""``zpilot revoke --ca-secret``: the revocation list written into the CA Secret's own key.

Read, changed, replaced with the resourceVersion read: the API server refuses the replace (409) if anyone
changed the Secret in between (another revocation, a CA rotation), and it is read again. Only
:data:`~zpilot.certs.kube_secret.REVOCATIONS_KEY` is changed; the CA's keys are written back as read.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Callable

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from zpilot.certs.kube_secret import REVOCATIONS_KEY, SecretName, revocations_from_secret, status_message
from zpilot.certs.revocation import RevocationError, RevocationList

#: What ``zpilot revoke --ca-secret`` asks of the API server, on the Secret (its caller's RBAC).
PERMISSIONS: tuple[tuple[str, str], ...] = (("get", "secrets"), ("update", "secrets"))
#: Replaces refused for a concurrent change before giving up.
ATTEMPTS = 5


def _failure(server: str, secret: SecretName, verb: str, exc: BaseException) -> RevocationError:
    what = f"{server}: {verb} Secret {secret}"
    if isinstance(exc, ApiException):
        hint = ""
        if exc.status in (401, 403):
            hint = f"; zpilot revoke needs {', '.join(v for v, _ in PERMISSIONS)} on secrets in namespace {secret.namespace}"
        elif exc.status == 404:
            hint = "; it holds the CA of zpilot serve --ca-secret, which creates it on its first start"
        return RevocationError(f"{what}: {exc.status} {status_message(exc)}{hint}")
    return RevocationError(f"{what}: {type(exc).__name__}: {str(exc)[:300] or 'no detail'}")


async def update_secret(credentials, secret: SecretName,
                        change: Callable[[RevocationList], RevocationList]) -> RevocationList:
    """Replace the Secret's revocation list by ``change(current)``; returns the list written."""
    from zpilot.kube.source import SourceError

    try:
        api = await credentials.client()
    except SourceError as exc:
        raise RevocationError(str(exc)) from None
    try:
        return await update_secret_with(api, secret, change)
    finally:
        await api.close()


async def update_secret_with(api: client.ApiClient, secret: SecretName,
                             change: Callable[[RevocationList], RevocationList]) -> RevocationList:
    """:func:`update_secret` with a client the caller owns."""
    server = str(api.configuration.host)
    core = client.CoreV1Api(api)
    for _ in range(ATTEMPTS):
        try:
            found = await core.read_namespaced_secret(secret.name, secret.namespace)
        except (ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise _failure(server, secret, "get", exc) from None
        data = dict(found.data or {})
        updated = change(revocations_from_secret(secret, data))
        data[REVOCATIONS_KEY] = base64.b64encode(updated.to_bytes()).decode()
        found.data = data  # metadata.resourceVersion stays: a concurrent change makes this a 409
        try:
            await core.replace_namespaced_secret(secret.name, secret.namespace, found)
        except ApiException as exc:
            if exc.status == 409:
                continue
            raise _failure(server, secret, "update", exc) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise _failure(server, secret, "update", exc) from None
        return updated
    raise RevocationError(f"{server}: Secret {secret} kept changing while the revocation was written;"
                          " nothing was written, try again")

"""The CA kept in a Kubernetes Secret, so that every ``zpilot serve`` replica signs under one root.

A storage backend beside :mod:`zpilot.certs.storage` (the directory): it moves the Secret's bytes
into a :class:`CaMaterial`, and :meth:`CertificateAuthority.from_material` parses and checks them
exactly as it does files. The Secret's keys are those of Istio's ``cacerts``:

===================  =====================================================================
``ca-cert.pem``      the signing certificate (a root, or an intermediate), required
``ca-key.pem``       its private key, required
``cert-chain.pem``   optional: the chain from ``ca-cert.pem`` up to the root
``root-cert.pem``    optional: the root(s) the chain ends in (all trusted)
``extra-roots.pem``  optional, zpilot's: more trusted roots, not signing (rotation overlap)
===================  =====================================================================

Three rules make replicas agree:

* **Create once, then read.** A replica lists the Secret; if there is none it creates one holding a
  new self-signed root. Two replicas racing both try: the API server accepts one create, the
  other gets 409 AlreadyExists and reads back and uses *that* Secret, so both end on one root.
* **A Secret that exists is used as is**: ``zpilot serve`` never writes to it (a user's ``cacerts``);
  only ``zpilot revoke`` adds or replaces its one key, :data:`REVOCATIONS_KEY` (the revocation list of
  node credentials, ``zpilot.certs.revocation``), with the resourceVersion it read (a concurrent change
  makes it read again, never overwrites).
* **Follow it**: a watch (from the list's resourceVersion; after 410 Gone, list again) sees every
  change. A change of the CA's keys goes through the same reload path as SIGHUP (``reload()`` parses the
  latest bytes seen; the runtime re-issues and pushes what changed); a change of the revocation list
  goes to the server's :class:`~zpilot.xds.revocations.Revocations` only. A Secret that becomes
  unusable, or is deleted, fails that reload: the current CA stays in use and the error is
  logged. Nothing here ever replaces a root the mesh uses by one it made itself.

:data:`PERMISSIONS` lists every (verb, resource) this module asks the API server for, so RBAC (a
Role in the Secret's namespace) can be derived from it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from zpilot.certs.ca import CertificateAuthority, Clock, new_root_files, utc_now
from zpilot.certs.revocation import EMPTY, REVOCATIONS_NAME, RevocationError, RevocationList
from zpilot.certs.spiffe import DEFAULT_TRUST_DOMAIN
from zpilot.certs.storage import CaMaterial, PemPart
from zpilot.certs.x509_helpers import CertificateAuthorityError
from zpilot.kube.client_tls import ConnectionRetired
from zpilot.kube.object_names import SecretName  # (defined there: commands take one without loading this client)

log = logging.getLogger("zpilot.certs.kube_secret")

DEFAULT_SECRET = "istio-system/zpilot-ca"
CA_CERT_KEY = "ca-cert.pem"
CA_KEY_KEY = "ca-key.pem"
CERT_CHAIN_KEY = "cert-chain.pem"
ROOT_CERT_KEY = "root-cert.pem"
EXTRA_ROOTS_KEY = "extra-roots.pem"
#: Every key of the CA zpilot reads; others in the Secret are ignored (and not counted against the limit).
CA_KEYS = (CA_CERT_KEY, CA_KEY_KEY, CERT_CHAIN_KEY, ROOT_CERT_KEY, EXTRA_ROOTS_KEY)
#: The revoked node credentials (``zpilot revoke``), read apart from the CA's keys.
REVOCATIONS_KEY = REVOCATIONS_NAME
#: The decoded size of those keys together: a CA with a long chain and several roots is a few KiB.
MAX_CA_BYTES = 256 * 1024
#: Label on a Secret zpilot created (a user's own Secret is never touched).
MANAGED_BY = {"app.kubernetes.io/managed-by": "zpilot"}

#: Every (verb, resource) this module uses, all on ``secrets`` in the Secret's namespace (a Role there):
#: list (the Secret by name, and a resourceVersion to watch from), watch (changes), create (first start).
PERMISSIONS: tuple[tuple[str, str], ...] = (("list", "secrets"), ("watch", "secrets"), ("create", "secrets"))

#: The watch is re-opened after this many seconds (the server ends it), jittered, as client-go does.
WATCH_TIMEOUT = 300
#: Retry delays after an API error: doubling from the first, capped, with jitter.
RETRY_FIRST, RETRY_MAX = 0.5, 30.0
#: Bytes of an API server's error body kept for a message.
MAX_REASON = 300


class CaSecretUnavailable(Exception):
    """The API server did not let zpilot read or create the Secret: the message says which server and why."""


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): doubling, capped, +-20 % jitter
    so that replicas restarted together do not retry in step."""
    return min(RETRY_FIRST * 2 ** min(attempt, 16), RETRY_MAX) * random.uniform(0.8, 1.2)


def material_from_secret(secret: SecretName, data: Mapping[str, str] | None) -> CaMaterial:
    """The CA material in a Secret's ``data`` (base64 values, as the API returns them).

    Raises CertificateAuthorityError naming the Secret and key; never quotes a value.
    """
    where = f"Secret {secret}"
    data = data or {}
    decoded: dict[str, bytes] = {}
    total = 0
    for key in CA_KEYS:
        value = data.get(key)
        if value is None:
            continue
        try:
            decoded[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise CertificateAuthorityError(f"{where} key {key}: not base64") from None
        total += len(decoded[key])
        if total > MAX_CA_BYTES:
            raise CertificateAuthorityError(f"{where}: its CA keys hold more than {MAX_CA_BYTES} bytes")
    missing = [k for k in (CA_CERT_KEY, CA_KEY_KEY) if not decoded.get(k, b"").strip()]
    if missing:
        present = ", ".join(sorted(k[:100] for k in data)[:20]) or "none"
        raise CertificateAuthorityError(
            f"{where}: no {' and no '.join(missing)} (keys present: {present}); a CA Secret holds"
            f" {CA_CERT_KEY} and {CA_KEY_KEY}, optionally {CERT_CHAIN_KEY}, {ROOT_CERT_KEY}, {EXTRA_ROOTS_KEY}"
        )

    def part(key: str) -> tuple[PemPart, ...]:  # Istio leaves unused keys empty: absent, then
        return (PemPart(decoded[key], f"{where} key {key}"),) if decoded.get(key, b"").strip() else ()

    return CaMaterial(
        chain=part(CA_CERT_KEY) + part(CERT_CHAIN_KEY),
        key=part(CA_KEY_KEY)[0],
        roots=part(ROOT_CERT_KEY),
        extra_roots=part(EXTRA_ROOTS_KEY),
        source=where,
    )


def api_failure(server: str, secret: SecretName, verb: str, exc: BaseException) -> CaSecretUnavailable:
    """One clear message for a failed call: which server, which Secret, what was refused and why."""
    what = f"{server}: {verb} Secret {secret}"
    if isinstance(exc, ApiException):
        reason = status_message(exc)
        if exc.status in (401, 403):
            needed = ", ".join(v for v, _ in PERMISSIONS)
            return CaSecretUnavailable(
                f"{what}: {exc.status} {reason}; zpilot serve needs {needed} on secrets in namespace"
                f" {secret.namespace} (a Role bound to its service account)"
            )
        return CaSecretUnavailable(f"{what}: {exc.status} {reason}")
    return CaSecretUnavailable(f"{what}: {type(exc).__name__}: {str(exc)[:MAX_REASON] or 'no detail'}")


def status_message(exc: ApiException) -> str:
    """The Status message the server sent (bounded), or the HTTP reason."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or "no reason given")[:MAX_REASON]


class SecretCaStore:
    """The CA in one Secret: :meth:`open` once (creating it if absent), then :meth:`follow` it."""

    def __init__(
        self,
        api: client.ApiClient,
        secret: SecretName,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        clock: Clock = utc_now,
        watch_timeout: int = WATCH_TIMEOUT,
    ) -> None:
        self.secret = secret
        self.server = str(api.configuration.host)
        self.trust_domain = trust_domain
        self._clock = clock
        self._core = client.CoreV1Api(api)
        self._watch_timeout = watch_timeout
        self._data: dict[str, str] | None = None  # the Secret's data as last seen; None: absent
        self._resource_version: str | None = None  # where the watch continues from; None: list first
        self._on_revocations: Callable[[], Any] | None = None

    # -- first start -------------------------------------------------------------------------------

    async def open(self) -> CertificateAuthority:
        """The CA in the Secret, creating the Secret with a new root if there is none.

        Raises CaSecretUnavailable (the API refused or failed: worth retrying) or
        CertificateAuthorityError (the Secret exists but is unusable: fix it).
        """
        for _ in range(3):  # created and deleted by someone else in between: look again, a few times
            found = await self._list()
            if found is not None:
                self._data = found
                return self._authority()
            created = await self._create()
            if created is not None:
                self._data = created
                ca = self._authority()
                log.warning("created Secret %s with a new self-signed root CA (sha256 %s); back it up: its %s"
                            " signs every identity in the mesh", self.secret, ca.fingerprint, CA_KEY_KEY)
                return ca
            log.info("Secret %s was created by another replica meanwhile; using that one", self.secret)
        raise CaSecretUnavailable(f"{self.server}: Secret {self.secret} keeps appearing and disappearing")

    def revocation_list(self) -> RevocationList:
        """The revocation list in the Secret as last seen (empty without the key); RevocationError (also when the
        Secret was deleted: that lifts no revocation)."""
        if self._data is None:
            raise RevocationError(f"Secret {self.secret} was deleted; the revocation list read before stays in force")
        return revocations_from_secret(self.secret, self._data)

    async def _list(self) -> dict[str, str] | None:
        """The Secret's data (None if absent), remembering the list's resourceVersion to watch from."""
        try:
            listed = await self._core.list_namespaced_secret(
                self.secret.namespace, field_selector=f"metadata.name={self.secret.name}",
            )
        except (ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise api_failure(self.server, self.secret, "list", exc) from None
        self._resource_version = listed.metadata.resource_version
        if not listed.items:
            return None
        return dict(listed.items[0].data or {})

    async def _create(self) -> dict[str, str] | None:
        """Create the Secret with a new root; None if another replica created it first (409)."""
        root = new_root_files(self.trust_domain, self._clock())
        data = {
            CA_CERT_KEY: base64.b64encode(root.cert_pem).decode(),
            CA_KEY_KEY: base64.b64encode(root.key_pem).decode(),
            ROOT_CERT_KEY: base64.b64encode(root.cert_pem).decode(),
        }
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=self.secret.name, namespace=self.secret.namespace, labels=MANAGED_BY),
            type="Opaque",
            data=data,
        )
        try:
            created = await self._core.create_namespaced_secret(self.secret.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise api_failure(self.server, self.secret, "create", exc) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise api_failure(self.server, self.secret, "create", exc) from None
        self._resource_version = created.metadata.resource_version
        return dict(created.data or data)

    def _authority(self) -> CertificateAuthority:
        """The CA in the Secret as last seen: what ``reload()`` of every CA made here returns."""
        if self._data is None:
            raise CertificateAuthorityError(
                f"Secret {self.secret} was deleted; recreate it (the current CA's root must stay, or every"
                " ztunnel's trust breaks); zpilot keeps using the CA it has"
            )
        return CertificateAuthority.from_material(
            material_from_secret(self.secret, self._data), trust_domain=self.trust_domain, clock=self._clock,
            reloader=self._authority,
        )

    # -- following changes --------------------------------------------------------------------------

    async def follow(self, on_change: Callable[[], Awaitable[Any]],
                     on_revocations: Callable[[], Any] | None = None) -> None:
        """Watch the Secret forever; call ``on_change`` (the runtime's CA reload) when its CA keys changed,
        ``on_revocations`` when its revocation list did.

        Errors never end it: it logs which server and why, waits (:func:`retry_delay`) and carries on.
        """
        self._on_revocations = on_revocations
        failures = 0
        while True:
            try:
                if self._resource_version is None:
                    await self._seen(await self._list(), on_change)
                await self._watch_once(on_change)
                failures = 0
            except CaSecretUnavailable as exc:
                log.error("%s; retrying", exc)
            except ConnectionRetired:  # closed for a new client certificate (kube.client_tls): watched again at once
                continue
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion was compacted away: list again, at once
                    log.info("watch of Secret %s expired (410 Gone); listing it again", self.secret)
                    self._resource_version = None
                    continue
                log.error("%s; retrying", api_failure(self.server, self.secret, "watch", exc))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.warning("%s; retrying", api_failure(self.server, self.secret, "watch", exc))
            else:
                continue
            await asyncio.sleep(retry_delay(failures))
            failures += 1

    async def _watch_once(self, on_change: Callable[[], Awaitable[Any]]) -> None:
        """One watch request, until the server ends it (its timeout) or it fails."""
        timeout = int(self._watch_timeout * random.uniform(1.0, 1.2))
        async with watch.Watch() as stream:
            async for event in stream.stream(
                self._core.list_namespaced_secret, self.secret.namespace,
                field_selector=f"metadata.name={self.secret.name}", resource_version=self._resource_version,
                allow_watch_bookmarks=True, timeout_seconds=timeout, _request_timeout=timeout + 30,
            ):
                kind = event["type"]
                if kind in ("ADDED", "MODIFIED"):
                    await self._seen(dict(event["raw_object"].get("data") or {}), on_change)
                elif kind == "DELETED":
                    await self._seen(None, on_change)
                if stream.resource_version:
                    self._resource_version = stream.resource_version

    async def _seen(self, data: dict[str, str] | None, on_change: Callable[[], Awaitable[Any]]) -> None:
        before, self._data = self._data, data
        # a deleted Secret lifts no revocation: like the CA, the list read before stays in force
        if data is not None and _part(before, REVOCATIONS_KEY) != _part(data, REVOCATIONS_KEY) \
                and self._on_revocations is not None:
            self._on_revocations()
        if all(_part(before, key) == _part(data, key) for key in CA_KEYS) and (before is None) == (data is None):
            return
        log.warning("Secret %s %s; reloading the CA", self.secret, "changed" if data is not None else "was deleted")
        await on_change()


def _part(data: Mapping[str, str] | None, key: str) -> str | None:
    return None if data is None else data.get(key)


def revocations_from_secret(secret: SecretName, data: Mapping[str, str] | None) -> RevocationList:
    """The revocation list in a Secret's ``data`` (empty without the key); RevocationError naming the Secret."""
    value = _part(data, REVOCATIONS_KEY)
    if value is None:
        return EMPTY
    where = f"Secret {secret} key {REVOCATIONS_KEY}"
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise RevocationError(f"{where}: not base64") from None
    return RevocationList.parse(decoded, where)

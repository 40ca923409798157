"""A kubeconfig user's ``oidc`` auth provider: its ID token, refreshed with its refresh token as client-go does.

kubernetes-asyncio refreshes it itself, but it writes the IdP's CA (``idp-certificate-authority-data``) to a
temp file, and hands that file's name to aiohttp where a TLS context is due (which refuses it: the refresh
never worked with a CA); without a CA it turns the IdP's certificate check off, sending the client secret and
refresh token to whoever answers. So zpilot refreshes it (the library never sees the provider:
:meth:`~.kubeconfig.KubeConfig.document`): the IdP's CA, ``idp-certificate-authority`` (a file, read at the
start) or ``-data``, is handed to Python's ``ssl`` as data (``cadata``), in memory, never in a file; without
one the system's roots verify the IdP, as client-go's do. The ID token is the user's bearer token, like an
``exec`` plugin's: renewed before a request once within five minutes of its JWT ``exp``
(:func:`~.exec_plugin.due`; halfway through its life if that is shorter), from the issuer's ``token_endpoint`` (its ``/.well-known/openid-configuration``),
with the ``refresh_token`` grant and the client's id and secret. What the IdP answers is bounded.

New tokens are kept in memory: the kubeconfig is never written back (kubectl writes them into it). A process
started again uses the kubeconfig's refresh token, which an IdP that rotates refresh tokens may have revoked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import ssl
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from .exec_plugin import due
from .kubeconfig import ExecCredential, KubeConfigProblem, OidcProvider, _printable

#: Largest answer read from the IdP (its discovery document, a token response).
MAX_ANSWER_BYTES = 1 << 20


class OidcError(Exception):
    """The ID token could not be refreshed: the message names the user and the issuer, never a token."""


class OidcTokens:
    """One user's ID token of the moment, and its refresh token (in memory)."""

    def __init__(self, provider: OidcProvider) -> None:
        """KubeConfigProblem if the IdP's CA is not PEM that TLS can use (found at the start)."""
        self.provider = provider
        self._refresh_token = provider.refresh_token
        self._obtained: tuple[str, datetime] | None = None  # the last ID token renewed, and when
        self._who = f"user {provider.user[:200]}: auth-provider oidc {provider.issuer[:200]}"
        try:  # (cadata: the PEM in memory, no file)
            self._tls = ssl.create_default_context(cadata=provider.ca.decode("ascii") if provider.ca else None)
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise KubeConfigProblem(f"{self._who}: idp-certificate-authority is not a PEM CA ({exc})") from None

    def first(self) -> ExecCredential | None:
        """The kubeconfig's ID token, if it is not due for renewal (else None: :meth:`renew` first)."""
        token = self.provider.id_token
        if token is None:
            return None
        try:
            credential = ExecCredential(token=token, expiry=jwt_expiry(token))
        except OidcError:
            return None
        return None if due(credential) else credential

    async def renew(self, timeout: float) -> ExecCredential:
        """A new ID token (and the refresh token the IdP may have rotated, kept), within ``timeout`` seconds."""
        if self._refresh_token is None:
            raise OidcError(f"{self._who}: the ID token is missing or expired, and there is no refresh-token")
        try:
            answer = await asyncio.wait_for(self._ask(self._refresh_token), timeout)
        except asyncio.TimeoutError:
            raise OidcError(f"{self._who}: no answer in {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise OidcError(f"{self._who}: {type(exc).__name__}: {str(exc)[:300]}") from None
        rotated = answer.get("refresh_token")  # (kept first: the IdP may have revoked the last one, whatever else
        if isinstance(rotated, str) and rotated:  # its answer holds: with the old one every renewal would fail)
            self._refresh_token = rotated
        token = answer.get("id_token")
        if not isinstance(token, str) or not token:
            raise OidcError(f"{self._who}: the token response has no id_token")
        credential = ExecCredential(token=token, expiry=jwt_expiry(token, self._who))
        self._obtained = (token, datetime.now(timezone.utc))
        return credential

    def due(self, credential: ExecCredential) -> bool:
        """Whether ``credential`` is to be renewed: five minutes before its ``exp``, or halfway through its life if
        that is shorter (Keycloak's ID tokens live five minutes: each would be due as it came, the IdP asked
        before every request; client-go renews 10 s before ``exp``)."""
        obtained = self._obtained[1] if self._obtained and self._obtained[0] == credential.token else None
        return due(credential, obtained=obtained)

    async def _ask(self, refresh_token: str) -> dict[str, Any]:
        provider = self.provider
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        headers = {}
        if provider.client_secret is not None:  # (RFC 6749 2.3.1: each form-encoded, then Basic, as Go's oauth2)
            pair = f"{quote_plus(provider.client_id, safe='')}:{quote_plus(provider.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = provider.client_id
        async with aiohttp.ClientSession(headers={"Accept": "application/json"}) as session:
            discovery = await self._json(session.get(
                provider.issuer.rstrip("/") + "/.well-known/openid-configuration", ssl=self._tls), "its discovery")
            endpoint = discovery.get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
                raise OidcError(f"{self._who}: its discovery names no https token_endpoint")
            # (not redirected: a 307 would send the refresh token again, wherever, http:// too; Go's client does)
            return await self._json(session.post(endpoint, data=form, headers=headers, ssl=self._tls,
                                                  allow_redirects=False), "its token endpoint")

    async def _json(self, request: Any, what: str) -> dict[str, Any]:
        async with request as response:
            if response.url.scheme != "https":  # (redirected: what it says, a token endpoint, is anyone's)
                raise OidcError(f"{self._who}: {what} was redirected to {response.url.scheme}:")
            body = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise OidcError(f"{self._who}: {what} answered more than {MAX_ANSWER_BYTES >> 20} MiB")
            status = response.status
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):  # (nested deeper than the parser recurses: no crash)
            document = None
        if status != 200:  # (an OAuth error's code and description, never the rest: it might echo a token)
            said = ""
            if isinstance(document, dict):
                said = ": " + " ".join(_printable(str(document[k])[:200])  # (no newline to forge a log line with)
                                       for k in ("error", "error_description") if k in document)
            raise OidcError(f"{self._who}: {what} answered HTTP {status}{said}")
        if not isinstance(document, dict):
            raise OidcError(f"{self._who}: {what} answered no JSON object")
        return document


def jwt_expiry(token: str, who: str = "oidc") -> datetime | None:
    """The ``exp`` of a JWT (None if it has none); OidcError if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        raise OidcError(f"{who}: the ID token is not a JWT")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # (RecursionError: nested deeper than json.loads goes)
        raise OidcError(f"{who}: the ID token's claims are not base64url JSON") from None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if exp is None:
        return None
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise OidcError(f"{who}: the ID token's exp is not a number")
    try:
        return datetime.fromtimestamp(exp, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise OidcError(f"{who}: the ID token's exp is out of range") from None

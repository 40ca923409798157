"""The TLS context a kubeconfig's clients use, and a client certificate and key rotated on disk picked up by a
running process.

A kubeconfig user's ``client-certificate`` and ``client-key`` may be files something else renews (cert-manager,
a node's kubelet-style rotation, an operator's cron): client-go reads them again (``ReloadTLSFiles``, every five
minutes) and uses the new pair for its next connections. kubernetes-asyncio reads them once, into the one TLS
context a client makes, so ``zpilot serve`` and the CNI agent presented the first pair until restarted, and
were refused once it expired.

So the context is zpilot's (:func:`~.key_material.ssl_context`, from memory files as at the start), held here,
and handed to each request (aiohttp's per-request ``ssl``: the client's session is given it by
:func:`attach`). Before a request, once ``reread_seconds`` have passed, the two files are read again (bounded,
as at the start); a pair that changed becomes a new context, which the next requests use. aiohttp pools
connections by their context, so an idle connection made with the old pair is not used again; a watch open at
that moment goes on to its end (at most ``2 * watch_seconds``): the API server authenticated it as it began.
Checking before requests, rather than on a timer, needs no task of its own in whichever event loop runs the
client, and no connection is made without one.

A pair that cannot be used (a file missing, too large, not PEM, a key that does not go with the certificate:
typically the moment between the two files' writes, or an encrypted key) is refused with a warning naming the
user, the files and the reason; the last good pair is presented meanwhile, and the files are read again after
``retry_seconds``. The CA is not read again (nor does client-go read it again).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from kubernetes_asyncio import client

from .kubeconfig import KubeConfigProblem, TlsMaterial, read_pem_file

log = logging.getLogger(__name__)


class ClientTls:
    """The TLS context of the moment for one cluster's clients; with ``files`` (the user's client certificate
    and key files), kept up to date with them as above."""

    def __init__(self, material: TlsMaterial, make_context: Callable[[TlsMaterial], ssl.SSLContext], *,
                 user: str, files: tuple[str, str] | None = None, reread_seconds: float = 60.0,
                 retry_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        """``make_context`` raises KubeConfigProblem for material TLS cannot use: raised here for the first."""
        self._material = material
        self._make_context = make_context
        self._context = make_context(material)
        self._user = user
        self._files = files
        self._reread_seconds = reread_seconds
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._read_due = clock() + reread_seconds
        self._logged_at: float | None = None
        self._lock = threading.Lock()  # (clients of one access may run in another thread's loop)

    @property
    def material(self) -> TlsMaterial:
        """The CA, certificate and key of the context in use."""
        return self._material

    def context(self) -> ssl.SSLContext:
        """The context to make a connection with: the files read again first, if due."""
        if self._files is None:
            return self._context
        with self._lock:
            if self._clock() >= self._read_due:
                self._reread(self._files)
            return self._context

    def _reread(self, files: tuple[str, str]) -> None:
        who = f"user {self._user[:200]}"
        now = self._clock()
        try:
            cert = read_pem_file(files[0], "client-certificate", who)
            key = read_pem_file(files[1], "client-key", who)
            if cert == self._material.client_certificate and key == self._material.client_key:
                self._read_due = now + self._reread_seconds
                return
            material = replace(self._material, client_certificate=cert, client_key=key)
            context = self._make_context(material)
        except KubeConfigProblem as exc:
            self._read_due = now + self._retry_seconds
            if self._logged_at is None or now - self._logged_at >= self._reread_seconds:
                self._logged_at = now
                log.warning("kubeconfig: the client certificate and key read again from %s and %s are refused: %s;"
                            " the last good ones are presented meanwhile, and the files read again in %g s",
                            files[0], files[1], exc, self._retry_seconds)
            return
        self._material, self._context = material, context
        self._read_due = now + self._reread_seconds
        self._logged_at = None
        log.info("kubeconfig %s: a new client certificate read from %s%s: presented from the next connection",
                 who, files[0], _expiry(cert))


class _TlsSession:
    """A kubernetes-asyncio client's aiohttp session whose every request is made with :class:`ClientTls`'s
    context of the moment (aiohttp's per-request ``ssl``, which also keys its connection pool)."""

    def __init__(self, session: Any, tls: ClientTls) -> None:
        self._session = session
        self._tls = tls

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["ssl"] = self._tls.context()
        return self._session.request(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # close, closed, ...: the session's own
        return getattr(self._session, name)


def attach(api: client.ApiClient, tls: ClientTls) -> client.ApiClient:
    """``api`` with every request made with ``tls``'s context (its REST client sends them all through its
    public ``pool_manager``, the aiohttp session)."""
    api.rest_client.pool_manager = _TlsSession(api.rest_client.pool_manager, tls)
    return api


def _expiry(pem: bytes) -> str:
    """", valid until <time>" of a PEM certificate, for the log; empty if it cannot be read (TLS took it)."""
    try:
        from cryptography import x509

        return f", valid until {x509.load_pem_x509_certificate(pem).not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    except ValueError:
        return ""

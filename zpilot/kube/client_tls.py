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
connections by their context, so an idle connection made with the old pair is not used again.

A watch open at that moment would go on to its end (at most ``2 * watch_seconds``, five to ten minutes) on the
old pair: the API server authenticated it as it began, and goes on sending to it after that pair is revoked or
has expired. client-go closes every connection made with the old pair once it takes a new one, and its watches
open again with the new one; so do these clients: each session keeps its open watches (requests whose query
says ``watch=true``) with the context each was made with, and once a new pair is taken (by any client of the
cluster) it closes those of an older one, their stream ending in :class:`ConnectionRetired`; whoever reads the
watch opens it again at once, from the resourceVersion it had reached (``ApiCalls.watch``'s ``Retired``), so
no event is lost: those not read yet are sent again. While a session has a watch open and makes no other
request, a timer of its event loop (no task) reads the files when due, as a request would; other requests
in flight are left to finish, on the connection they have.

A pair that cannot be used (a file missing, too large, not PEM, a key that does not go with the certificate:
typically the moment between the two files' writes, or an encrypted key) is refused with a warning naming the
user, the files and the reason; the last good pair is presented meanwhile, and the files are read again after
``retry_seconds``. The CA is not read again (nor does client-go read it again).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import weakref
from dataclasses import replace
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from kubernetes_asyncio import client

from .kubeconfig import KubeConfigProblem, TlsMaterial, read_pem_file

log = logging.getLogger(__name__)

#: The shortest period of a session's timer that reads the files while only watches are open.
MIN_WATCH_CHECK_SECONDS = 1.0


class ConnectionRetired(aiohttp.ClientConnectionError):
    """How a watch's stream ends when its connection is closed for a new client certificate (it was made with a
    pair replaced since): open it again, from the resourceVersion it reached."""


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
        self._sessions: weakref.WeakSet[_TlsSession] = weakref.WeakSet()  # told when a new pair is taken

    @property
    def material(self) -> TlsMaterial:
        """The CA, certificate and key of the context in use."""
        return self._material

    @property
    def rotates(self) -> bool:
        """Whether the pair may change (it was given as files)."""
        return self._files is not None

    @property
    def current(self) -> ssl.SSLContext:
        """The context in use, the files not read."""
        return self._context

    @property
    def reread_seconds(self) -> float:
        return self._reread_seconds

    def context(self) -> ssl.SSLContext:
        """The context to make a connection with: the files read again first, if due. Once a new pair is
        taken, every session of these clients closes its watches made with an older one."""
        if self._files is None:
            return self._context
        with self._lock:
            taken = self._clock() >= self._read_due and self._reread(self._files)
            context = self._context
            sessions = list(self._sessions) if taken else []
        for session in sessions:  # (outside the lock: a session of this thread closes its watches now)
            session.pair_changed()
        return context

    def add_session(self, session: "_TlsSession") -> None:
        with self._lock:
            self._sessions.add(session)

    def _reread(self, files: tuple[str, str]) -> bool:
        """Whether a new pair was taken."""
        who = f"user {self._user[:200]}"
        now = self._clock()
        try:
            cert = read_pem_file(files[0], "client-certificate", who)
            key = read_pem_file(files[1], "client-key", who)
            if cert == self._material.client_certificate and key == self._material.client_key:
                self._read_due = now + self._reread_seconds
                return False
            material = replace(self._material, client_certificate=cert, client_key=key)
            context = self._make_context(material)
        except KubeConfigProblem as exc:
            self._read_due = now + self._retry_seconds
            if self._logged_at is None or now - self._logged_at >= self._reread_seconds:
                self._logged_at = now
                log.warning("kubeconfig: the client certificate and key read again from %s and %s are refused: %s;"
                            " the last good ones are presented meanwhile, and the files read again in %g s",
                            files[0], files[1], exc, self._retry_seconds)
            return False
        self._material, self._context = material, context
        self._read_due = now + self._reread_seconds
        self._logged_at = None
        log.info("kubeconfig %s: a new client certificate read from %s%s: presented from the next connection;"
                 " the watches open with the last one are opened again with it", who, files[0], _expiry(cert))
        return True


def _is_watch(url: Any) -> bool:
    """Whether a request's URL asks for a watch (``watch=true``: zpilot's; ``watch=True``: kubernetes-asyncio's)."""
    query = urlsplit(str(url)).query
    return "watch=" in query and any(k == "watch" and v.lower() in ("true", "1") for k, v in parse_qsl(query))


class _TlsSession:
    """A kubernetes-asyncio client's aiohttp session whose every request is made with :class:`ClientTls`'s
    context of the moment (aiohttp's per-request ``ssl``, which also keys its connection pool), and whose
    watches made with an older context are closed once a new pair is taken (see above)."""

    def __init__(self, session: Any, tls: ClientTls) -> None:
        self._session = session
        self._tls = tls
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop its requests run in
        self._watches: weakref.WeakKeyDictionary[aiohttp.ClientResponse, ssl.SSLContext] = (
            weakref.WeakKeyDictionary())
        self._timer: asyncio.TimerHandle | None = None
        if tls.rotates:
            tls.add_session(self)

    def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        context = kwargs["ssl"] = self._tls.context()
        made = self._session.request(method, url, **kwargs)
        if not self._tls.rotates or not _is_watch(url):
            return made
        return self._watch(made, context)

    async def _watch(self, made: Awaitable[aiohttp.ClientResponse], context: ssl.SSLContext) -> aiohttp.ClientResponse:
        response = await made
        self._loop = asyncio.get_running_loop()
        if context is not self._tls.current:  # a new pair was taken as it opened
            _retire(response)
            return response
        self._watches[response] = context
        if self._timer is None:
            self._timer = self._loop.call_later(
                max(self._tls.reread_seconds, MIN_WATCH_CHECK_SECONDS), self._check)
        return response

    def _check(self) -> None:
        """While watches are open: the files read again if due (as before a request), then again later."""
        self._timer = None
        if not self._open_watches():
            return
        self._tls.context()  # (a new pair: pair_changed, here)
        if self._open_watches() and self._loop is not None:
            self._timer = self._loop.call_later(max(self._tls.reread_seconds, MIN_WATCH_CHECK_SECONDS), self._check)

    def _open_watches(self) -> list[tuple[aiohttp.ClientResponse, ssl.SSLContext]]:
        for response in [r for r in self._watches if r.closed]:
            self._watches.pop(response, None)
        return list(self._watches.items())

    def pair_changed(self) -> None:
        """A new pair was taken (in any thread): the watches made with an older one are closed, in this
        session's loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._retire_old()
            return
        try:
            loop.call_soon_threadsafe(self._retire_old)
        except RuntimeError:  # closed meanwhile
            pass

    def _retire_old(self) -> None:
        current = self._tls.current
        for response, context in self._open_watches():
            if context is not current:
                self._watches.pop(response, None)
                _retire(response)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._session.close()

    def __getattr__(self, name: str) -> Any:  # closed, ...: the session's own
        return getattr(self._session, name)


def _retire(response: aiohttp.ClientResponse) -> None:
    """End a watch's stream with :class:`ConnectionRetired` and close its connection (what was received but
    not read yet is dropped: the watch, opened again from the version it reached, is sent it again)."""
    if response.closed:
        return
    response.content.set_exception(ConnectionRetired("the connection was made with a client certificate since"
                                                     " replaced: closed, to be opened again with the new one"))
    response.close()


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

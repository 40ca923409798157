"""The revocation list a running ADS server enforces (``zpilot revoke``; ``zpilot.certs.revocation``).

:class:`Revocations` holds the list as last read from the CA's store and tells its subscribers when it
changes: the authenticator refuses a revoked node certificate when a stream opens (auth.py), and the
server ends the streams already open with one (server.py). Who reads the store:

* ``--ca-dir``: :class:`DirectoryRevocations` looks at the file's stamp (one ``stat``) every
  :data:`POLL_SECONDS` and reads it (bounded) only when it changed, so a revocation reaches a running
  server within that time, without a restart;
* ``--ca-secret``: the CA Secret's watch (``zpilot.certs.kube_secret``) hands over its key as it changes.

A list that cannot be read when the server starts stops the start (a server that silently served revoked
credentials would be worse); one that turns unreadable later is logged once and the last good list stays.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

import grpc

from ..certs.revocation import EMPTY, FileStamp, RevocationError, RevocationList, file_stamp, read_directory
from .auth import REVOKED_CREDENTIAL, Denied, Principal

log = logging.getLogger("zpilot.xds.auth")

#: How often ``--ca-dir``'s list is looked at: the longest a revocation takes to reach a running server.
POLL_SECONDS = 2.0


class Revocations:
    """The list in force, and the callbacks to run (synchronously, on the loop) when it changes."""

    def __init__(self, initial: RevocationList = EMPTY, source: str = "") -> None:
        self.current = initial
        #: Where the list comes from, for log lines (a path, ``Secret ns/name``).
        self.source = source
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def replace(self, revocations: RevocationList) -> None:
        """Enforce ``revocations`` from now on: new streams are checked against it, open ones at once."""
        if revocations == self.current:
            return
        self.current = revocations
        log.warning("revocation list of node credentials from %s: %d entries; checking the open streams",
                    self.source or "its store", len(revocations))
        for listener in self._listeners:
            listener()

    def check(self, principal: Principal, *, open_stream: bool = False) -> None:
        """Raise :class:`Denied` if ``principal`` was proved by a certificate the list revokes."""
        certificate = principal.certificate
        if certificate is None or certificate.issued_at is None or not len(self.current):
            return
        why = self.current.revokes(certificate.node, certificate.serial_number, certificate.issued_at)
        if why is not None:
            ended = "; the open stream is closed" if open_stream else ""
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, REVOKED_CREDENTIAL,
                         f"the {principal.credential} is revoked ({why}){ended}",
                         repeat_key=None if open_stream else certificate.serial)


class DirectoryRevocations:
    """The list of a ``--ca-dir`` CA directory, polled into ``revocations``."""

    def __init__(self, ca_dir: Path, interval: float = POLL_SECONDS) -> None:
        self.ca_dir = ca_dir
        self.interval = interval
        self.revocations = Revocations(source=str(ca_dir))
        self._stamp: FileStamp | None = None
        self._failed: FileStamp | None = None  # the stamp of a list logged as unreadable (logged once)

    def load(self) -> Revocations:
        """Read the list now (at start); RevocationError if it cannot be read."""
        self._stamp = file_stamp(self.ca_dir)
        self.revocations.replace(read_directory(self.ca_dir))
        return self.revocations

    def poll(self) -> None:
        """Read the list again if its file changed since the last look."""
        stamp = file_stamp(self.ca_dir)
        if stamp == self._stamp or stamp == self._failed:
            return
        try:
            revocations = read_directory(self.ca_dir)
        except RevocationError as exc:
            self._failed = stamp
            log.error("%s; the revocation list read before stays in force", exc)
            return
        except Exception:  # a bug in reading it must not end the poll: no later revocation would be seen
            self._failed = stamp
            log.exception("%s: the revocation list could not be read; the one read before stays in force",
                          self.ca_dir)
            return
        self._stamp, self._failed = stamp, None
        self.revocations.replace(revocations)

    async def follow(self) -> None:
        """Poll forever (a task of the server's runtime)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.poll()
            except OSError as exc:  # the directory itself went away: keep the list, say so, keep looking
                log.error("%s: cannot look at the revocation list (%s); the one read before stays in force",
                          self.ca_dir, exc.strerror or exc)

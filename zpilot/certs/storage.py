"""CA material on disk: reading the files, and the CA directory zpilot keeps its own root in.

The directory holds ``root-cert.pem`` and ``root-key.pem`` (0600), and optionally
``extra-roots.pem``. Three traps shape this module:

* **Read-only mounts.** A Kubernetes Secret is mounted read-only. A directory that already
  holds both files is only read: no lock file, no ``mkdir``, nothing opened for writing.
* **Failed first creation.** Both files are written into a staging directory, fsynced, and
  renamed into place key first, cert second; a failure (a full disk) removes whatever was
  written, so the directory holds either nothing or a complete root. A crash between the two
  renames leaves the key plus the staged certificate, which the next start moves into place.
* **Concurrent first starts.** Creation happens under an exclusive lock on ``.lock``, and the
  state is looked at again once the lock is held, so two zpilots agree on one root.

This module moves bytes only; what they mean is :mod:`zpilot.certs.ca`'s business.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from zpilot.certs.x509_helpers import CertificateAuthorityError

log = logging.getLogger("zpilot.certs.storage")

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
EXTRA_ROOTS_FILE = "extra-roots.pem"
LOCK_FILE = ".lock"
#: Where a new root is written before it is renamed into place (only ever used under the lock).
STAGING_DIR = ".creating"
#: The most a CA file may hold: a root, its key and a bundle of extra roots fit in a few KiB; a
#: larger file is a wrong path (a log, a device), never read whole into memory.
MAX_CA_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PemPart:
    """Some PEM bytes and where they came from (a file, a Secret's key), for error messages."""

    data: bytes
    source: str


@dataclass(frozen=True)
class CaMaterial:
    """A CA as a store holds it, before it is parsed and checked (``CertificateAuthority.from_material``).

    Every store (the directory, files given on the command line, a Kubernetes Secret) reads its bytes
    into this one shape, so there is one parser and one set of checks whatever the CA is kept in.
    """

    #: The signing certificate first, then optionally the chain above it (intermediates, roots), in order;
    #: several parts are concatenated (a certificate already seen in an earlier part is skipped).
    chain: tuple[PemPart, ...]
    key: PemPart
    #: Roots the chain ends in, if the chain does not carry its root.
    roots: tuple[PemPart, ...] = ()
    #: Trusted but not signing (root rotation overlap).
    extra_roots: tuple[PemPart, ...] = ()
    #: How the CA is named in logs and errors ("/var/lib/zpilot/ca/root-cert.pem", "Secret ns/name").
    source: str = ""


@dataclass(frozen=True)
class RootFiles:
    """The PEM bytes of a new root, as written to the directory."""

    cert_pem: bytes
    key_pem: bytes


def read_file(path: Path, limit: int = MAX_CA_FILE_BYTES) -> bytes:
    """The file's bytes, or a CertificateAuthorityError naming it (also when it holds more than
    ``limit`` bytes: read with a bound, so a wrong path cannot exhaust memory)."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise CertificateAuthorityError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise CertificateAuthorityError(f"{path}: larger than {limit} bytes; not a CA file")
    return data


def warn_if_readable_by_others(key_path: Path) -> None:
    """A private key file others can read is used (the operator chose it) but named in a warning."""
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s: private key file has mode %o; it should be readable by its owner only (chmod 600)", key_path, mode)


@dataclass(frozen=True)
class CaDirectory:
    """The directory a persisted self-signed root lives in."""

    path: Path

    @property
    def cert(self) -> Path:
        return self.path / ROOT_CERT_FILE

    @property
    def key(self) -> Path:
        return self.path / ROOT_KEY_FILE

    @property
    def extra_roots(self) -> Path | None:
        """``extra-roots.pem`` if present (trusted, not used for signing: a rotation overlap)."""
        extra = self.path / EXTRA_ROOTS_FILE
        return extra if extra.exists() else None

    def is_complete(self) -> bool:
        return self.cert.exists() and self.key.exists()

    def ensure_root(self, make_root: Callable[[], RootFiles]) -> bool:
        """Make sure the directory holds a root, calling ``make_root`` when it holds none.

        Returns whether a root was created. A complete directory is not written to at all.
        """
        if self.is_complete():
            return False
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CertificateAuthorityError(f"CA directory {self.path}: cannot create it ({exc.strerror})") from None
        try:
            with self.locked():
                self._finish_interrupted_creation()
                if self.is_complete():  # another zpilot made it while we waited for the lock
                    return False
                if self.cert.exists() or self.key.exists():
                    missing = self.cert if not self.cert.exists() else self.key
                    raise CertificateAuthorityError(
                        f"CA directory {self.path}: {missing.name} is missing but its pair is present;"
                        " restore it from backup (zpilot will not replace a half-present CA)"
                    )
                self._create(make_root())
                return True
        except OSError as exc:
            raise CertificateAuthorityError(f"CA directory {self.path}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The directory's exclusive lock: held to create the root, and to replace the revocation list."""
        with open(self.path / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _create(self, root: RootFiles) -> None:
        staging = self.path / STAGING_DIR
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        placed: list[Path] = []
        try:
            _write_new(staging / ROOT_KEY_FILE, root.key_pem, 0o600)
            _write_new(staging / ROOT_CERT_FILE, root.cert_pem, 0o644)
            fsync_directory(staging)
            for target in (self.key, self.cert):  # the key first: see _finish_interrupted_creation
                os.rename(staging / target.name, target)
                placed.append(target)
            fsync_directory(self.path)
        except BaseException:
            if len(placed) < 2:  # never leave one of the pair behind
                for target in placed:
                    target.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staging.rmdir()

    def _finish_interrupted_creation(self) -> None:
        """Complete or discard what a creation killed part-way left (only called under the lock).

        Both staged files were complete and fsynced before the first rename, so if exactly one
        of the pair is in place, its partner in the staging directory is good: move it in.
        Otherwise the staged files may be partial, and nothing was placed: discard them.
        """
        staging = self.path / STAGING_DIR
        if not staging.is_dir():
            return
        present = [p for p in (self.cert, self.key) if p.exists()]
        if len(present) == 1:
            for target in (self.cert, self.key):
                if not target.exists() and (staging / target.name).exists():
                    os.rename(staging / target.name, target)
            fsync_directory(self.path)
        shutil.rmtree(staging, ignore_errors=True)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never briefly wider, whatever the umask) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fchmod(out.fileno(), mode)  # the umask may have narrowed it; never widened beyond mode
        os.fsync(out.fileno())


def fsync_directory(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry, not just the data)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

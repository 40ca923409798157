"""A node's ADS credential on disk, replaced in one atomic step so Envoy never reads half of it.

Envoy re-reads the certificate, key and CA bundle of its ADS connection (file-based SDS with a
watched directory) when an entry is moved into the directory. Writing three files one after the
other would let it read a new certificate with the old key; so the directory is laid out as the
kubelet lays out a Secret volume (its ``AtomicWriter``), and Envoy's ``watched_directory`` was
made for exactly that::

    DIR/                                   mode 0700
    ├── ..2026_12_01_09_40_00.12345678/    one generation: cert-chain.pem, key.pem (0600), root-cert.pem
    ├── ..data -> ..2026_12_01_09_40_00.12345678
    ├── cert-chain.pem -> ..data/cert-chain.pem
    ├── key.pem -> ..data/key.pem
    └── root-cert.pem -> ..data/root-cert.pem

A new generation is written and fsynced in a directory of its own, then ``..data`` is swapped to
it with one ``rename`` (the move Envoy notices), then older generations are removed. Other files
in DIR (the SDS files of the bootstrap) are left alone.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from zpilot import contract
from zpilot.certs.ca import CLOCK_SKEW, CertificateAuthority, IssuedCertificate
from zpilot.certs.storage import fsync_directory
from zpilot.certs.x509_helpers import issued_by, same_public_key
from zpilot.certs.xds_credentials import (
    NODE_CREDENTIAL_LIFETIME,
    CredentialError,
    issue_node_credential,
    node_of_certificate,
)

DATA_LINK = "..data"
_TMP_LINK = "..data_tmp"
#: What a node credential directory holds, each readable through a link of its own name.
CREDENTIAL_FILES = (contract.CREDENTIAL_CERT_FILE, contract.CREDENTIAL_KEY_FILE, contract.CREDENTIAL_BUNDLE_FILE)
#: Files of a credential never exceed this (a chain and a bundle of a few roots are a few KiB).
MAX_FILE_BYTES = 1024 * 1024


def write_atomically(directory: Path, files: Mapping[str, bytes], *, private: frozenset[str] = frozenset()) -> None:
    """Make ``files`` (name -> bytes) the directory's current generation in one rename.

    ``private`` names the files written 0600 (the key); the others are 0644 inside a 0700 directory.
    """
    for name in files:
        if "/" in name or name.startswith("."):
            raise CredentialError(f"{name!r} cannot be a credential file name")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.is_symlink() or not directory.is_dir():
        raise CredentialError(f"{directory}: not a directory")
    os.chmod(directory, 0o700)
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
    generation = directory / f"..{stamp}.{secrets.token_hex(4)}"
    generation.mkdir(mode=0o700)
    for name, data in files.items():
        fd = os.open(generation / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if name in private else 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), 0o600 if name in private else 0o644)  # exactly, whatever the umask
            os.fsync(out.fileno())
    fsync_directory(generation)
    tmp = directory / _TMP_LINK
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(generation.name, tmp)
    os.replace(tmp, directory / DATA_LINK)  # the one step that switches every file at once
    for name in files:
        link = directory / name
        target = f"{DATA_LINK}/{name}"
        if not (link.is_symlink() and os.readlink(link) == target):
            staged = directory / f".{name}.link"
            if staged.is_symlink() or staged.exists():
                staged.unlink()
            os.symlink(target, staged)
            os.replace(staged, link)
    fsync_directory(directory)
    for old in directory.iterdir():
        if old.name.startswith("..") and old.name not in (DATA_LINK, generation.name) and old.is_dir() \
                and not old.is_symlink():
            for item in old.iterdir():
                item.unlink()
            old.rmdir()


def write_node_credential(
    directory: Path, ca: CertificateAuthority, node: str, lifetime: timedelta = NODE_CREDENTIAL_LIFETIME
) -> IssuedCertificate:
    """Issue ``node``'s ADS client certificate and make it, its key and the CA bundle current in
    ``directory`` (one atomic swap: a running Envoy picks the three up together)."""
    issued = issue_node_credential(ca, node, lifetime)
    write_atomically(
        directory,
        {
            contract.CREDENTIAL_CERT_FILE: issued.cert_chain_pem,
            contract.CREDENTIAL_KEY_FILE: issued.private_key_pem,
            contract.CREDENTIAL_BUNDLE_FILE: ca.trust_bundle_pem(),
        },
        private=frozenset({contract.CREDENTIAL_KEY_FILE}),
    )
    return issued


def renewal_reason(directory: Path, ca: CertificateAuthority, node: str, now: datetime) -> str | None:
    """Why ``node``'s credential in ``directory`` must be issued again, or None while it is good.

    It is renewed at half its lifetime (as workload certificates are), and at once when it is
    missing or unreadable, names another node, does not match its key, was signed by another
    signing certificate than the CA's current one, or when the CA bundle changed (root rotation).
    """
    files = {name: read_current(directory, name) for name in CREDENTIAL_FILES}
    if any(data is None for data in files.values()):
        return "there is no credential yet"
    chain, key_pem, bundle = (files[name] for name in CREDENTIAL_FILES)
    assert chain is not None and key_pem is not None
    try:
        cert = x509.load_pem_x509_certificate(chain)
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return "its files cannot be read as a certificate and a key"
    if node_of_certificate(chain, ca.trust_domain) != node:
        return f"it is not a credential of node {node} in trust domain {ca.trust_domain}"
    if not same_public_key(key.public_key(), cert.public_key()):
        return "its key does not belong to its certificate"
    if not issued_by(cert, ca.signing_certificate):
        return "it was signed by another CA certificate than the current one"
    if bundle != ca.trust_bundle_pem():
        return "the CA bundle changed"
    issued_at = cert.not_valid_before_utc + CLOCK_SKEW
    due = issued_at + (cert.not_valid_after_utc - issued_at) / 2
    if now >= due:
        return f"it is past half its lifetime (it expires at {cert.not_valid_after_utc.isoformat()})"
    return None


def read_current(directory: Path, name: str) -> bytes | None:
    """A file of the current generation, or None if there is none (never written, or removed)."""
    path = directory / name
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise CredentialError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialError(f"{path}: cannot read ({exc.strerror or exc})") from None

"""The mesh's certificate authority: signs one short-lived certificate per workload identity.

Two ways to get a CA, because operators start in two places:

* ``load_or_create(directory)``: zpilot makes its own self-signed root on first start and keeps
  it in ``directory`` (``root-cert.pem``, ``root-key.pem`` with mode 0600), so a restart does not
  change every identity in the mesh. ``directory=None`` keeps it in memory (tests, demos).
* ``from_files(cert, key)``: the organisation's root, or an intermediate under it. With an
  intermediate, every workload chain carries it, so peers need only the root.

Roots can be rotated without a flag day: ``extra-roots.pem`` (or ``extra_roots_path``) adds roots
that are trusted but not used for signing, so old and new roots overlap in the trust bundle while
workloads move from one to the other (docs/certificates.md).

Private keys never leave this module except inside an ``IssuedCertificate``, whose repr hides it;
no message raised here quotes key bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zpilot.certs.spiffe import DEFAULT_TRUST_DOMAIN, parse_spiffe_id, validate_trust_domain

log = logging.getLogger("zpilot.certs.ca")

Clock = Callable[[], datetime]
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Workload certificate lifetime unless configured otherwise (what Istio issues).
DEFAULT_LIFETIME = timedelta(hours=24)
#: Backdating of NotBefore, so a peer whose clock is a little behind ours still accepts a fresh cert.
CLOCK_SKEW = timedelta(minutes=2)
#: Lifetime of the self-signed root zpilot creates.
ROOT_LIFETIME = timedelta(days=3650)
#: Warn when the signing certificate expires within this time: workload certs get clamped to it.
EXPIRY_WARNING = timedelta(days=30)

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
EXTRA_ROOTS_FILE = "extra-roots.pem"
_LOCK_FILE = ".lock"


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(timezone.utc)


class CertificateAuthorityError(ValueError):
    """The CA material is unusable (missing, malformed, mismatched, expired); the message says which file."""


@dataclass(frozen=True)
class IssuedCertificate:
    """One workload's certificate, its chain and its key.

    ``private_key_pem`` is deliberately left out of repr/str: these objects end up in log lines and
    debugger output, and the key must not.
    """

    spiffe_id: str
    serial: int
    not_before: datetime
    not_after: datetime
    cert_chain_pem: bytes  # leaf first, then any intermediates; never the root
    private_key_pem: bytes = field(repr=False)
    issued_at: datetime = field(default_factory=utc_now)  # when signed; rotation counts from here
    ca_fingerprint: str = ""  # SHA-256 of the signing certificate, to notice a CA change

    @property
    def lifetime(self) -> timedelta:
        """How long the certificate is usable from the moment it was issued."""
        return self.not_after - self.issued_at

    def __repr__(self) -> str:
        return (
            f"IssuedCertificate(spiffe_id={self.spiffe_id!r}, serial={serial_hex(self.serial)}, "
            f"not_before={self.not_before.isoformat()}, not_after={self.not_after.isoformat()}, "
            f"private_key=<redacted>)"
        )

    __str__ = __repr__


def serial_hex(serial: int) -> str:
    """A serial number the way Envoy's /certs prints it: lower-case hex, whole bytes."""
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, hex: how certificates are compared and named in logs."""
    return cert.fingerprint(hashes.SHA256()).hex()


def describe_name(cert: x509.Certificate) -> str:
    """A short human name for a certificate in messages: its subject, or its fingerprint if empty."""
    subject = cert.subject.rfc4514_string()
    return subject or f"<empty subject, sha256 {fingerprint(cert)[:16]}>"


def load_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """All PEM certificates in ``data``; ``source`` names the file in the error if there are none."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateAuthorityError(f"{source}: not a PEM certificate file ({exc})") from None
    if not certs:
        raise CertificateAuthorityError(f"{source}: contains no PEM certificate")
    return certs


def load_private_key(data: bytes, source: str) -> SigningKey:
    """The signing key in ``data``. Errors name the file, never quote it, and drop the parser's cause."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateAuthorityError(
            f"{source}: the private key is encrypted; zpilot needs it unencrypted (e.g. `openssl pkey -in <file>`)"
            " in a file only zpilot can read"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateAuthorityError(f"{source}: not a PEM private key zpilot can read") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateAuthorityError(
            f"{source}: unsupported key type {type(key).__name__}; use an ECDSA or RSA key"
        )
    return key


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _spki(public_key: object) -> bytes:
    """DER SubjectPublicKeyInfo: compares keys of any type without type-specific accessors."""
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _key_identifier(cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(cert.public_key())  # type: ignore[arg-type]


def _warn_if_readable_by_others(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s: private key file has mode %o; it should be readable by its owner only (chmod 600)", path, mode)


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class CertificateAuthority:
    """Signs workload certificates for one trust domain and publishes the trust bundle."""

    def __init__(
        self,
        signing_cert: x509.Certificate,
        signing_key: SigningKey,
        *,
        intermediates: list[x509.Certificate] | None = None,
        roots: list[x509.Certificate] | None = None,
        extra_roots: list[x509.Certificate] | None = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        clock: Clock = utc_now,
        source: str = "in-memory CA",
        reloader: Callable[[], "CertificateAuthority"] | None = None,
    ) -> None:
        """Use ``from_files``/``load_or_create``/``generate``; this checks what they assembled.

        ``intermediates`` are the certificates between ``signing_cert`` and a root, in order
        (served in every chain); ``roots`` the self-signed anchors the chain ends in (if
        ``signing_cert`` is a root it is the only one needed).
        """
        self.trust_domain = validate_trust_domain(trust_domain)
        self._clock = clock
        self.source = source
        self._reloader = reloader
        if _spki(signing_key.public_key()) != _spki(signing_cert.public_key()):
            raise CertificateAuthorityError(f"{source}: the private key does not belong to the certificate")
        if not _is_ca(signing_cert):
            raise CertificateAuthorityError(
                f"{source}: certificate {describe_name(signing_cert)} is not a CA certificate"
                " (needs basicConstraints CA:TRUE and, if key usage is present, keyCertSign)"
            )
        self._cert = signing_cert
        self._key = signing_key
        self._fingerprint = fingerprint(signing_cert)  # compared on every cache lookup: compute once
        self._intermediates = list(intermediates or [])
        roots = list(roots or [])
        if _is_self_signed(signing_cert) and not any(fingerprint(r) == fingerprint(signing_cert) for r in roots):
            roots.insert(0, signing_cert)
        if not roots:
            raise CertificateAuthorityError(
                f"{source}: no root certificate: {describe_name(signing_cert)} is not self-signed, so give the root"
                " that issued it (in the certificate file after the intermediate, or as a separate root file)"
            )
        chain = [signing_cert, *self._intermediates]
        for child, parent in zip(chain, chain[1:]):
            if not _issued_by(child, parent):
                raise CertificateAuthorityError(
                    f"{source}: {describe_name(child)} is not signed by the next certificate in the chain,"
                    f" {describe_name(parent)}; list the chain leaf-side first"
                )
        if not any(_issued_by(chain[-1], root) for root in roots):
            raise CertificateAuthorityError(
                f"{source}: {describe_name(chain[-1])} is not signed by any of the given roots"
                f" ({', '.join(describe_name(r) for r in roots)})"
            )
        self._roots = roots
        now = self._now()
        for cert in chain:
            if cert.not_valid_after_utc <= now:
                raise CertificateAuthorityError(
                    f"{source}: {describe_name(cert)} expired at {cert.not_valid_after_utc.isoformat()}"
                )
            if cert.not_valid_before_utc > now + CLOCK_SKEW:
                raise CertificateAuthorityError(
                    f"{source}: {describe_name(cert)} is not valid before {cert.not_valid_before_utc.isoformat()}"
                    " (check this machine's clock)"
                )
        if signing_cert.not_valid_after_utc - now < EXPIRY_WARNING:
            log.warning(
                "%s: signing certificate %s expires at %s; workload certificates will not outlive it",
                source, describe_name(signing_cert), signing_cert.not_valid_after_utc.isoformat(),
            )
        self._extra_roots: list[x509.Certificate] = []
        for index, root in enumerate(extra_roots or []):
            if not _is_ca(root):
                raise CertificateAuthorityError(
                    f"{source}: extra root #{index + 1} ({describe_name(root)}) is not a CA certificate"
                )
            if root.not_valid_after_utc <= now:
                log.warning(
                    "%s: extra root %s expired at %s; left out of the trust bundle",
                    source, describe_name(root), root.not_valid_after_utc.isoformat(),
                )
                continue
            self._extra_roots.append(root)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def generate(cls, trust_domain: str = DEFAULT_TRUST_DOMAIN, *, clock: Clock = utc_now) -> "CertificateAuthority":
        """A new self-signed root, in memory only."""
        cert, key = _new_root(validate_trust_domain(trust_domain), clock())
        return cls(cert, key, trust_domain=trust_domain, clock=clock)

    @classmethod
    def load_or_create(
        cls,
        directory: Path | str | None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        *,
        clock: Clock = utc_now,
    ) -> "CertificateAuthority":
        """The root kept in ``directory``, made there on first use; ``None`` means in memory only.

        ``directory/extra-roots.pem``, if present, adds trusted roots (root rotation overlap).
        Two zpilots starting at once on the same directory agree on one root (a file lock).
        """
        validate_trust_domain(trust_domain)
        if directory is None:
            return cls.generate(trust_domain, clock=clock)
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CertificateAuthorityError(f"CA directory {directory}: cannot create it ({exc.strerror})") from None
        cert_path, key_path = directory / ROOT_CERT_FILE, directory / ROOT_KEY_FILE
        try:
            with open(directory / _LOCK_FILE, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not cert_path.exists() and not key_path.exists():
                    cert, key = _new_root(trust_domain, clock())
                    _write_private(key_path, key.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                    ))
                    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
                    log.warning(
                        "created a new self-signed root CA in %s (sha256 %s); back up %s",
                        directory, fingerprint(cert), key_path,
                    )
                elif not cert_path.exists() or not key_path.exists():
                    missing = cert_path if not cert_path.exists() else key_path
                    raise CertificateAuthorityError(
                        f"CA directory {directory}: {missing.name} is missing but its pair is present;"
                        " restore it from backup (zpilot will not replace a half-present CA)"
                    )
        except OSError as exc:
            raise CertificateAuthorityError(f"CA directory {directory}: {exc.strerror or exc}") from None
        extra = directory / EXTRA_ROOTS_FILE
        return cls.from_files(
            cert_path,
            key_path,
            extra_roots_path=extra if extra.exists() else None,
            trust_domain=trust_domain,
            clock=clock,
            _reloader=lambda: cls.load_or_create(directory, trust_domain, clock=clock),
        )

    @classmethod
    def from_files(
        cls,
        cert_path: Path | str,
        key_path: Path | str,
        *,
        root_path: Path | str | None = None,
        extra_roots_path: Path | str | None = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        clock: Clock = utc_now,
        _reloader: Callable[[], "CertificateAuthority"] | None = None,
    ) -> "CertificateAuthority":
        """A CA the user provides: ``cert_path`` holds the signing certificate first, then optionally
        the chain above it (intermediates, root); ``root_path`` the root if ``cert_path`` lacks it.
        """
        cert_path, key_path = Path(cert_path), Path(key_path)
        certs = load_certificates(_read(cert_path), str(cert_path))
        key = load_private_key(_read(key_path), str(key_path))
        _warn_if_readable_by_others(key_path)
        roots = [c for c in certs[1:] if _is_self_signed(c)]
        intermediates = [c for c in certs[1:] if not _is_self_signed(c)]
        if root_path is not None:
            roots += load_certificates(_read(Path(root_path)), str(root_path))
        extra = load_certificates(_read(Path(extra_roots_path)), str(extra_roots_path)) if extra_roots_path else []
        if _reloader is None:
            def _reloader() -> "CertificateAuthority":
                return cls.from_files(
                    cert_path, key_path, root_path=root_path, extra_roots_path=extra_roots_path,
                    trust_domain=trust_domain, clock=clock,
                )
        return cls(
            certs[0], key, intermediates=intermediates, roots=roots, extra_roots=extra,
            trust_domain=trust_domain, clock=clock, source=str(cert_path), reloader=_reloader,
        )

    def reload(self) -> "CertificateAuthority":
        """The CA as its files say now (a new object), or ``self`` for an in-memory CA.

        Compare ``fingerprint``/``trust_bundle_pem()`` of the result to decide what to re-push.
        Raises CertificateAuthorityError if the files became unusable; keep serving the old CA then.
        """
        return self._reloader() if self._reloader else self

    # -- what it offers -------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The clock certificates are dated by (injectable for tests)."""
        return self._clock

    @property
    def signing_certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the signing certificate: changes exactly when issued certs must be replaced."""
        return self._fingerprint

    @property
    def roots(self) -> list[x509.Certificate]:
        """Every trusted root, the signing chain's first, then extra ones; no duplicates."""
        seen: dict[str, x509.Certificate] = {}
        for root in [*self._roots, *self._extra_roots]:
            seen.setdefault(fingerprint(root), root)
        return list(seen.values())

    def trust_bundle_pem(self) -> bytes:
        """PEM of every trusted root: the trusted_ca of the trust bundle secret (``contract.ROOT_CA_SECRET``)."""
        return _pem(self.roots)

    def issue(self, spiffe_id: str, lifetime: timedelta = DEFAULT_LIFETIME) -> IssuedCertificate:
        """A new key and certificate for ``spiffe_id``; ValueError if the ID is not ours or malformed."""
        identity = parse_spiffe_id(spiffe_id, self.trust_domain)
        if not isinstance(lifetime, timedelta) or lifetime <= timedelta(0):
            raise ValueError(f"certificate lifetime for {identity.uri} must be a positive timedelta, not {lifetime!r}")
        now = self._now()
        ca_expiry = self._cert.not_valid_after_utc
        if ca_expiry <= now:
            raise CertificateAuthorityError(
                f"{self.source}: cannot issue for {identity.uri}: signing certificate expired at {ca_expiry.isoformat()}"
            )
        not_before = (now - CLOCK_SKEW).replace(microsecond=0)
        not_after = (now + lifetime).replace(microsecond=0)
        if not_after > ca_expiry:
            log.warning("certificate for %s cut short to the CA's expiry %s", identity.uri, ca_expiry.isoformat())
            not_after = ca_expiry
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=True, content_commitment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            # With an empty subject the SAN is the only name, and RFC 5280 then requires it critical.
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=True)
            .add_extension(_key_identifier(self._cert), critical=False)
            .sign(self._key, _signature_hash(self._key))
        )
        return IssuedCertificate(
            spiffe_id=identity.uri,
            serial=serial,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            cert_chain_pem=_pem([cert, *self._served_chain()]),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            issued_at=now,
            ca_fingerprint=self.fingerprint,
        )

    def _served_chain(self) -> list[x509.Certificate]:
        """The CA certificates sent after each leaf: everything up to, not including, a root."""
        return [c for c in [self._cert, *self._intermediates] if not _is_self_signed(c)]

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the CA's clock must return timezone-aware datetimes")
        return now

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority(trust_domain={self.trust_domain!r}, source={self.source!r}, "
            f"signer={describe_name(self._cert)!r}, roots={len(self.roots)})"
        )


def _new_root(trust_domain: str, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
        x509.NameAttribute(NameOID.COMMON_NAME, "zpilot root CA"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before((now - CLOCK_SKEW).replace(microsecond=0))
        .not_valid_after((now + ROOT_LIFETIME).replace(microsecond=0))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateAuthorityError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widened beyond mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of some bytes (used to notice trust bundle changes without keeping copies)."""
    return hashlib.sha256(data).hexdigest()

"""The mesh's certificate authority: signs one short-lived certificate per workload identity.

Two ways to get a CA, because operators start in two places:

* ``load_or_create(directory)``: zpilot makes its own self-signed root on first start and keeps
  it in ``directory`` (``root-cert.pem``, ``root-key.pem`` with mode 0600), so a restart does not
  change every identity in the mesh. ``directory=None`` keeps it in memory (tests, demos).
  How the directory is written, locked and read (also read-only) is :mod:`zpilot.certs.storage`.
* ``from_files(cert, key)``: the organisation's root, or an intermediate under it. With an
  intermediate, every workload chain carries it, so peers need only the root.

Roots can be rotated without a flag day: ``extra-roots.pem`` (or ``extra_roots_path``) adds roots
that are trusted but not used for signing, so old and new roots overlap in the trust bundle while
workloads move from one to the other (docs/certificates.md).

Private keys never leave this module except inside an ``IssuedCertificate``, whose repr hides it;
no message raised here quotes key bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zpilot.certs.spiffe import DEFAULT_TRUST_DOMAIN, parse_spiffe_id, validate_trust_domain
from zpilot.certs.storage import CaDirectory, CaMaterial, PemPart, RootFiles, read_file, warn_if_readable_by_others
from zpilot.certs.x509_helpers import (
    CertificateAuthorityError,
    SigningKey,
    authority_key_identifier,
    certificates_pem,
    describe_name,
    fingerprint,
    is_ca,
    is_self_signed,
    issued_by,
    load_certificates,
    load_private_key,
    private_key_pem,
    same_public_key,
    serial_hex,
    signature_hash,
)

log = logging.getLogger("zpilot.certs.ca")

Clock = Callable[[], datetime]

#: Workload certificate lifetime unless configured otherwise (what Istio issues).
DEFAULT_LIFETIME = timedelta(hours=24)
#: Backdating of NotBefore, so a peer whose clock is a little behind ours still accepts a fresh cert.
CLOCK_SKEW = timedelta(minutes=2)
#: Lifetime of the self-signed root zpilot creates.
ROOT_LIFETIME = timedelta(days=3650)
#: Domain separation of derived workload keys (``issue(window_start=...)``): a new salt, new keys.
_DERIVATION_SALT = b"zpilot workload certificate v1"
#: The order of the P-256 group (SEC 2): derived private keys are scalars below it.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: Warn when the signing certificate expires within this time: workload certs get clamped to it.
EXPIRY_WARNING = timedelta(days=30)


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate zpilot issued (a workload's; or an ADS credential, see ``xds_credentials``),
    its chain and its key.

    ``private_key_pem`` is deliberately left out of repr/str: these objects end up in log lines and
    debugger output, and the key must not.
    """

    spiffe_id: str  # the URI SAN (a certificate without one: its names, see ``issue_leaf``)
    serial: int
    not_before: datetime
    not_after: datetime
    cert_chain_pem: bytes  # leaf first, then any intermediates; never the root
    private_key_pem: bytes = field(repr=False)
    issued_at: datetime = field(default_factory=utc_now)  # the start of its validity (less skew); rotation counts from here
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
        if not same_public_key(signing_key.public_key(), signing_cert.public_key()):
            raise CertificateAuthorityError(f"{source}: the private key does not belong to the certificate")
        if not is_ca(signing_cert):
            raise CertificateAuthorityError(
                f"{source}: certificate {describe_name(signing_cert)} is not a CA certificate"
                " (needs basicConstraints CA:TRUE and, if key usage is present, keyCertSign)"
            )
        self._cert = signing_cert
        self._key = signing_key
        self._fingerprint = fingerprint(signing_cert)  # compared on every cache lookup: compute once
        self._intermediates = list(intermediates or [])
        roots = list(roots or [])
        if is_self_signed(signing_cert) and not any(fingerprint(r) == fingerprint(signing_cert) for r in roots):
            roots.insert(0, signing_cert)
        if not roots:
            raise CertificateAuthorityError(
                f"{source}: no root certificate: {describe_name(signing_cert)} is not self-signed, so give the root"
                " that issued it (in the certificate file after the intermediate, or as a separate root file)"
            )
        chain = [signing_cert, *self._intermediates]
        for child, parent in zip(chain, chain[1:]):
            if not issued_by(child, parent):
                raise CertificateAuthorityError(
                    f"{source}: {describe_name(child)} is not signed by the next certificate in the chain,"
                    f" {describe_name(parent)}; list the chain leaf-side first"
                )
        if not any(issued_by(chain[-1], root) for root in roots):
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
            if not is_ca(root):
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
        A directory holding a root is only read (it may be a read-only Secret mount); creation
        is atomic, and two zpilots starting at once agree on one root (see ``storage``).
        """
        validate_trust_domain(trust_domain)
        if directory is None:
            return cls.generate(trust_domain, clock=clock)
        store = CaDirectory(Path(directory))

        created = store.ensure_root(lambda: new_root_files(trust_domain, clock()))
        ca = cls._from_directory(store, trust_domain, clock)
        if created:
            log.warning("created a new self-signed root CA in %s (sha256 %s); back up %s",
                        store.path, ca.fingerprint, store.key)
        return ca

    @classmethod
    def load(
        cls, directory: Path | str, trust_domain: str = DEFAULT_TRUST_DOMAIN, *, clock: Clock = utc_now
    ) -> "CertificateAuthority":
        """The root kept in ``directory``, never created: for the tools that issue from the CA a
        ``zpilot serve --ca-dir`` made (``zpilot bootstrap``), which must not make a second one."""
        validate_trust_domain(trust_domain)
        store = CaDirectory(Path(directory))
        if not store.is_complete():
            raise CertificateAuthorityError(
                f"CA directory {store.path}: no CA there (it needs {store.cert.name} and {store.key.name});"
                f" zpilot serve --ca-dir {store.path} creates one on its first start"
            )
        return cls._from_directory(store, trust_domain, clock)

    @classmethod
    def _from_directory(cls, store: CaDirectory, trust_domain: str, clock: Clock) -> "CertificateAuthority":
        """The root in ``store`` as it is now. A reload comes here too and never creates a root:
        a directory emptied under a running zpilot is an error, not a reason to change the mesh's root."""
        return cls.from_files(
            store.cert,
            store.key,
            extra_roots_path=store.extra_roots,
            trust_domain=trust_domain,
            clock=clock,
            _reloader=lambda: cls._from_directory(store, trust_domain, clock),
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
        material = CaMaterial(
            chain=(PemPart(read_file(cert_path), str(cert_path)),),
            key=PemPart(read_file(key_path), str(key_path)),
            roots=(PemPart(read_file(Path(root_path)), str(root_path)),) if root_path is not None else (),
            extra_roots=(
                (PemPart(read_file(Path(extra_roots_path)), str(extra_roots_path)),) if extra_roots_path else ()
            ),
            source=str(cert_path),
        )
        warn_if_readable_by_others(key_path)
        if _reloader is None:
            def _reloader() -> "CertificateAuthority":
                return cls.from_files(
                    cert_path, key_path, root_path=root_path, extra_roots_path=extra_roots_path,
                    trust_domain=trust_domain, clock=clock,
                )
        return cls.from_material(material, trust_domain=trust_domain, clock=clock, reloader=_reloader)

    @classmethod
    def from_material(
        cls,
        material: CaMaterial,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        clock: Clock = utc_now,
        reloader: Callable[[], "CertificateAuthority"] | None = None,
    ) -> "CertificateAuthority":
        """The CA in ``material``, whichever store read it: the one parser and set of checks.

        Self-signed certificates after the signing one are roots, the others intermediates (in
        order); ``material.roots`` adds roots; a certificate repeated across parts counts once.
        ``reloader`` is what :meth:`reload` calls (a store's way to read its material again).
        """
        chain: list[x509.Certificate] = []
        seen: set[str] = set()
        for part in material.chain:
            for cert in load_certificates(part.data, part.source):
                if fingerprint(cert) not in seen:
                    seen.add(fingerprint(cert))
                    chain.append(cert)
        key = load_private_key(material.key.data, material.key.source)
        roots = [c for c in chain[1:] if is_self_signed(c)]
        intermediates = [c for c in chain[1:] if not is_self_signed(c)]
        for part in material.roots:
            roots += load_certificates(part.data, part.source)
        extra = [c for part in material.extra_roots for c in load_certificates(part.data, part.source)]
        return cls(
            chain[0], key, intermediates=intermediates, roots=roots, extra_roots=extra,
            trust_domain=trust_domain, clock=clock, source=material.source or material.chain[0].source,
            reloader=reloader,
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
        return certificates_pem(self.roots)

    def issue(
        self, spiffe_id: str, lifetime: timedelta = DEFAULT_LIFETIME, *, window_start: datetime | None = None,
    ) -> IssuedCertificate:
        """A key and certificate for ``spiffe_id``; ValueError if the ID is not ours or malformed.

        Without ``window_start``: a random key and serial, dated from now. With it (what
        :class:`~zpilot.certs.identity.IdentityCache` does), the certificate is *derived*: dated from
        ``window_start``, its key and serial derived from this CA's key, the identity, the window and
        the lifetime, and signed deterministically (RFC 6979 for ECDSA; PKCS#1 v1.5 is deterministic).
        Every replica holding the same CA therefore issues byte-identical certificates for one
        window, and a ztunnel moving between replicas is sent nothing new. Whoever holds the CA key
        could derive the workload keys, but could already mint any identity, so nothing is lost.
        """
        identity = parse_spiffe_id(spiffe_id, self.trust_domain)
        # A ztunnel is both ends of a tunnel: the certificate serves and connects.
        return self.issue_leaf(
            [x509.UniformResourceIdentifier(identity.uri)],
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            lifetime,
            identity.uri,
            window_start=window_start,
        )

    def issue_leaf(
        self,
        names: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        lifetime: timedelta,
        label: str,
        *,
        window_start: datetime | None = None,
    ) -> IssuedCertificate:
        """A key and an end-entity certificate with exactly these SANs and extended key usages.

        Every certificate zpilot signs comes from here, so all share the same shape: empty subject
        (the SANs are the names, marked critical as RFC 5280 then requires), backdated NotBefore,
        NotAfter clamped to the CA's own expiry. ``label`` names it in messages and becomes
        ``IssuedCertificate.spiffe_id`` (the URI SAN; for a certificate without one, its names);
        with ``window_start`` the key and serial are derived from it (see :meth:`issue`).
        Callers decide which names a certificate may carry: see ``issue`` and ``xds_credentials``.
        """
        if not names:
            raise ValueError(f"certificate for {label}: no subject alternative name")
        if not isinstance(lifetime, timedelta) or lifetime <= timedelta(0):
            raise ValueError(f"certificate lifetime for {label} must be a positive timedelta, not {lifetime!r}")
        now = self._now()
        ca_expiry = self._cert.not_valid_after_utc
        if ca_expiry <= now:
            raise CertificateAuthorityError(
                f"{self.source}: cannot issue for {label}: signing certificate expired at {ca_expiry.isoformat()}"
            )
        start = now if window_start is None else window_start
        if window_start is not None and not (now - lifetime < window_start <= now):
            raise ValueError(f"certificate window for {label} starts at {window_start.isoformat()}:"
                             f" not within the lifetime before now ({now.isoformat()})")
        not_before = (start - CLOCK_SKEW).replace(microsecond=0)
        not_after = (start + lifetime).replace(microsecond=0)
        if not_after > ca_expiry:
            log.warning("certificate for %s cut short to the CA's expiry %s", label, ca_expiry.isoformat())
            not_after = ca_expiry
        if window_start is None:
            key = ec.generate_private_key(ec.SECP256R1())
            serial = x509.random_serial_number()
        else:
            key, serial = self._derived_key_and_serial(label, window_start, lifetime)
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
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            # With an empty subject the SAN is the only name, and RFC 5280 then requires it critical.
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(authority_key_identifier(self._cert), critical=False)
            .sign(self._key, signature_hash(self._key),
                  ecdsa_deterministic=True if isinstance(self._key, ec.EllipticCurvePrivateKey) else None)
        )
        return IssuedCertificate(
            spiffe_id=label,
            serial=serial,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            cert_chain_pem=certificates_pem([cert, *self._served_chain()]),
            private_key_pem=private_key_pem(key),
            issued_at=start,
            ca_fingerprint=self.fingerprint,
        )

    def _derived_key_and_serial(
        self, spiffe_id: str, window_start: datetime, lifetime: timedelta,
    ) -> tuple[ec.EllipticCurvePrivateKey, int]:
        """The workload key and serial of one identity and window, from this CA's key (HKDF-SHA256)."""
        info = f"{spiffe_id}\n{window_start.isoformat()}\n{lifetime.total_seconds()!r}".encode()
        okm = HKDF(hashes.SHA256(), length=68, salt=_DERIVATION_SALT, info=info).derive(
            self._key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        )
        scalar = int.from_bytes(okm[:48], "big") % (_P256_ORDER - 1) + 1  # 48 bytes: no visible modulo bias
        serial = int.from_bytes(okm[48:], "big") >> 1 or 1  # positive, at most 159 bits (RFC 5280: 20 octets)
        return ec.derive_private_key(scalar, ec.SECP256R1()), serial

    def _served_chain(self) -> list[x509.Certificate]:
        """The CA certificates sent after each leaf: everything up to, not including, a root."""
        return [c for c in [self._cert, *self._intermediates] if not is_self_signed(c)]

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


def new_root_files(trust_domain: str, now: datetime) -> RootFiles:
    """A new self-signed root as PEM, for a store to keep (the directory, a Kubernetes Secret)."""
    cert, key = _new_root(validate_trust_domain(trust_domain), now)
    return RootFiles(cert_pem=certificates_pem([cert]), key_pem=private_key_pem(key))


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

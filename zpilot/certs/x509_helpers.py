"""Small X.509 facts and conversions the CA needs, kept apart from signing and from the disk.

Everything here is a pure function of certificates, keys or bytes: no clock, no files, no state.
Errors are ``CertificateAuthorityError`` naming where the bytes came from (``source``), and never
quote key material or carry the parser's exception (which may).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateAuthorityError(ValueError):
    """The CA material is unusable (missing, malformed, mismatched, expired); the message says which file."""


def serial_hex(serial: int) -> str:
    """A serial number the way Envoy's /certs prints it: lower-case hex, whole bytes."""
    text = format(serial, "x")
    return text if len(text) % 2 == 0 else "0" + text


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, hex: how certificates are compared and named in logs."""
    return cert.fingerprint(hashes.SHA256()).hex()


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of some bytes (used to notice trust bundle changes without keeping copies)."""
    return hashlib.sha256(data).hexdigest()


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


def certificates_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def private_key_pem(key: SigningKey) -> bytes:
    """Unencrypted PKCS#8 PEM: what Envoy's SDS and the CA directory hold (files are 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    return issued_by(cert, cert)


def is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints CA:TRUE and, if key usage is present, keyCertSign."""
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


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def same_public_key(a: object, b: object) -> bool:
    """Compares keys of any type through their DER SubjectPublicKeyInfo (no type-specific accessors)."""
    return _spki(a) == _spki(b)


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest matching the key's strength (SHA-384 for curves above P-256)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI of certificates ``issuer`` signs: its SKI if it has one, else derived from its key."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]

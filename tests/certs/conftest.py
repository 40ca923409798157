"""Shared helpers: a clock tests can move, and a user-provided root + intermediate made with cryptography."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(timezone.utc).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def make_ca_cert(
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = True,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate called ``name``: self-signed, or signed by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Corp"), x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


@dataclass
class UserCA:
    """Files of a user-provided CA: root, and an intermediate under it."""

    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    root_path: Path
    root_key_path: Path
    intermediate_path: Path  # the intermediate only
    intermediate_chain_path: Path  # intermediate then root
    intermediate_key_path: Path


@pytest.fixture
def user_ca(tmp_path: Path) -> UserCA:
    root, root_key = make_ca_cert("Example Root CA")
    inter, inter_key = make_ca_cert("Example Mesh Intermediate", (root, root_key))
    d = tmp_path / "user-ca"
    d.mkdir()
    paths = {
        "root_path": (d / "root.pem", cert_pem(root)),
        "root_key_path": (d / "root-key.pem", key_pem(root_key)),
        "intermediate_path": (d / "inter.pem", cert_pem(inter)),
        "intermediate_chain_path": (d / "inter-chain.pem", cert_pem(inter, root)),
        "intermediate_key_path": (d / "inter-key.pem", key_pem(inter_key)),
    }
    for path, data in paths.values():
        path.write_bytes(data)
        if "key" in path.name:
            path.chmod(0o600)
    return UserCA(root, root_key, inter, inter_key, **{k: v[0] for k, v in paths.items()})

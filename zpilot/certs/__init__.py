"""Workload identity for the mesh: the CA, per-identity certificates and the SDS Secret resources.

``ca`` signs, ``storage`` keeps a CA on disk (locking, atomic creation, read-only mounts),
``x509_helpers`` holds the certificate facts both need, ``identity`` decides when to sign again,
``secrets`` turns both into what Envoy is sent (and into redacted views for humans). See
docs/certificates.md.
"""

from zpilot.certs.ca import (
    DEFAULT_LIFETIME,
    CertificateAuthority,
    CertificateAuthorityError,
    IssuedCertificate,
)
from zpilot.certs.identity import AuthorityChange, IdentityCache
from zpilot.certs.secrets import (
    build_secrets,
    describe_certificate,
    describe_secret,
    redact_secret,
)
from zpilot.certs.spiffe import SpiffeId, parse_spiffe_id

__all__ = [
    "DEFAULT_LIFETIME",
    "AuthorityChange",
    "CertificateAuthority",
    "CertificateAuthorityError",
    "IdentityCache",
    "IssuedCertificate",
    "SpiffeId",
    "build_secrets",
    "describe_certificate",
    "describe_secret",
    "parse_spiffe_id",
    "redact_secret",
]

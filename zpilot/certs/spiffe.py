"""SPIFFE IDs of Kubernetes service accounts, of the form :func:`zpilot.contract.spiffe_id` writes.

A workload certificate is only as trustworthy as the string in its URI SAN, and the peer's RBAC
and SAN matchers compare that string byte for byte. So the CA accepts exactly one spelling of an
identity (lower case, no empty or extra segments, no percent-encoding, no query or fragment) and
refuses everything else with a message that names the offending ID, instead of signing something
that no policy will ever match -- or, worse, one that a lax matcher would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zpilot import contract
from zpilot.contract import DEFAULT_TRUST_DOMAIN

# SPIFFE spec: trust domain = lower-case letters, digits, '.', '-', '_'; at most 255 bytes.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
# Kubernetes: namespace names are DNS-1123 labels, service account names DNS-1123 subdomains.
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: The SPIFFE spec's limit on the whole ID.
MAX_LENGTH = 2048


@dataclass(frozen=True)
class SpiffeId:
    """A parsed, validated Kubernetes service-account identity."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        return contract.spiffe_id(self.trust_domain, self.namespace, self.service_account)

    def __str__(self) -> str:
        return self.uri


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain name, else raise ValueError."""
    if not isinstance(trust_domain, str) or not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"trust domain {trust_domain!r} is not valid: use 1-255 lower-case letters, digits, '.', '-' or '_'"
            f" (e.g. {DEFAULT_TRUST_DOMAIN!r})"
        )
    return trust_domain


def parse_spiffe_id(spiffe_id: str, trust_domain: str | None = None) -> SpiffeId:
    """Parse a SPIFFE ID of ``contract.SPIFFE_ID_FORM``; raise ValueError naming the ID if it is anything else.

    With ``trust_domain`` given, an ID of another trust domain is refused too: a CA must never
    vouch for identities it does not own.
    """
    if not isinstance(spiffe_id, str):
        raise ValueError(f"SPIFFE ID must be a string, not {type(spiffe_id).__name__}")
    shown = spiffe_id if len(spiffe_id) <= 300 else spiffe_id[:300] + "..."
    if len(spiffe_id) > MAX_LENGTH:
        raise ValueError(f"SPIFFE ID {shown!r} is longer than {MAX_LENGTH} characters")
    if not spiffe_id.startswith(contract.SPIFFE_SCHEME):
        raise ValueError(f"SPIFFE ID {shown!r} does not start with {contract.SPIFFE_SCHEME!r}")
    rest = spiffe_id[len(contract.SPIFFE_SCHEME):]
    for bad, what in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding"), ("@", "user info"), (":", "a port")):
        if bad in rest:
            raise ValueError(f"SPIFFE ID {shown!r} must not contain {what} ({bad!r})")
    parts = contract.split_spiffe_id(spiffe_id)
    if parts is None:
        raise ValueError(f"SPIFFE ID {shown!r} is not of the form {contract.SPIFFE_ID_FORM}")
    domain, namespace, account = parts
    try:
        validate_trust_domain(domain)
    except ValueError:
        raise ValueError(f"SPIFFE ID {shown!r} has an invalid trust domain {domain!r}") from None
    if not _DNS1123_LABEL.fullmatch(namespace):
        raise ValueError(f"SPIFFE ID {shown!r} has an invalid namespace {namespace!r} (not a DNS-1123 label)")
    if len(account) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(account):
        raise ValueError(
            f"SPIFFE ID {shown!r} has an invalid service account {account!r} (not a DNS-1123 subdomain)"
        )
    if trust_domain is not None and domain != trust_domain:
        raise ValueError(f"SPIFFE ID {shown!r} is outside this CA's trust domain {trust_domain!r}")
    return SpiffeId(domain, namespace, account)


def service_account_identity(namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The SPIFFE ID of a service account, validated (so bad names fail here, naming the account)."""
    return parse_spiffe_id(contract.spiffe_id(trust_domain, namespace, service_account)).uri

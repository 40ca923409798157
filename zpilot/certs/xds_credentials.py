"""The certificates of the ADS connection itself: the server's, and each node's client certificate.

The mesh CA signs them, but they are not workload identities and cannot be used as such:

* a **node credential** (client certificate) carries one URI SAN,
  :func:`zpilot.contract.node_credential_id` (``.../sa/ztunnel/node/<node>``), and the clientAuth
  usage only. It proves to the ADS server which node its holder serves; no mesh TLS context
  accepts it (their SAN matchers take ``/ns/<ns>/sa/<sa>`` exactly), and no workload certificate
  (``/ns/<ns>/sa/<sa>``, nothing below) is taken for one.
* the **server certificate** carries the DNS names and IP addresses a ztunnel dials (no URI SAN)
  and the serverAuth usage only, so it can stand in for neither.

Which node a presented certificate names is read here, once (:func:`node_of_certificate`), from
the form the contract defines.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from zpilot import contract
from zpilot.certs.ca import CLOCK_SKEW, CertificateAuthority, IssuedCertificate
from zpilot.certs.x509_helpers import serial_hex

#: A node credential's lifetime unless told otherwise: renewed at half (``zpilot bootstrap --renew``).
NODE_CREDENTIAL_LIFETIME = timedelta(days=30)
#: The server's certificate is short-lived: it is re-issued in memory, at half its lifetime, by
#: the running server (``zpilot.xds.transport``), and never written to disk.
SERVER_CERTIFICATE_LIFETIME = timedelta(hours=24)
#: The names every server certificate carries: a ztunnel on the same machine (or reaching ADS over a
#: Unix socket, where there is no name to dial) checks the server against ``localhost``.
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")


class CredentialError(ValueError):
    """A name that cannot go into an ADS certificate, or a file that is not a usable credential."""


def issue_node_credential(
    ca: CertificateAuthority, node: str, lifetime: timedelta = NODE_CREDENTIAL_LIFETIME
) -> IssuedCertificate:
    """A client certificate proving that its holder serves ``node`` (and nothing else)."""
    try:
        uri = contract.node_credential_id(ca.trust_domain, node)
    except ValueError as exc:
        raise CredentialError(str(exc)) from None
    return ca.issue_leaf([x509.UniformResourceIdentifier(uri)], [ExtendedKeyUsageOID.CLIENT_AUTH], lifetime, uri)


def server_name(name: str) -> x509.GeneralName:
    """One SAN of the server's certificate: an IP address, or a lower-case DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(name):
        raise CredentialError(f"{name[:300]!r} is neither an IP address nor a DNS name (lower case, no wildcard)")
    return x509.DNSName(name)


def issue_server_certificate(
    ca: CertificateAuthority, names: Sequence[str], lifetime: timedelta = SERVER_CERTIFICATE_LIFETIME
) -> IssuedCertificate:
    """The ADS server's certificate for ``names`` (plus :data:`DEFAULT_SERVER_NAMES`)."""
    unique = list(dict.fromkeys([*DEFAULT_SERVER_NAMES, *names]))
    sans = [server_name(name) for name in unique]
    return ca.issue_leaf(sans, [ExtendedKeyUsageOID.SERVER_AUTH], lifetime, ", ".join(unique))


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI SANs (none when it has no SAN extension)."""
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return extension.value.get_values_for_type(x509.UniformResourceIdentifier)


@dataclass(frozen=True)
class NodeCredential:
    """What a node credential says: its node, which certificate it is (for log lines), and when it was
    issued (what a revocation by node compares: ``zpilot.certs.revocation``)."""

    node: str
    serial: str  # hex, as x509_helpers.serial_hex and Envoy's /certs print it
    serial_number: int = 0
    #: NotBefore plus the backdating every certificate zpilot issues gets (ca.CLOCK_SKEW).
    issued_at: datetime | None = None


def read_node_credential(pem: bytes, trust_domain: str) -> NodeCredential | None:
    """The node a (verified) client certificate is a credential for, or None.

    Only a certificate whose sole URI SAN is a node credential ID of ``trust_domain`` names a node;
    a workload certificate, a certificate with several URIs (which one would count?) or one of
    another trust domain names none. The TLS layer has already checked the chain and the dates.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    uris = uri_sans(cert)
    if len(uris) != 1:
        return None
    node = contract.node_of_credential_id(uris[0], trust_domain)
    if node is None:
        return None
    return NodeCredential(node, serial_hex(cert.serial_number), cert.serial_number,
                          cert.not_valid_before_utc + CLOCK_SKEW)


def node_of_certificate(pem: bytes, trust_domain: str) -> str | None:
    """The node of :func:`read_node_credential`, or None."""
    credential = read_node_credential(pem, trust_domain)
    return credential.node if credential is not None else None

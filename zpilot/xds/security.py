"""How the ADS server is protected: its TLS, and who a stream proves to be (docs/security.md).

:class:`XdsSecurity` pairs the two, one per ``zpilot serve --xds-auth``:

* ``tls``: TLS that *requires* a client certificate of the mesh CA, and the node it names;
* ``token``: TLS (server certificate only) and a bearer token the API server vouches for;
* ``insecure`` (``--insecure-xds``): plaintext, any client claims any node.

The server's own certificate is issued by the mesh CA and never written to disk.
:class:`ServerTls` hands gRPC a certificate *fetcher*, which gRPC calls before each TLS handshake
(on a thread of its own): the certificate is re-issued there at half its lifetime, and at once
when the CA changed (a SIGHUP reload), and the client CA bundle follows the CA's trust bundle, so
a root rotation reaches the ADS port without a restart.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Sequence

import grpc

from ..certs import CertificateAuthority, IssuedCertificate
from ..certs.x509_helpers import serial_hex
from ..certs.xds_credentials import SERVER_CERTIFICATE_LIFETIME, issue_server_certificate
from .auth import (
    Authenticator,
    BearerTokenAuthenticator,
    NodeCertificateAuthenticator,
    RevocationCheck,
    TokenVerifier,
    Unauthenticated,
)

log = logging.getLogger("zpilot.xds.auth")


class ServerTls:
    """The ADS server's TLS: a CA-issued certificate for ``names``, kept fresh."""

    def __init__(
        self,
        authority: Callable[[], CertificateAuthority],
        names: Sequence[str] = (),
        *,
        require_client_certificate: bool,
        lifetime: timedelta = SERVER_CERTIFICATE_LIFETIME,
    ) -> None:
        self._authority = authority
        self.names = tuple(names)
        self.require_client_certificate = require_client_certificate
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._issued: IssuedCertificate | None = None
        self._bundle = b""
        self._handshakes = 0

    @property
    def handshakes(self) -> int:
        """TLS handshakes gRPC has begun with this configuration: one per connection accepted, whatever its
        outcome. gRPC calls the fetcher before each handshake and reports nothing after it (grpcio has no hook
        for a handshake's end, failed or not), so this is the one handshake count zpilot can see."""
        return self._handshakes

    @property
    def certificate(self) -> IssuedCertificate | None:
        """The certificate handshakes use now (None before :meth:`credentials`)."""
        return self._issued

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials; raises (CertificateAuthorityError, CredentialError) if the CA
        cannot issue the certificate, so a bad name or an expired CA stops the start."""
        with self._lock:
            config = self._issue(self._authority())
        return grpc.dynamic_ssl_server_credentials(
            config, self._fetch, require_client_authentication=self.require_client_certificate
        )

    def _issue(self, ca: CertificateAuthority) -> grpc.ServerCertificateConfiguration:
        issued = issue_server_certificate(ca, self.names, self.lifetime)
        bundle = ca.trust_bundle_pem()
        self._issued, self._bundle = issued, bundle
        log.info("ADS server certificate issued for %s (serial %s, until %s)", issued.spiffe_id,
                 serial_hex(issued.serial), issued.not_after.isoformat())
        return grpc.ssl_server_certificate_configuration(
            [(issued.private_key_pem, issued.cert_chain_pem)],
            root_certificates=bundle if self.require_client_certificate else None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before every handshake: a new configuration when the current one is due."""
        try:
            with self._lock:
                self._handshakes += 1
                ca = self._authority()
                issued = self._issued
                if issued is not None and not self._due(issued, ca):
                    return None
                return self._issue(ca)
        except Exception:  # keep handshaking with what we have; the next handshake tries again
            log.exception("could not renew the ADS server certificate; keeping the current one")
            return None

    def _due(self, issued: IssuedCertificate, ca: CertificateAuthority) -> bool:
        if issued.ca_fingerprint != ca.fingerprint or self._bundle != ca.trust_bundle_pem():
            return True
        return ca.clock() >= issued.issued_at + (issued.not_after - issued.issued_at) / 2


@dataclass(frozen=True)
class XdsSecurity:
    """The ADS server's transport security and authenticator (see the module docstring)."""

    authenticator: Authenticator
    tls: ServerTls | None  # None: plaintext
    #: The CA's revocation list of node certificates (tls mode with a CA store): the server ends the open
    #: streams of a credential revoked while they live.
    revocations: RevocationCheck | None = None

    @property
    def mode(self) -> str:
        return self.authenticator.mode

    @classmethod
    def mutual_tls(
        cls, authority: Callable[[], CertificateAuthority], names: Sequence[str] = (), *, trust_domain: str | None = None,
        revocations: RevocationCheck | None = None,
    ) -> "XdsSecurity":
        """``--xds-auth tls``: a node certificate of the mesh CA on every connection, not one ``revocations``
        names (``trust_domain``: the CA's, asked of ``authority`` now unless given, for a CA that is not there
        yet)."""
        domain = trust_domain if trust_domain is not None else authority().trust_domain
        return cls(NodeCertificateAuthenticator(domain, revocations),
                   ServerTls(authority, names, require_client_certificate=True), revocations)

    @classmethod
    def token(
        cls, authority: Callable[[], CertificateAuthority], verifier: TokenVerifier, names: Sequence[str] = ()
    ) -> "XdsSecurity":
        """``--xds-auth token``: TLS, and a ServiceAccount token on every stream."""
        return cls(BearerTokenAuthenticator(verifier), ServerTls(authority, names, require_client_certificate=False))

    @classmethod
    def insecure(cls) -> "XdsSecurity":
        """``--insecure-xds``: plaintext, no authentication (development only)."""
        return cls(Unauthenticated(), None)

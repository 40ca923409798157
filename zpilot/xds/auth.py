"""Who is on the other end of an ADS stream, and which node's config it may have (docs/security.md).

Before a stream reads anything, the server asks its :class:`Authenticator` what the connection
proves: a :class:`Principal` naming the one node its holder serves. The stream then serves the
node its first request names only if it is that node; anything else ends the stream with
``UNAUTHENTICATED`` (no usable credential) or ``PERMISSION_DENIED`` (a credential, but not for
this node), before a byte of config or a secret is sent. Each refusal is reported to the
stream observer (``access_denied``) with one reason of :data:`DENIAL_REASONS`.

One authenticator per ``zpilot serve --xds-auth``:

* ``tls`` -- :class:`NodeCertificateAuthenticator`: the client certificate gRPC's TLS verified
  (chain to the mesh CA, dates) must be a node credential (``zpilot.certs.xds_credentials``) that
  the CA's revocation list (``zpilot.xds.revocations``) does not name.
  A client without a certificate, with an expired one or one of another CA never gets past the
  TLS handshake: gRPC closes the connection before any RPC exists, so those are not counted here.
* ``token`` -- :class:`BearerTokenAuthenticator`: ``authorization: Bearer <token>``, a projected
  ServiceAccount token that a :class:`TokenVerifier` turns into the node of the ztunnel pod it
  belongs to (``zpilot.xds.token_review``: the TokenReview API).
* ``--insecure-xds`` -- :class:`Unauthenticated`: any client may claim any node. Development only;
  every stream logs a WARNING.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Protocol

import grpc

from ..certs.xds_credentials import NodeCredential, read_node_credential
from ..logs import bounded

log = logging.getLogger("zpilot.xds.auth")

#: Why a stream was refused: the ``reason`` label of ``zpilot_xds_access_denied_total`` (a fixed set).
NO_CREDENTIAL = "no_credential"  # nothing presented that could prove a node
INVALID_CREDENTIAL = "invalid_credential"  # a token the API server does not accept (expired, forged, revoked)
NOT_A_NODE_CREDENTIAL = "not_a_node_credential"  # valid, but proves no node (a workload's, another account's)
NODE_MISMATCH = "node_mismatch"  # proves one node, the stream asked for another
REVIEW_UNAVAILABLE = "review_unavailable"  # the token could not be checked (API server unreachable)
REVOKED_CREDENTIAL = "revoked_credential"  # a node certificate the CA's revocation list names (zpilot revoke)
DENIAL_REASONS = (NO_CREDENTIAL, INVALID_CREDENTIAL, NOT_A_NODE_CREDENTIAL, NODE_MISMATCH, REVIEW_UNAVAILABLE,
                  REVOKED_CREDENTIAL)

#: A bearer token longer than this is refused unread (a projected token is about 1 KiB).
MAX_TOKEN_BYTES = 16 * 1024


class Denied(Exception):
    """The connection may not be served; ends the stream with ``code``. ``repeat_key`` names what a client
    retrying in a loop repeats (a revoked certificate's serial): its refusals from one client address are logged
    at most once per :data:`REPEAT_LOG_SECONDS` (:class:`RepeatedRefusals`, stream.deny), all of them counted."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, repeat_key: str | None = None) -> None:
        assert reason in DENIAL_REASONS, reason
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.repeat_key = repeat_key


#: A refusal repeated with one ``Denied.repeat_key`` is logged at most this often (seconds).
REPEAT_LOG_SECONDS = 60.0
#: Keys remembered; beyond that the oldest is forgotten (its next refusal is logged: bounded either way).
REPEAT_KEYS = 1024


class RepeatedRefusals:
    """Which refusals to log: the first of a key, then one per interval saying how many were not logged."""

    def __init__(self, interval: float = REPEAT_LOG_SECONDS, keys: int = REPEAT_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.keys = keys
        self.clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (logged at, refusals unlogged since)

    def log(self, key: str | None) -> int | None:
        """None: do not log this one; else log it, with the count of this key's refusals not logged before it."""
        if key is None:
            return 0
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._seen[key] = (seen[0], seen[1] + 1)
            return None
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self.keys:
            self._seen.popitem(last=False)
        return seen[1] if seen is not None else 0


@dataclass(frozen=True)
class Principal:
    """What a connection proved."""

    #: The one node it may be served; None: any (only without authentication).
    node: str | None
    #: What proved it, for log lines (``certificate of node N``, ``token of pod ns/name``).
    credential: str
    #: The node certificate that proved it (``--xds-auth tls``): checked again when the revocation list changes.
    certificate: NodeCredential | None = None

    def check(self, node: str) -> None:
        """Raise :class:`Denied` unless this principal may be served ``node``."""
        if self.node is not None and node != self.node:
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED, NODE_MISMATCH,
                f"the {self.credential} proves node {self.node!r}; the stream asked for node {bounded(node, 253)!r}",
            )


class RevocationCheck(Protocol):
    """What authentication and the server need of the CA's revocation list (``revocations.Revocations``)."""

    def check(self, principal: Principal, *, open_stream: bool = False) -> None:
        """Raise :class:`Denied` if ``principal``'s certificate is revoked."""

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the list changes."""


class Authenticator(Protocol):
    """Turns a connection's credentials into a :class:`Principal`, or raises :class:`Denied`."""

    #: ``tls``, ``token`` or ``insecure`` (as ``zpilot serve`` names it).
    mode: str

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal: ...


class NodeCertificateAuthenticator:
    """Mutual TLS: the node named by the verified client certificate."""

    mode = "tls"

    def __init__(self, trust_domain: str, revocations: "RevocationCheck | None" = None) -> None:
        self.trust_domain = trust_domain
        #: The CA's revocation list as last read (None: the CA has no store for one, e.g. --ca-cert).
        self.revocations = revocations

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        auth = context.auth_context() or {}
        pems = auth.get("x509_pem_cert") or []
        if not pems:  # gRPC requires the certificate, so only a server without TLS gets here
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, NO_CREDENTIAL, "no client certificate")
        credential = read_node_credential(pems[0], self.trust_domain)
        if credential is None:
            uris = [u.decode(errors="replace") for u in auth.get("peer_spiffe_id") or auth.get("x509_subject_alternative_name") or []]
            shown = ", ".join(bounded(u, 300) for u in uris[:4]) or "no URI SAN"
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED, NOT_A_NODE_CREDENTIAL,
                f"the client certificate ({shown}) is not a node credential of trust domain {self.trust_domain}",
            )
        principal = Principal(credential.node, f"certificate of node {credential.node}, serial {credential.serial}",
                              credential)
        if self.revocations is not None:
            self.revocations.check(principal)
        return principal


class TokenVerifier(Protocol):
    """Checks a bearer token: the :class:`Principal` it proves, or :class:`Denied`."""

    async def verify(self, token: str) -> Principal: ...


class BearerTokenAuthenticator:
    """``authorization: Bearer <token>``, checked by ``verifier``."""

    mode = "token"

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        values = [v for k, v in (context.invocation_metadata() or ()) if k == "authorization"]
        if len(values) != 1:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, NO_CREDENTIAL,
                         "no bearer token (authorization: Bearer <token>)" if not values else "more than one authorization header")
        value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
        scheme, _, token = value.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, NO_CREDENTIAL, "the authorization header is not a bearer token")
        if len(token) > MAX_TOKEN_BYTES:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, INVALID_CREDENTIAL, f"bearer token over {MAX_TOKEN_BYTES} bytes")
        return await self.verifier.verify(token)


class Unauthenticated:
    """``--insecure-xds``: any client is served the node it names. Says so on every stream."""

    mode = "insecure"

    async def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        log.warning("ADS without authentication (--insecure-xds): a stream from %s may claim any node and"
                    " receive its private keys", bounded(context.peer() or "?", 200))
        return Principal(None, "unauthenticated connection")

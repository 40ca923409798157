"""Who may call the server (bearer tokens with per-token permissions) and the service account tokens a
TokenReview judges.

API access: every request except /healthz, /livez, /readyz and /version needs ``Authorization: Bearer <t>``
for a token added with :meth:`Authenticator.add_token`, or (without that header) a client certificate of the
server's client CA whose CN was added with :meth:`Authenticator.add_certificate_user` (401 otherwise); a token may do only the (verb,
resource) pairs it was given (403 otherwise, worded as RBAC words it). Discovery (/api, /apis...) is open
to any valid token, as the real ``system:discovery`` role makes it.

Service account tokens: :meth:`TokenIssuer.issue` mints a JWT like the kubelet's projected tokens (issuer,
audiences, expiry, the ``kubernetes.io`` claim binding it to a ServiceAccount and optionally a Pod), signed
with the server's key. :meth:`TokenIssuer.review` answers a TokenReview the way the real authenticator does:
signature, expiry, audiences, and the bound objects still existing with the same uid.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .store import VersionedStore

ALL: frozenset[tuple[str, str]] = frozenset({("*", "*")})
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
MAX_TOKEN = 16 * 1024


@dataclass(frozen=True)
class Identity:
    user: str
    allowed: frozenset[tuple[str, str]]
    groups: tuple[str, ...] = ("system:authenticated",)


@dataclass
class Authenticator:
    _tokens: dict[str, Identity] = field(default_factory=dict)
    _certificate_users: dict[str, Identity] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_token(self, token: str, *, user: str | None = None,
                  allow: Iterable[tuple[str, str]] = ALL) -> str:
        """Accept ``token``; it may do the given (verb, resource) pairs (``("*", "*")``: anything)."""
        with self._lock:
            self._tokens[token] = Identity(user or f"user-{len(self._tokens)}", frozenset(allow))
        return token

    def remove_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def add_certificate_user(self, user: str, *, allow: Iterable[tuple[str, str]] = ALL) -> None:
        """Accept client certificates of the server's client CA whose CN is ``user``."""
        with self._lock:
            self._certificate_users[user] = Identity(user, frozenset(allow))

    def remove_certificate_user(self, user: str) -> None:
        """Accept client certificates of ``user`` no longer (a rotated-out certificate: new requests get 401)."""
        with self._lock:
            self._certificate_users.pop(user, None)

    def identify_certificate(self, peercert: dict[str, Any] | None) -> Identity | None:
        """The user of a verified client certificate (``ssl``'s ``getpeercert()``): its CN, if accepted."""
        if not peercert:
            return None
        names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
        with self._lock:
            return self._certificate_users.get(names[0]) if len(names) == 1 else None

    def identify(self, header: str | None) -> Identity | None:
        if not header or not header.startswith("Bearer ") or len(header) > MAX_TOKEN:
            return None
        with self._lock:
            return self._tokens.get(header[len("Bearer "):].strip())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """The service-account token signer and the TokenReview authenticator that checks its tokens."""

    def __init__(self, store: VersionedStore, issuer: str = DEFAULT_ISSUER) -> None:
        self.store = store
        self.issuer = issuer
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.key_id = secrets.token_hex(8)

    def issue(self, namespace: str, service_account: str, *, pod: dict[str, Any] | None = None,
              audiences: Iterable[str] = API_AUDIENCES, expires_in: float = 3600.0,
              issued_at: float | None = None) -> str:
        """A token for the ServiceAccount (which must exist), bound to ``pod`` when given (name, uid, node)."""
        sa = self.store.get("/serviceaccounts", namespace, service_account)
        if sa is None:
            raise KeyError(f"serviceaccount {namespace}/{service_account} does not exist")
        iat = int(issued_at if issued_at is not None else time.time())
        k8s: dict[str, Any] = {"namespace": namespace,
                               "serviceaccount": {"name": service_account, "uid": sa["metadata"]["uid"]}}
        if pod is not None:
            k8s["pod"] = {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
            node_name = (pod.get("spec") or {}).get("nodeName")
            node = self.store.get("/nodes", "", node_name) if node_name else None
            if node is not None:
                k8s["node"] = {"name": node_name, "uid": node["metadata"]["uid"]}
        claims = {
            "aud": list(audiences), "exp": iat + int(expires_in), "iat": iat, "nbf": iat, "iss": self.issuer,
            "jti": str(uuid.uuid4()), "kubernetes.io": k8s,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }
        header = {"alg": "ES256", "kid": self.key_id, "typ": "JWT"}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def _claims(self, token: str) -> dict[str, Any] | None:
        try:
            head, body, sig = token.split(".")
            raw = _unb64(sig)
            if len(raw) != 64:
                return None
            der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
            self._key.public_key().verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
            claims = json.loads(_unb64(body))
            return claims if isinstance(claims, dict) else None
        except (ValueError, InvalidSignature):
            return None

    def review(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The ``status`` of a TokenReview for ``spec`` ({token, audiences})."""
        token = spec.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            return {"authenticated": False, "error": "[invalid bearer token, token lookup failed]", "user": {}}
        wanted = [a for a in spec.get("audiences") or () if isinstance(a, str)] or list(API_AUDIENCES)
        claims = self._claims(token)
        if claims is None or claims.get("iss") != self.issuer:
            return self._fail("invalid bearer token")
        if claims.get("exp", 0) < time.time():
            return self._fail("service account token has expired")
        granted = [a for a in claims.get("aud") or () if a in wanted]
        if not granted:
            return self._fail(f"token audiences {json.dumps(claims.get('aud'))} is invalid for the target "
                              f"audiences {json.dumps(wanted)}")
        k8s = claims.get("kubernetes.io") or {}
        ns = k8s.get("namespace", "")
        sa_claim = k8s.get("serviceaccount") or {}
        sa = self.store.get("/serviceaccounts", ns, sa_claim.get("name", ""))
        if sa is None or sa["metadata"]["uid"] != sa_claim.get("uid"):
            return self._fail(f"service account {ns}/{sa_claim.get('name')} has been deleted")
        extra: dict[str, list[str]] = {"authentication.kubernetes.io/credential-id": [f"JTI={claims.get('jti')}"]}
        if "pod" in k8s:
            pod = self.store.get("/pods", ns, k8s["pod"].get("name", ""))
            if pod is None or pod["metadata"]["uid"] != k8s["pod"].get("uid"):
                return self._fail(f"pod {ns}/{k8s['pod'].get('name')} has been deleted")
            extra["authentication.kubernetes.io/pod-name"] = [k8s["pod"]["name"]]
            extra["authentication.kubernetes.io/pod-uid"] = [k8s["pod"]["uid"]]
        if "node" in k8s:
            extra["authentication.kubernetes.io/node-name"] = [k8s["node"]["name"]]
            extra["authentication.kubernetes.io/node-uid"] = [k8s["node"]["uid"]]
        return {
            "authenticated": True,
            "audiences": granted,
            "user": {
                "username": f"system:serviceaccount:{ns}:{sa_claim['name']}",
                "uid": sa_claim["uid"],
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
                "extra": extra,
            },
        }

    @staticmethod
    def _fail(why: str) -> dict[str, Any]:
        return {"authenticated": False, "error": f"[invalid bearer token, {why}]", "user": {}}

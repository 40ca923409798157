"""Which node a ztunnel's ServiceAccount token proves, asked of the Kubernetes API (TokenReview).

What istiod's node authorizer does for its ztunnels, with the same evidence:

1. **TokenReview** with our audience (:data:`zpilot.contract.XDS_TOKEN_AUDIENCE`): the API server
   checks the signature, the expiry, the audience, and that the ServiceAccount and the Pod the
   token is bound to still exist with the uids it names. Not authenticated: ``UNAUTHENTICATED``.
2. The user must be the ztunnel's ServiceAccount (``system:serviceaccount:istio-system:ztunnel``
   by default), and the token must be bound to a pod (the ``authentication.kubernetes.io/pod-name``
   and ``pod-uid`` extras a projected token carries). Anything else: ``PERMISSION_DENIED``.
3. That **pod is read** from the API: it must still have that uid, be scheduled on a node and not
   be finished; its ``spec.nodeName`` is the node the stream may be served (and must agree with the
   ``node-name`` extra when the API server sets it).

Reviews are cached briefly (a reconnect burst of a thousand ztunnels after a zpilot restart
costs one review each, not one per stream): a verdict for at most ``ttl`` seconds and never past
the token's own expiry, in a bounded LRU keyed by the token's SHA-256 (the token itself is not
kept). A refusal is cached for ``denial_ttl`` only, an API failure not at all; at most
``concurrency`` reviews run at once. zpilot needs RBAC to ``create`` ``tokenreviews`` and ``get``
``pods`` in the ztunnel's namespace (docs/security.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any, Callable

import aiohttp
import grpc
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from .. import contract
from ..logs import bounded
from .auth import INVALID_CREDENTIAL, NOT_A_NODE_CREDENTIAL, REVIEW_UNAVAILABLE, Denied, Principal
from .service_account import ServiceAccountRef  # (there: serve's flags parse one without this client)

log = logging.getLogger("zpilot.xds.auth")

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
#: Every (verb, API group, resource) a review asks the API server for, so RBAC can be derived from
#: it: a TokenReview (``create``; tokenreviews are cluster-scoped, a ClusterRole) ...
CLUSTER_PERMISSIONS: tuple[tuple[str, str, str], ...] = (("create", "authentication.k8s.io", "tokenreviews"),)
#: ... and the pod the token is bound to, read in the ztunnels' namespace (``ServiceAccountRef.namespace``,
#: a Role there).
NAMESPACE_PERMISSIONS: tuple[tuple[str, str, str], ...] = (("get", "", "pods"),)
#: A review call (and the pod read after it) that takes longer than this fails the stream;
#: the ztunnel retries.
API_TIMEOUT = 10.0


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (wall-clock seconds), read without checking the signature: only
    used to shorten the cache of a token the API server has just accepted."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return float(exp) if isinstance(exp, (int, float)) else None
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None


class TokenReviewer:
    """A :class:`~zpilot.xds.auth.TokenVerifier` backed by the Kubernetes API."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        audience: str = contract.XDS_TOKEN_AUDIENCE,
        service_account: ServiceAccountRef = ServiceAccountRef(),
        ttl: float = 60.0,
        denial_ttl: float = 5.0,
        max_entries: int = 4096,
        concurrency: int = 8,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.authentication = client.AuthenticationV1Api(api)
        self.core = client.CoreV1Api(api)
        self.audience = audience
        self.service_account = service_account
        self.ttl = ttl
        self.denial_ttl = denial_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._cache: OrderedDict[bytes, tuple[float, Principal | Denied]] = OrderedDict()
        self._limit = asyncio.Semaphore(concurrency)
        self.reviews = 0  # TokenReviews asked of the API server (the cache's misses)

    async def verify(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            return _verdict(cached[1])
        self._cache.pop(key, None)
        async with self._limit:
            try:
                verdict: Principal | Denied = await asyncio.wait_for(self._review(token), API_TIMEOUT)
            except Denied as exc:
                verdict = exc
            except (ApiException, aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
                raise self._unavailable(exc) from None
        if isinstance(verdict, Principal):
            until = now + self.ttl
            expires = token_expiry(token)
            if expires is not None:
                until = min(until, now + (expires - self._wall_clock()))
        else:
            until = now + self.denial_ttl
        if until > now:
            self._cache[key] = (until, verdict)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return _verdict(verdict)

    async def _review(self, token: str) -> Principal:
        self.reviews += 1
        review = await self.authentication.create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience]))
        )
        status = review.status
        if status is None or not status.authenticated:
            why = bounded((status.error if status is not None else "") or "not authenticated", 300)
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, INVALID_CREDENTIAL, f"the API server refused the token: {why}")
        if self.audience not in (status.audiences or []):
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, INVALID_CREDENTIAL,
                         f"the token is not valid for audience {self.audience!r}")
        user = status.user or client.V1UserInfo()
        if user.username != self.service_account.username:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, NOT_A_NODE_CREDENTIAL,
                         f"the token is {bounded(user.username or '?', 300)}'s, not the ztunnel's"
                         f" ({self.service_account.username})")
        extra: dict[str, Any] = user.extra or {}
        pod_name = _single(extra.get(POD_NAME_EXTRA))
        pod_uid = _single(extra.get(POD_UID_EXTRA))
        if not pod_name or not pod_uid:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, NOT_A_NODE_CREDENTIAL,
                         "the token is not bound to a pod (use a projected ServiceAccount token)")
        where = f"{self.service_account.namespace}/{pod_name}"
        try:
            pod = await self.core.read_namespaced_pod(pod_name, self.service_account.namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise Denied(grpc.StatusCode.UNAUTHENTICATED, INVALID_CREDENTIAL,
                             f"pod {where}, which the token is bound to, no longer exists") from None
            raise
        node = pod.spec.node_name if pod.spec is not None else None
        phase = pod.status.phase if pod.status is not None else None
        if pod.metadata.uid != pod_uid:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, INVALID_CREDENTIAL,
                         f"pod {where} was replaced since the token was issued")
        if not node or phase in ("Succeeded", "Failed"):
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, NOT_A_NODE_CREDENTIAL,
                         f"pod {where} is not running on a node")
        node_extra = _single(extra.get(NODE_NAME_EXTRA))
        if node_extra and node_extra != node:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, NOT_A_NODE_CREDENTIAL,
                         f"the token names node {bounded(node_extra, 253)!r} but pod {where} runs on {node!r}")
        return Principal(node, f"token of pod {where}")

    def _unavailable(self, exc: BaseException) -> Denied:
        if isinstance(exc, ApiException) and exc.status in (401, 403):
            detail = (f"zpilot may not review tokens or read pods (HTTP {exc.status}): grant it create on"
                      f" tokenreviews and get on pods in {self.service_account.namespace}")
            log.error("%s", detail)
        else:
            detail = f"the API server could not be asked: {bounded(str(exc) or type(exc).__name__, 300)}"
        return Denied(grpc.StatusCode.UNAVAILABLE, REVIEW_UNAVAILABLE, f"cannot check the token now; {detail}")


def _verdict(verdict: Principal | Denied) -> Principal:
    if isinstance(verdict, Denied):  # a fresh exception each time: a cached one would gather tracebacks
        raise Denied(verdict.code, verdict.reason, verdict.message)
    return verdict


def _single(values: Any) -> str:
    """An extra's value: one string, or "" (missing, or ambiguous)."""
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""

"""``--xds-auth token``: a ztunnel's projected ServiceAccount token, checked with the TokenReview API of
the in-process API server (tests/kube/apiserver), which mints tokens the way the kubelet does."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tests.kube.apiserver import seed_article
from tests.kube.apiserver.fixtures import api_client
from zpilot import contract
from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.runtime.control_plane import ControlPlane, DebugOptions
from zpilot.xds.order import CLUSTER_TYPE
from zpilot.xds.security import XdsSecurity
from zpilot.xds.server import ServerOptions
from zpilot.xds.token_review import CLUSTER_PERMISSIONS, NAMESPACE_PERMISSIONS, TokenReviewer

from .ads_client import AdsClient, tls_credentials
from .conftest import load_index, per_node_translate
from .envoy_util import NODE_A, NODE_B

ZTUNNEL_ON_A = "ztunnel-rts54"  # examples/article: the ztunnel pod of node A
AUDIENCE = [contract.XDS_TOKEN_AUDIENCE]
#: What zpilot needs of the API server, and nothing more (docs/security.md): the lists the reviewer
#: exports, which the Helm chart's RBAC is checked against.
ZPILOT_RBAC = {(verb, f"{resource}.{group}" if group else resource)
               for verb, group, resource in CLUSTER_PERMISSIONS + NAMESPACE_PERMISSIONS}


@pytest.fixture
async def plane(apiserver, manifests: Path):
    """A control plane whose ADS takes ServiceAccount tokens, reviewed with zpilot's least privileges."""
    seed_article(apiserver)
    identities = IdentityCache(CertificateAuthority.generate())
    async with api_client(apiserver, token=apiserver.add_token(allow=ZPILOT_RBAC, user="zpilot")) as api:
        reviewer = TokenReviewer(api)
        plane = ControlPlane(
            xds_security=XdsSecurity.token(lambda: identities.ca, reviewer),
            server_options=ServerOptions(host="127.0.0.1", port=0),
            debug_options=DebugOptions(port=0),
            translate=per_node_translate({}),
            identities=identities,
        )
        await plane.update(load_index(manifests))
        await plane.start()
        plane.reviewer = reviewer  # type: ignore[attr-defined]
        yield plane
        await plane.stop()


@pytest.fixture
async def connect(plane):
    made: list[AdsClient] = []

    def make(token: str | None, node: str | None) -> AdsClient:
        """A stream with ``token`` asking for ``node``'s CDS; with ``node`` None it sends nothing: a
        stream refused before its first request is read (the token alone) needs none, and a request
        would only race the server's trailers, which grpc.aio's client may then report as INTERNAL
        'Internal error from Core' instead of the server's status (grpc/grpc#36066)."""
        metadata = [("authorization", f"Bearer {token}")] if token is not None else None
        client = AdsClient(plane.xds_port, credentials=tls_credentials(plane.identities.ca.trust_bundle_pem()),
                           metadata=metadata)
        if node is not None:
            client.request(CLUSTER_TYPE, node_name=node)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def refused(client: AdsClient) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        response = await client.recv(timeout=10)
        raise AssertionError(f"a refused client got a response: {response.type_url}")
    return error.value.code(), error.value.details() or ""


def denied(plane, reason: str) -> float:
    return plane.metrics.value("zpilot_xds_access_denied_total", reason=reason)


async def test_a_ztunnel_pod_s_token_is_served_its_node_only(plane, connect, apiserver):
    token = apiserver.issue_token(contract.ZTUNNEL_NAMESPACE, contract.ZTUNNEL_SERVICE_ACCOUNT, pod=ZTUNNEL_ON_A,
                                  audiences=AUDIENCE)
    served = connect(token, NODE_A)
    assert (await served.recv()).resources
    code, message = await refused(connect(token, NODE_B))
    assert code == grpc.StatusCode.PERMISSION_DENIED and f"proves node '{NODE_A}'" in message
    assert denied(plane, "node_mismatch") == 1
    again = connect(token, NODE_A)  # a reconnect: the review is cached
    assert (await again.recv()).resources
    assert plane.reviewer.reviews == 1


async def test_tokens_that_prove_no_node_are_refused(plane, connect, apiserver):
    ns, sa = contract.ZTUNNEL_NAMESPACE, contract.ZTUNNEL_SERVICE_ACCOUNT
    cases = {
        "expired": (apiserver.issue_token(ns, sa, pod=ZTUNNEL_ON_A, audiences=AUDIENCE, expires_in=-10),
                    grpc.StatusCode.UNAUTHENTICATED, "invalid_credential"),
        "for the API server": (apiserver.issue_token(ns, sa, pod=ZTUNNEL_ON_A),
                               grpc.StatusCode.UNAUTHENTICATED, "invalid_credential"),
        "forged": ("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA", grpc.StatusCode.UNAUTHENTICATED,
                   "invalid_credential"),
        "of a workload": (apiserver.issue_token("default", "sleep", pod="sleep-5644bdc767-2dfg7", audiences=AUDIENCE),
                          grpc.StatusCode.PERMISSION_DENIED, "not_a_node_credential"),
        "not bound to a pod": (apiserver.issue_token(ns, sa, audiences=AUDIENCE),
                               grpc.StatusCode.PERMISSION_DENIED, "not_a_node_credential"),
        "none": (None, grpc.StatusCode.UNAUTHENTICATED, "no_credential"),
    }
    for what, (token, code, reason) in cases.items():
        before = denied(plane, reason)
        got, message = await refused(connect(token, None))
        assert got == code, (what, message)
        assert denied(plane, reason) == before + 1, what
    assert plane.metrics.value("zpilot_xds_responses_total", type="CDS", mode="sotw") == 0


async def test_a_token_of_a_deleted_pod_is_refused(plane, connect, apiserver):
    token = apiserver.issue_token(contract.ZTUNNEL_NAMESPACE, contract.ZTUNNEL_SERVICE_ACCOUNT, pod=ZTUNNEL_ON_A,
                                  audiences=AUDIENCE)
    apiserver.delete("pods", ZTUNNEL_ON_A, contract.ZTUNNEL_NAMESPACE)
    code, _ = await refused(connect(token, None))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_an_api_server_that_cannot_be_asked_is_unavailable_not_a_verdict(plane, connect, apiserver):
    token = apiserver.issue_token(contract.ZTUNNEL_NAMESPACE, contract.ZTUNNEL_SERVICE_ACCOUNT, pod=ZTUNNEL_ON_A,
                                  audiences=AUDIENCE)
    apiserver.inject(status=500, times=1, verb="create")
    code, _ = await refused(connect(token, None))
    assert code == grpc.StatusCode.UNAVAILABLE and denied(plane, "review_unavailable") == 1
    served = connect(token, NODE_A)  # the failure was not cached: the next stream is reviewed again
    assert (await served.recv()).resources


async def test_reviews_are_cached_briefly_boundedly_and_never_past_the_token_s_expiry(apiserver):
    seed_article(apiserver)
    now = [1000.0]

    def token(**kw) -> str:
        return apiserver.issue_token(contract.ZTUNNEL_NAMESPACE, contract.ZTUNNEL_SERVICE_ACCOUNT, pod=ZTUNNEL_ON_A,
                                     audiences=AUDIENCE, **kw)

    async with api_client(apiserver) as api:
        reviewer = TokenReviewer(api, ttl=60, max_entries=2, clock=lambda: now[0])
        tokens = [token() for _ in range(3)]
        for t in tokens:
            assert (await reviewer.verify(t)).node == NODE_A
        assert reviewer.reviews == 3
        await reviewer.verify(tokens[2])
        assert reviewer.reviews == 3  # cached
        await reviewer.verify(tokens[0])
        assert reviewer.reviews == 4  # evicted: at most two entries
        now[0] += 61
        await reviewer.verify(tokens[0])
        assert reviewer.reviews == 5  # the cache holds a verdict for a minute at most
        short = token(expires_in=30)
        await reviewer.verify(short)
        now[0] += 31
        await reviewer.verify(short)
        assert reviewer.reviews == 7  # not past the token's own expiry, though the minute is not over

"""The trust bundle published in a ConfigMap, against the in-process API server: created once, left
alone while equal, replaced (its key only) when the bundle changes, two replicas racing end with it,
and a token allowed exactly the exported PERMISSIONS suffices."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.kube.apiserver.fixtures import api_client, apiserver  # noqa: F401 (the fixture)
from tests.kube.apiserver.objects import make_namespace
from zpilot.certs import CertificateAuthority
from zpilot.certs.kube_secret import MANAGED_BY, SecretName
from zpilot.certs.trust_bundle_configmap import (
    BUNDLE_KEY,
    PERMISSIONS,
    TrustBundlePublisher,
    TrustBundleUnavailable,
)

CONFIGMAP = SecretName("istio-system", "zpilot-ca-root")


@pytest.fixture
def server(apiserver):  # noqa: F811
    apiserver.create(make_namespace("istio-system"))
    return apiserver


def published(server) -> dict:
    return server.get("configmaps", CONFIGMAP.name, CONFIGMAP.namespace)


def writes(server) -> list[str]:
    return [r.verb for r in server.requests if r.resource == "configmaps" and r.verb in ("create", "update")]


async def test_created_then_left_alone_while_equal_then_replaced_when_the_bundle_changes(server):
    ca = CertificateAuthority.generate()
    async with api_client(server, token=server.add_token(allow=set(PERMISSIONS), user="zpilot")) as api:
        assert await TrustBundlePublisher(api, CONFIGMAP).publish(ca.trust_bundle_pem()) is True
        configmap = published(server)
        assert configmap["data"] == {BUNDLE_KEY: ca.trust_bundle_pem().decode()}
        assert configmap["metadata"]["labels"] == MANAGED_BY
        # Another replica (same CA): reads, finds it equal, writes nothing.
        assert await TrustBundlePublisher(api, CONFIGMAP).publish(ca.trust_bundle_pem()) is False
        assert writes(server) == ["create"]
        # Someone's own key in it stays; a new root (the bundle changed) replaces ours.
        server.update({**published(server), "data": {**published(server)["data"], "note": "kept"}})
        other = CertificateAuthority.generate()
        assert await TrustBundlePublisher(api, CONFIGMAP).publish(other.trust_bundle_pem()) is True
        assert published(server)["data"] == {BUNDLE_KEY: other.trust_bundle_pem().decode(), "note": "kept"}
    assert writes(server) == ["create", "update"]
    refused = [(r.verb, r.status) for r in server.requests if r.resource == "configmaps" and r.status >= 400]
    assert refused == [("get", 404)]  # only the first look, before it existed


async def test_replicas_racing_end_with_the_bundle(server):
    ca = CertificateAuthority.generate()
    async with api_client(server) as api:
        results = await asyncio.gather(*(TrustBundlePublisher(api, CONFIGMAP).publish(ca.trust_bundle_pem())
                                         for _ in range(4)))
    assert published(server)["data"][BUNDLE_KEY] == ca.trust_bundle_pem().decode()
    assert results.count(True) >= 1 and writes(server).count("create") >= 1


async def test_forbidden_says_which_server_which_configmap_and_what_rbac_is_needed(server):
    ca = CertificateAuthority.generate()
    token = server.add_token(allow={("get", "configmaps")}, user="reader")
    async with api_client(server, token=token) as api:
        with pytest.raises(TrustBundleUnavailable) as refused:
            await TrustBundlePublisher(api, CONFIGMAP).publish(ca.trust_bundle_pem())
    message = str(refused.value)
    assert message.startswith(f"{server.url}: create ConfigMap istio-system/zpilot-ca-root: 403")
    assert "needs get, create, update on configmaps in namespace istio-system" in message


async def test_keep_published_retries_and_follows_changes(server, caplog):
    caplog.set_level(logging.ERROR, logger="zpilot.certs.trust_bundle")
    bundle = [CertificateAuthority.generate().trust_bundle_pem()]
    changed = asyncio.Event()
    server.inject(status=500, verb="get", resource="configmaps", times=1)
    async with api_client(server) as api:
        task = asyncio.create_task(TrustBundlePublisher(api, CONFIGMAP).keep_published(lambda: bundle[0], changed))
        try:
            async def holds(expected: bytes) -> None:
                for _ in range(200):
                    current = server.list("configmaps", "istio-system")
                    if current and current[0]["data"][BUNDLE_KEY] == expected.decode():
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("the ConfigMap never held the bundle")

            await holds(bundle[0])
            assert "cannot publish the trust bundle" in caplog.text and ": 500 Internal error" in caplog.text
            bundle[0] = CertificateAuthority.generate().trust_bundle_pem()
            changed.set()
            await holds(bundle[0])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

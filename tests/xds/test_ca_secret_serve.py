"""``zpilot serve`` with its CA in a Kubernetes Secret (in-process runtime, in-process API server).

A changed Secret reaches the ztunnels without a restart (the trust bundle they are sent changes),
a broken one keeps the current CA, and an API server that refuses keeps serve not ready, retrying,
until it is allowed.
"""

from __future__ import annotations

import asyncio
import base64
import logging

from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from tests.kube.apiserver.objects import make_namespace
from zpilot.certs.ca import new_root_files, utc_now
from zpilot.certs.kube_secret import SecretName
from zpilot.certs.xds_credentials import issue_node_credential
from zpilot.kube.directory import ManifestDirectorySource
from zpilot.runtime.control_plane import DebugOptions
from zpilot.kube.credentials import Credentials
from zpilot.runtime.serve import ServeRuntime, ServeSettings
from zpilot.translators import TranslateOptions
from zpilot.xds.order import SECRET_TYPE
from zpilot.xds.server import ServerOptions

from .ads_client import AdsClient, tls_credentials
from .envoy_util import NODE_A, eventually, random_loopback
from .test_serve_runtime import ready_status

SECRET = SecretName("istio-system", "zpilot-ca")


def trust_bundle(response) -> bytes:
    [resource] = response.resources
    return Secret.FromString(resource.value).validation_context.trusted_ca.inline_bytes


def replace_root(server, cert_pem: bytes, key_pem: bytes) -> None:
    current = server.get("secrets", SECRET.name, SECRET.namespace)
    data = {"ca-cert.pem": cert_pem, "ca-key.pem": key_pem}
    server.update({**current, "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})


class Running:
    """A ServeRuntime on the example manifests with --ca-secret, run until :meth:`stop`."""

    def __init__(self, server, manifests, *, kubeconfig=None, trust_bundle_configmap=None) -> None:
        settings = ServeSettings(
            xds=ServerOptions(host="127.0.0.1", port=0), debug=DebugOptions(port=0), metrics=None,
            translate=TranslateOptions(bind_address=random_loopback()),
            ca_secret=SECRET, cluster=Credentials(kubeconfig=kubeconfig or server.kubeconfig_path),
            trust_bundle_configmap=trust_bundle_configmap,
        )
        self.runtime = ServeRuntime(settings, ManifestDirectorySource(manifests, quiet=0.05))
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.runtime.run(self.stop_event))

    async def debug_port(self) -> int:
        async def up():
            assert self.runtime.plane is not None and self.runtime.plane.debug_port is not None
            return self.runtime.plane.debug_port

        return await eventually(up, 10)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        port = await self.debug_port()

        async def ready():
            assert await ready_status(port) == 200
            return True

        await eventually(ready, timeout)

    async def stop(self) -> int:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, 10)


async def test_a_changed_secret_reaches_the_ztunnels_without_restart_and_a_broken_one_keeps_the_ca(
        apiserver, manifests, caplog):
    apiserver.create(make_namespace("istio-system"))
    serve = Running(apiserver, manifests)
    client = None
    try:
        await serve.wait_ready()
        ca = serve.runtime.plane.identities.ca  # ADS is mutual TLS: the node's credential from the Secret's CA
        client = AdsClient(serve.runtime.plane.xds_port,
                           credentials=tls_credentials(ca.trust_bundle_pem(), issue_node_credential(ca, NODE_A)))
        client.request(SECRET_TYPE, names=["ROOTCA"], node_name=NODE_A)
        first = await client.recv()
        created = apiserver.get("secrets", SECRET.name, SECRET.namespace)
        assert trust_bundle(first) == base64.b64decode(created["data"]["root-cert.pem"])
        client.request(SECRET_TYPE, names=["ROOTCA"], nonce=first.nonce, version=first.version_info)
        await apiserver.wait_for_watchers("secrets", 1)

        new_root = new_root_files("cluster.local", utc_now())
        replace_root(apiserver, new_root.cert_pem, new_root.key_pem)
        pushed = await asyncio.wait_for(client.recv(), 10)
        assert trust_bundle(pushed) == new_root.cert_pem  # the old root is gone: the Secret no longer names it
        identities = len(serve.runtime.plane.identities)
        assert identities > 0  # every workload certificate was signed by the old key: all re-issued
        assert f"CA reloaded: {identities} identities re-issued, trust bundle changed; pushing" in caplog.text
        client.request(SECRET_TYPE, names=["ROOTCA"], nonce=pushed.nonce, version=pushed.version_info)

        replace_root(apiserver, new_root.cert_pem, b"-----BEGIN PRIVATE KEY-----\nbroken\n")

        async def refused():
            assert "CA reload failed; keeping the current CA: Secret istio-system/zpilot-ca key ca-key.pem" \
                in caplog.text
            return True

        await eventually(refused, 10)
        await client.expect_silence()
        assert x509.load_pem_x509_certificate(serve.runtime.plane.identities.trust_bundle_pem()) == \
            x509.load_pem_x509_certificate(new_root.cert_pem)
    finally:
        if client is not None:
            await client.close()
        assert await serve.stop() == 0


async def test_a_refusing_api_server_keeps_serve_not_ready_and_retrying_until_allowed(apiserver, manifests, caplog):
    """403 on create: a clear error naming the server, the Secret and the RBAC needed; no ADS, 503 on
    readiness; retried with growing delays; once the API server allows it, serve starts (no restart)."""
    apiserver.create(make_namespace("istio-system"))
    apiserver.inject(status=403, verb="create", resource="secrets", times=3)
    caplog.set_level(logging.ERROR, "zpilot.serve")
    serve = Running(apiserver, manifests)
    try:
        port = await serve.debug_port()

        async def refused_twice():
            assert caplog.text.count("cannot read the CA:") >= 2
            return True

        await eventually(refused_twice, 10)
        assert await ready_status(port) == 503 and serve.runtime.plane.xds_port is None
        line = next(r.getMessage() for r in caplog.records if "cannot read the CA" in r.getMessage())
        assert f"{apiserver.url}: create Secret istio-system/zpilot-ca: 403" in line
        assert "needs list, watch, create on secrets in namespace istio-system" in line
        assert "not ready, retrying in" in line

        await serve.wait_ready()
        creates = [r for r in apiserver.requests if r.verb == "create" and r.resource == "secrets"]
        assert [r.status for r in creates] == [403, 403, 403, 201]
        gaps = [b.time - a.time for a, b in zip(creates, creates[1:])]
        assert gaps[0] >= 0.4 and gaps[2] > gaps[0]  # backing off, not spinning
    finally:
        assert await serve.stop() == 0


async def test_stopping_while_waiting_for_the_secret_exits_cleanly(apiserver, manifests):
    apiserver.create(make_namespace("istio-system"))
    apiserver.inject(status=500, verb="list", resource="secrets", times=100)
    serve = Running(apiserver, manifests)
    await serve.debug_port()
    assert await serve.stop() == 0


async def test_the_trust_bundle_configmap_follows_the_ca_secret(apiserver, manifests):
    """--trust-bundle-configmap: published once the CA is read, and again when a changed Secret changes it."""
    apiserver.create(make_namespace("istio-system"))
    configmap = SecretName("istio-system", "zpilot-ca-root")
    serve = Running(apiserver, manifests, trust_bundle_configmap=configmap)

    async def holds(bundle: bytes):
        found = apiserver.list("configmaps", "istio-system")
        assert found and found[0]["data"]["root-cert.pem"] == bundle.decode()
        return True

    try:
        await serve.wait_ready()
        await eventually(lambda: holds(serve.runtime.plane.identities.ca.trust_bundle_pem()), 10)
        await apiserver.wait_for_watchers("secrets", 1)
        new_root = new_root_files("cluster.local", utc_now())
        replace_root(apiserver, new_root.cert_pem, new_root.key_pem)
        await eventually(lambda: holds(new_root.cert_pem), 10)
    finally:
        assert await serve.stop() == 0

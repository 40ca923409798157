"""A kubeconfig user's client certificate and key given as files, rotated on disk, picked up by a running process
as client-go picks them up (``zpilot.kube.client_tls``), against the in-process API server, which knows a user by
the client certificate it presents. zpilot read them once and presented the first pair until restarted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import AsyncIterator

import pytest
from cryptography.hazmat.primitives import serialization
from kubernetes_asyncio import client

from zpilot.kube import client as kube_client
from zpilot.kube.client import api_client
from zpilot.kube.credentials import Credentials
from zpilot.kube.kubeconfig import MAX_PEM_BYTES

from .apiserver import ApiServer, seed_article
from .apiserver.objects import make_pod
from .test_kubeconfig_tls import _holding, _with_user
from .watch_util import Follower, pod_names, source_for

NODE = "gke-jimmy-cluster-default-pool-d5041909-d10i"


@pytest.fixture
def every_request(monkeypatch):
    """The files read again before every request, and at once after a refused pair (not each minute)."""
    monkeypatch.setattr(kube_client, "CLIENT_CERTIFICATE_REREAD_SECONDS", 0.0)
    monkeypatch.setattr(kube_client, "CLIENT_CERTIFICATE_RETRY_SECONDS", 0.0)


class Files:
    """The user's client certificate and key files, written as a renewer writes them."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.cert, self.key = directory / "client.crt", directory / "client.key"

    def write(self, cert: bytes | None = None, key: bytes | None = None) -> None:
        if cert is not None:
            self.cert.write_bytes(cert)
        if key is not None:
            self.key.write_bytes(key)
            self.key.chmod(0o600)


def _kubeconfig(server: ApiServer, tmp_path: Path, files: Files) -> Path:
    return _with_user(server, tmp_path / "kubeconfig",
                      {"client-certificate": str(files.cert), "client-key": str(files.key)})


@contextlib.asynccontextmanager
async def _watching_as_first(tmp_path: Path) -> AsyncIterator[tuple[ApiServer, Files, Follower]]:
    """The article's cluster served with Istio's CRDs (so that no discovery poll for them is in flight as
    the pair rotates), followed by a watch source as user "first" (its files: ``Files``), every kind's watch
    open: no request of the first pair is in flight when a test rotates it (one that is, as any request
    at a revocation, is refused once and retried)."""
    with ApiServer(tmp_path / "api", bootstrap=False, controllers=False) as server:
        seed_article(server)
        server.install_istio_crds()
        files = Files(tmp_path / "pki")
        files.write(*server.issue_client_certificate("first"))
        credentials = Credentials(kubeconfig=_kubeconfig(server, tmp_path, files), environ={})
        async with Follower(source_for(server, credentials=credentials)) as follower:
            await follower.until(lambda m: True)
            for kind in WATCHED:
                await server.wait_for_watchers(kind)
            yield server, files, follower


async def whoami(api: client.ApiClient, server: ApiServer) -> str:
    await client.CoreV1Api(api).list_namespace()
    return server.requests[-1].user


def plural(request) -> str:
    return request.resource.split(".")[0]


#: What the watch source watches, once the Istio CRDs are served.
WATCHED = ("namespaces", "nodes", "serviceaccounts", "pods", "services", "endpointslices", "authorizationpolicies",
           "peerauthentications")


async def test_a_rotated_client_certificate_is_presented_mid_watch_without_a_restart(
        tmp_path, temp_dir, every_request):
    """The watch source (``zpilot serve``'s and the CNI agent's) runs as user "first"; the files are rotated to
    "second" while every watch is open, and the server then stops accepting "first" (its certificate revoked or
    expired). Watches cut after that resume as "second", and a change made then reaches the model: before, they
    were refused (401) with the first pair until the process was restarted. The new key is in no temp file."""
    async with _watching_as_first(tmp_path) as (server, files, follower):
        assert {r.user for r in server.requests} == {"first"}
        cert, key = server.issue_client_certificate("second")
        files.write(cert, key)
        server.auth.remove_certificate_user("first")
        since = len(server.requests)
        server.drop_watches()  # (as a broken connection, or the watches' own end, would)
        server.create(make_pod("web-rotated", ip="10.4.4.40", node=NODE, labels={"app": "web"}))
        await follower.until(lambda m: "web-rotated" in pod_names(m))
    after = server.requests[since:]  # (recorded as they end: the watches cut were "first"'s)
    assert not [r for r in after if r.status in (401, 403)], after
    assert any(r.user == "second" for r in after) and {r.verb for r in after if r.user == "first"} <= {"watch"}
    assert _holding(temp_dir, key, cert) == [] and list(temp_dir.iterdir()) == []


async def test_a_rotated_pair_that_cannot_be_used_is_refused_and_the_last_good_kept(
        apiserver, tmp_path, every_request, caplog):
    """What a renewer leaves between its two writes, or gets wrong, is refused with a warning naming the files
    and why; the last good pair goes on being presented (requests still succeed), and a good pair is taken."""
    caplog.set_level(logging.INFO, logger="zpilot.kube.client_tls")
    first_cert, first_key = apiserver.issue_client_certificate("first")
    second_cert, second_key = apiserver.issue_client_certificate("second")
    files = Files(tmp_path / "pki")
    files.write(first_cert, first_key)
    encrypted = serialization.load_pem_private_key(second_key, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"))
    async with await api_client(_kubeconfig(apiserver, tmp_path, files), environ={}) as api:
        assert await whoami(api, apiserver) == "first"
        refusals = [
            ((second_cert, None), "its client certificate and key are not a PEM pair that goes together"),  # half
            ((b"not a certificate", first_key), "not a PEM pair that goes together ([SSL] PEM lib"),
            ((second_cert, encrypted), "its client key is encrypted"),
            ((b"x" * (MAX_PEM_BYTES + 1), None), f"client-certificate {files.cert}: larger than 1 MiB"),
        ]
        for (cert, key), why in refusals:
            caplog.clear()
            files.write(cert, key)
            assert await whoami(api, apiserver) == "first", why
            refused = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(refused) == 1 and why in refused[0].getMessage(), (why, caplog.text)
            assert f"read again from {files.cert} and {files.key} are refused" in refused[0].getMessage()
            assert "the last good ones are presented meanwhile" in refused[0].getMessage()
            assert b"PRIVATE KEY" not in refused[0].getMessage().encode()
        files.write(first_cert)
        files.key.unlink()
        assert await whoami(api, apiserver) == "first"
        assert f"client-key {files.key}: No such file or directory" in caplog.text
        caplog.clear()
        files.write(second_cert, second_key)
        assert await whoami(api, apiserver) == "second"
        assert f"a new client certificate read from {files.cert}, valid until " in caplog.text
        assert await whoami(api, apiserver) == "second"  # (read again, unchanged: nothing logged)
        assert caplog.text.count("a new client certificate") == 1


def test_the_files_are_read_again_once_due_and_soon_after_a_refusal(apiserver, tmp_path):
    """Each ``reread_seconds`` (a minute; client-go: five), not at every request; after a refused pair (a
    rotation half written) ``retry_seconds``, so the whole pair is taken soon after its second file."""
    from zpilot.kube.client_tls import ClientTls
    from zpilot.kube.key_material import ssl_context
    from zpilot.kube.kubeconfig import TlsMaterial

    now = [0.0]
    made: list[TlsMaterial] = []

    def make(material: TlsMaterial):
        context = ssl_context(material, client.Configuration(), cluster="c", user="u")
        made.append(material)
        return context

    first_cert, first_key = apiserver.issue_client_certificate("first")
    second_cert, second_key = apiserver.issue_client_certificate("second")
    files = Files(tmp_path / "pki")
    files.write(first_cert, first_key)
    tls = ClientTls(TlsMaterial(apiserver.certs.ca_pem, first_cert, first_key), make, user="u",
                    files=(str(files.cert), str(files.key)), reread_seconds=60.0, retry_seconds=10.0,
                    clock=lambda: now[0])
    first = tls.context()
    files.write(second_cert)  # half a rotation
    now[0] = 59.0
    assert tls.context() is first and len(made) == 1  # not due
    now[0] = 60.0
    assert tls.context() is first and len(made) == 1  # due: the half is refused
    files.write(key=second_key)
    now[0] = 69.0
    assert tls.context() is first  # the retry not yet due
    now[0] = 70.0
    second = tls.context()
    assert second is not first and made[-1].client_certificate == second_cert
    now[0] = 129.0
    assert tls.context() is second and len(made) == 2


async def test_the_watches_open_at_a_rotation_are_opened_again_with_the_new_pair_from_where_they_were(
        tmp_path, every_request):
    """client-go closes the connections made with the old pair once it takes a new one, and its watches open
    again with the new one. Here too: the pair is rotated while every watch is open and nothing else is asked
    (no request to take it before), and each watch is opened again as "second" without waiting for its end
    (60 to 119 s: it went on as "first" until then, and after "first" is revoked the server went on sending to
    it), from the version it had reached (no list again, no failure), losing no event: a pod created as the
    pair rotates, and one after, both reach the model."""
    async with _watching_as_first(tmp_path) as (server, files, follower):
        since = len(server.requests)
        files.write(*server.issue_client_certificate("second"))
        server.create(make_pod("web-during", ip="10.4.4.41", node=NODE, labels={"app": "web"}))

        async def reopened() -> None:
            while {plural(r) for r in server.requests[since:] if r.user == "second"} != set(WATCHED):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(reopened(), 10)
        server.auth.remove_certificate_user("first")
        server.create(make_pod("web-after", ip="10.4.4.42", node=NODE, labels={"app": "web"}))
        await follower.until(lambda m: {"web-during", "web-after"} <= pod_names(m))
    after = server.requests[since:]
    assert not [r for r in after if r.status != 200], after
    assert {r.verb for r in after} == {"watch"}, after  # resumed, not listed again
    assert {r.user for r in after} == {"second"} and all(int(r.query["resourceVersion"]) > 0 for r in after)
    assert sorted(map(plural, after)) == sorted(WATCHED), after  # each once

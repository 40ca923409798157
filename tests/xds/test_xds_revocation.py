"""Revoked node credentials (``zpilot revoke``), with a Python gRPC client: refused when a stream opens,
streams already open with them ended when the CA directory's list changes under the running server, a
node given a fresh credential afterwards served again, and every other stream left as it was."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.certs.revocation import REVOCATIONS_NAME, cut_after, revoke_node, revoke_serial, update_directory
from zpilot.certs.xds_credentials import issue_node_credential
from zpilot.model.index import MeshIndex
from zpilot.runtime.control_plane import ControlPlane
from zpilot.xds.auth import RepeatedRefusals
from zpilot.xds.order import CLUSTER_TYPE
from zpilot.xds.revocations import DirectoryRevocations
from zpilot.xds.security import XdsSecurity

from .ads_client import AdsClient, tls_credentials
from .conftest import load_index
from .e2e_util import debug_json
from .envoy_util import NODE_A, NODE_B

DAY = timedelta(days=1)


@dataclasses.dataclass
class Served:
    plane: ControlPlane
    ca_dir: Path
    revocations: DirectoryRevocations


@pytest.fixture
async def served(make_plane, tmp_path: Path):
    """A control plane over mutual TLS whose CA directory's revocation list is polled every 50 ms."""
    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    watcher = DirectoryRevocations(ca_dir, interval=0.05)
    watcher.load()
    plane = await make_plane(security=lambda authority: XdsSecurity.mutual_tls(authority, revocations=watcher.revocations),
                             identities=IdentityCache(CertificateAuthority.load(ca_dir)))
    follow = asyncio.create_task(watcher.follow())
    yield Served(plane, ca_dir, watcher)
    follow.cancel()
    await asyncio.gather(follow, return_exceptions=True)


def revoked_count(plane: ControlPlane) -> float:
    return plane.metrics.value("zpilot_xds_access_denied_total", reason="revoked_credential")


async def ended(client: AdsClient) -> tuple[grpc.StatusCode, str]:
    """How the stream ended: no response may come before its end."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        response = await client.recv(timeout=10)
        raise AssertionError(f"a revoked credential got a response: {response.type_url}")
    return error.value.code(), error.value.details() or ""


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_revoking_a_node_ends_its_open_streams_refuses_its_old_credentials_and_serves_a_fresh_one(
        served, tls_clients, manifests, caplog):
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    plane, ca = served.plane, served.plane.identities.ca
    bundle = ca.trust_bundle_pem()
    stolen = issue_node_credential(ca, NODE_A)  # the node's credential, and the attacker's copy of it
    sotw = tls_clients(plane.xds_port, stolen, bundle)
    sotw.request(CLUSTER_TYPE, node_name=NODE_A)
    delta = tls_clients(plane.xds_port, stolen, bundle, delta=True)
    delta.delta_request(CLUSTER_TYPE, node_name=NODE_A)
    other = tls_clients(plane.xds_port, issue_node_credential(ca, NODE_B), bundle)
    other.request(CLUSTER_TYPE, node_name=NODE_B)
    first = {"sotw": await sotw.recv(), "delta": await delta.recv(), "other": await other.recv()}
    silent = tls_clients(plane.xds_port, stolen, bundle)  # authenticated, its first request not sent yet
    await until(lambda: plane.ads.open_streams == 4)

    now = datetime.now(timezone.utc)
    update_directory(served.ca_dir, lambda current: revoke_node(current, NODE_A, now, DAY))
    for client in (sotw, delta, silent):
        code, details = await ended(client)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert f"node {NODE_A}" in details and "revoked" in details and "the open stream is closed" in details
    assert revoked_count(plane) == 3
    await until(lambda: plane.ads.open_streams == 1)
    assert {c["node"] for c in await debug_json(plane.debug_port, "/debug/connections")} == {NODE_B}

    # the stolen copy is refused when it connects again, before anything is read or sent; every refusal is
    # counted, and one line logged for a credential retrying in a loop
    for _ in range(3):
        again = tls_clients(plane.xds_port, stolen, bundle)
        again.request(CLUSTER_TYPE, node_name=NODE_A)
        code, details = await ended(again)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "is revoked" in details, (code, details[:500])
        assert "the open stream is closed" not in details
    assert revoked_count(plane) == 6
    lines = [r.getMessage() for r in caplog.records if "refused (revoked_credential)" in r.getMessage()]
    assert len([line for line in lines if "the open stream is closed" in line]) == 3  # one per stream ended
    assert len([line for line in lines if "the open stream is closed" not in line]) == 1

    # the other node's stream is still served: a model change reaches it
    other.request(CLUSTER_TYPE, nonce=first["other"].nonce, version=first["other"].version_info)
    index = load_index(manifests)
    await plane.update(MeshIndex.build(dataclasses.replace(
        index.cluster, services=tuple(s for s in index.cluster.services if s.name != "productpage"))))
    assert (await other.recv()).type_url == CLUSTER_TYPE

    # the node re-bootstrapped once the revocation's second is over: served again
    await asyncio.sleep(max(0.0, (cut_after(now) - datetime.now(timezone.utc)).total_seconds()))
    fresh = tls_clients(plane.xds_port, issue_node_credential(ca, NODE_A), bundle)
    fresh.request(CLUSTER_TYPE, node_name=NODE_A)
    assert (await fresh.recv()).resources
    assert revoked_count(plane) == 6


def test_a_refusal_repeated_for_one_credential_is_logged_once_an_interval_with_a_count():
    now = [0.0]
    refusals = RepeatedRefusals(interval=60, keys=2, clock=lambda: now[0])
    assert refusals.log(None) == 0 and refusals.log(None) == 0  # no key: every one logged
    assert refusals.log("ab") == 0
    assert refusals.log("ab") is None and refusals.log("ab") is None
    now[0] = 61
    assert refusals.log("ab") == 2  # logged again, saying two were not
    refusals.log("cd"), refusals.log("ef")  # bounded: "ab" forgotten, its next refusal logged
    assert refusals.log("ab") == 0


async def test_a_serial_revocation_ends_that_certificate_s_streams_only(served, tls_clients):
    plane, ca = served.plane, served.plane.identities.ca
    bundle = ca.trust_bundle_pem()
    stolen, kept = issue_node_credential(ca, NODE_A), issue_node_credential(ca, NODE_A)
    streams = {}
    for name, credential in (("stolen", stolen), ("kept", kept)):
        streams[name] = tls_clients(plane.xds_port, credential, bundle)
        streams[name].request(CLUSTER_TYPE, node_name=NODE_A)
        await streams[name].recv()
    update_directory(served.ca_dir, lambda current: revoke_serial(current, stolen.serial, datetime.now(timezone.utc), DAY))
    code, details = await ended(streams["stolen"])
    assert code == grpc.StatusCode.UNAUTHENTICATED and "is revoked" in details
    await streams["kept"].expect_silence(0.3)  # still open, nothing to send
    assert plane.ads.open_streams == 1 and revoked_count(plane) == 1


async def test_a_list_that_turns_unreadable_is_logged_once_and_the_last_good_one_stays(served, tls_clients, caplog):
    caplog.set_level(logging.INFO, logger="zpilot.xds.auth")
    plane, ca = served.plane, served.plane.identities.ca
    bundle = ca.trust_bundle_pem()
    stolen = issue_node_credential(ca, NODE_A)
    update_directory(served.ca_dir, lambda current: revoke_node(current, NODE_A, datetime.now(timezone.utc), DAY))
    await until(lambda: len(served.revocations.revocations.current) == 1)
    (served.ca_dir / REVOCATIONS_NAME).write_text("{ not json")
    await asyncio.sleep(0.5)  # ten polls
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not JSON" in errors[0].getMessage() and "stays in force" in errors[0].getMessage()
    refused = tls_clients(plane.xds_port, stolen, bundle)
    refused.request(CLUSTER_TYPE, node_name=NODE_A)
    assert (await ended(refused))[0] == grpc.StatusCode.UNAUTHENTICATED
    # the list emptied (the file removed): the credential is served again
    (served.ca_dir / REVOCATIONS_NAME).unlink()
    await until(lambda: len(served.revocations.revocations.current) == 0)
    served_again = tls_clients(plane.xds_port, stolen, bundle)
    served_again.request(CLUSTER_TYPE, node_name=NODE_A)
    assert (await served_again.recv()).resources


async def test_zpilot_revoke_on_the_ca_secret_reaches_a_running_serve_through_its_watch(apiserver, manifests, caplog):
    """The whole path with the CA in a Secret: ``zpilot revoke --ca-secret`` (the command, against the API
    server) ends the open stream of a running ``zpilot serve``, whose CA is not reloaded for it."""
    import subprocess
    import sys

    from tests.kube.apiserver.objects import make_namespace

    from .test_ca_secret_serve import SECRET, Running

    caplog.set_level(logging.INFO, logger="zpilot")
    apiserver.create(make_namespace("istio-system"))
    serve = Running(apiserver, manifests)
    client = None
    try:
        await serve.wait_ready()
        plane = serve.runtime.plane
        ca = plane.identities.ca
        credential = issue_node_credential(ca, NODE_A)
        client = AdsClient(plane.xds_port, credentials=tls_credentials(ca.trust_bundle_pem(), credential))
        client.request(CLUSTER_TYPE, node_name=NODE_A)
        await client.recv()
        await apiserver.wait_for_watchers("secrets", 1)
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "zpilot.cli", "revoke", "--ca-secret", str(SECRET),
            "--kubeconfig", str(apiserver.kubeconfig_path), "--node", NODE_A], capture_output=True, text=True,
            timeout=60)
        assert done.returncode == 0, done.stderr
        code, details = await ended(client)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "the open stream is closed" in details
        assert revoked_count(plane) == 1
        assert "reloading the CA" not in caplog.text  # a revocation is not a CA change
    finally:
        if client is not None:
            await client.close()
        assert await serve.stop() == 0


async def test_serve_does_not_start_on_an_unreadable_revocation_list(manifests, tmp_path, caplog):
    from zpilot.kube.directory import ManifestDirectorySource
    from zpilot.runtime.control_plane import DebugOptions
    from zpilot.runtime.serve import ServeRuntime, ServeSettings
    from zpilot.xds.server import ServerOptions

    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    (ca_dir / REVOCATIONS_NAME).write_text('{"version": 1, "revoked": [{"serial": "zz", "until": "2030-01-01Z"}]}')
    settings = ServeSettings(xds=ServerOptions(host="127.0.0.1", port=0), debug=DebugOptions(port=0), metrics=None,
                             ca_dir=ca_dir)
    runtime = ServeRuntime(settings, ManifestDirectorySource(manifests, quiet=0.05))
    assert await asyncio.wait_for(runtime.run(asyncio.Event()), 20) == 2
    assert f"{ca_dir / REVOCATIONS_NAME} entry 0" in caplog.text


def revocable_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("xds-revocable-") and not t.done()}


@pytest.mark.parametrize("moment", ["before_request", "answered"])
async def test_a_revocable_stream_cancelled_again_and_again_leaves_nothing_behind(served, tls_clients, moment):
    """As tests/xds/test_stream_leaks.py, for a stream that a revocation may end (it runs in a task of its own):
    gRPC cancelling its handler, at every await, leaves no stream registered, watched or waiting."""
    plane, ca = served.plane, served.plane.identities.ca
    handlers_before = {t for t in asyncio.all_tasks() if t.get_name().startswith("HandleExceptions[")}
    client = tls_clients(plane.xds_port, issue_node_credential(ca, NODE_A), ca.trust_bundle_pem())
    if moment == "answered":
        client.request(CLUSTER_TYPE, node_name=NODE_A)
        await client.recv()
    await until(lambda: len(revocable_tasks()) == 1)
    [handler] = {t for t in asyncio.all_tasks() if t.get_name().startswith("HandleExceptions[") and not t.done()} \
        - handlers_before
    for _ in range(10_000):
        if handler.done():
            break
        handler.cancel()
        await asyncio.sleep(0)
    assert handler.done()
    await until(lambda: not revocable_tasks())
    assert plane.ads._revocable == {} and len(plane.registry) == 0 and plane.cache.watcher_count() == 0


class _Aborted(Exception):
    pass


class _AbortingContext:
    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise _Aborted(code, message)


class _WokenStream:
    """A stream waiting for something to send (a push), and recording what it would write."""

    id, mode, peer, info = 1, "sotw", "ipv4:127.0.0.1:1", None

    def __init__(self) -> None:
        self.push = asyncio.Event()
        self.sent: list[str] = []

    async def run(self, requests, context) -> None:
        await self.push.wait()
        self.sent.append("a node's workload keys")
        await asyncio.Event().wait()


async def test_a_stream_woken_to_send_as_its_credential_is_revoked_sends_nothing_more():
    """The revocation ends the stream in the very turn of the loop that enforces it: a push that woke the stream
    in that same turn does not reach the revoked credential while its handler is still to wake."""
    from zpilot.certs.revocation import RevocationList
    from zpilot.certs.xds_credentials import NodeCredential
    from zpilot.xds.auth import NodeCertificateAuthenticator, Principal
    from zpilot.xds.revocations import Revocations
    from zpilot.xds.server import AdsServer

    now = datetime.now(timezone.utc)
    revocations = Revocations()
    server = AdsServer(None, security=XdsSecurity(NodeCertificateAuthenticator("cluster.local", revocations), None,
                                                  revocations))
    credential = NodeCredential(NODE_A, "0a", 10, now - DAY)
    stream = _WokenStream()
    handler = asyncio.create_task(server._run_revocable(
        stream, Principal(NODE_A, "certificate of node A", credential), None, _AbortingContext()))
    await until(lambda: len(revocable_tasks()) == 1)
    for _ in range(3):
        await asyncio.sleep(0)  # the stream waits for its push
    stream.push.set()  # woken to send ...
    revocations.replace(revoke_node(RevocationList(), NODE_A, now, DAY))  # ... as the list revoking it is enforced
    with pytest.raises(_Aborted) as aborted:
        await handler
    assert aborted.value.args[0] == grpc.StatusCode.UNAUTHENTICATED
    assert stream.sent == [] and server._revocable == {}


class _Observer:
    def access_denied(self, *args) -> None:
        pass


async def test_a_revoked_credential_retrying_is_logged_once_per_client_address(caplog):
    """The node's own ztunnel retrying with its revoked credential does not hide the stolen copy refused from
    another address; a new port of the same client (each retry has one) is still the same client."""
    from zpilot.xds.auth import REVOKED_CREDENTIAL, Denied
    from zpilot.xds.stream import deny

    caplog.set_level(logging.INFO, logger="zpilot.xds")
    serial = f"{time.monotonic_ns():x}"  # (the refusals are remembered process-wide: a key of this test's own)
    denied = Denied(grpc.StatusCode.UNAUTHENTICATED, REVOKED_CREDENTIAL, "revoked", repeat_key=serial)
    for peer in ("ipv4:10.0.0.1:40001", "ipv4:10.0.0.1:40002", "ipv4:192.0.2.7:50000", "ipv6:[2001:db8::7]:1",
                 "ipv6:[2001:db8::7]:2"):
        with pytest.raises(_Aborted):
            await deny(_AbortingContext(), _Observer(), denied, mode="sotw", peer=peer)
    logged = [r.getMessage() for r in caplog.records if "refused (revoked_credential)" in r.getMessage()]
    assert [line.split()[3] for line in logged] == ["ipv4:10.0.0.1:40001", "ipv4:192.0.2.7:50000",
                                                   "ipv6:[2001:db8::7]:1"]


async def test_an_unexpected_error_reading_the_list_is_logged_once_and_the_poll_goes_on(tmp_path, monkeypatch, caplog):
    import zpilot.xds.revocations as revocations_module
    from zpilot.certs.revocation import read_directory

    ca_dir = tmp_path / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    watcher = DirectoryRevocations(ca_dir, interval=0.02)
    watcher.load()
    follow = asyncio.create_task(watcher.follow())
    try:
        monkeypatch.setattr(revocations_module, "read_directory", lambda _dir: 1 / 0)
        update_directory(ca_dir, lambda current: revoke_serial(current, 1, datetime.now(timezone.utc), DAY))
        await asyncio.sleep(0.3)  # many polls
        assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ZeroDivisionError]
        monkeypatch.setattr(revocations_module, "read_directory", read_directory)
        update_directory(ca_dir, lambda current: revoke_serial(current, 2, datetime.now(timezone.utc), DAY))
        await until(lambda: len(watcher.revocations.current) == 2)  # the poll went on
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)

"""Authenticated ADS (``--xds-auth tls``), tried as an attacker would, with a Python gRPC client.

Every refused client must get nothing of the node it claims (no resource, no secret), be counted
when the server sees it, and leave the other streams of the server as they were.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from zpilot import contract
from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.certs.xds_credentials import issue_node_credential
from zpilot.model.index import MeshIndex
from zpilot.runtime.control_plane import ControlPlane
from zpilot.xds.order import CLUSTER_TYPE, SECRET_TYPE
from zpilot.xds.security import ServerTls, XdsSecurity

from .ads_client import AdsClient, tls_credentials
from .conftest import load_index
from .envoy_util import NODE_A, NODE_B

#: The CA's root is made two days in the past, so that certificates that expired since can be issued.
TWO_DAYS_AGO = datetime.now(timezone.utc) - timedelta(days=2)


@pytest.fixture
async def plane(make_plane, tmp_path: Path):
    """A control plane serving ADS over mutual TLS on loopback; its CA in ``tmp_path/ca``."""
    CertificateAuthority.load_or_create(tmp_path / "ca", clock=lambda: TWO_DAYS_AGO)
    return await make_plane(security=XdsSecurity.mutual_tls,
                            identities=IdentityCache(CertificateAuthority.load(tmp_path / "ca")))


def secret_names(response) -> set[str]:
    return {Secret.FromString(r.value).name for r in response.resources}


def refs(plane: ControlPlane, node: str) -> set[str]:
    snapshot = plane.cache.get_snapshot(node)
    assert snapshot is not None
    return set(snapshot.secret_refs)


async def refused(client: AdsClient) -> grpc.StatusCode:
    """The stream's error, which must come before any response."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        response = await client.recv(timeout=10)
        raise AssertionError(f"a refused client got a response: {response.type_url}")
    return error.value.code()


def denied(plane: ControlPlane, reason: str) -> float:
    return plane.metrics.value("zpilot_xds_access_denied_total", reason=reason)


async def test_a_node_credential_is_served_its_node_and_only_its_node_s_secrets(plane, tls_clients):
    ca = plane.identities.ca
    a = tls_clients(plane.xds_port, issue_node_credential(ca, NODE_A), ca.trust_bundle_pem())
    a.request(CLUSTER_TYPE, node_name=NODE_A)
    assert (await a.recv()).resources
    own, others = refs(plane, NODE_A), refs(plane, NODE_B) - refs(plane, NODE_A)
    assert others, "the example's nodes should have identities of their own"
    # Node A asks for node B's secrets as well as its own: it gets its own only.
    a.request(SECRET_TYPE, names=sorted(own | others))
    response = await a.recv()
    assert secret_names(response) == own and not secret_names(response) & others
    assert plane.metrics.value("zpilot_xds_unserved_resource_names_total", type="SDS") == len(others)


async def test_attackers_get_nothing_and_the_other_streams_carry_on(plane, tls_clients, manifests, tmp_path):
    ca = plane.identities.ca
    bundle = ca.trust_bundle_pem()
    # Two honest ztunnels, connected and served before the attacks.
    honest = {node: tls_clients(plane.xds_port, issue_node_credential(ca, node), bundle, delta=(node == NODE_B))
              for node in (NODE_A, NODE_B)}
    honest[NODE_A].request(CLUSTER_TYPE, node_name=NODE_A)
    honest[NODE_B].delta_request(CLUSTER_TYPE, node_name=NODE_B)
    first = {node: await client.recv() for node, client in honest.items()}

    yesterday_s_ca = CertificateAuthority.load(tmp_path / "ca", clock=lambda: TWO_DAYS_AGO)  # same key, old clock
    expired = issue_node_credential(yesterday_s_ca, NODE_A, timedelta(hours=1))
    assert expired.not_after < datetime.now(timezone.utc)
    foreign = CertificateAuthority.generate()
    workload = ca.issue(contract.spiffe_id("cluster.local", "default", "sleep"))

    attacks = {
        # (credential, bundle the client trusts, node claimed): what the server says, if it sees the client
        "forged node name": (issue_node_credential(ca, NODE_B), bundle, NODE_A, grpc.StatusCode.PERMISSION_DENIED),
        "another node's credential": (issue_node_credential(ca, NODE_A), bundle, NODE_B,
                                      grpc.StatusCode.PERMISSION_DENIED),
        # refused before its first request is read: it sends none, since a request would only race the
        # server's trailers, which grpc.aio's client may then report as INTERNAL (grpc/grpc#36066)
        "a workload's certificate": (workload, bundle, None, grpc.StatusCode.PERMISSION_DENIED),
        # refused in the TLS handshake: no RPC reaches the server at all
        "no credential": (None, bundle, NODE_A, grpc.StatusCode.UNAVAILABLE),
        "an expired credential": (expired, bundle, NODE_A, grpc.StatusCode.UNAVAILABLE),
        "a foreign CA's credential": (issue_node_credential(foreign, NODE_A), bundle, NODE_A,
                                      grpc.StatusCode.UNAVAILABLE),
    }
    for what, (credential, trusted, node, code) in attacks.items():
        for request in (CLUSTER_TYPE, SECRET_TYPE):
            attacker = tls_clients(plane.xds_port, credential, trusted)
            if node is not None:
                attacker.request(request, node_name=node,
                                 names=sorted(refs(plane, node)) if request == SECRET_TYPE else ())
            assert await refused(attacker) == code, what
    assert denied(plane, "node_mismatch") == 4
    assert denied(plane, "not_a_node_credential") == 2
    assert {c["node"] for c in await _connections(plane)} == {NODE_A, NODE_B}  # only the honest streams
    assert plane.metrics.value("zpilot_xds_responses_total", type="SDS", mode="sotw") == 0

    # The honest streams are still served: a model change reaches both.
    honest[NODE_A].request(CLUSTER_TYPE, nonce=first[NODE_A].nonce, version=first[NODE_A].version_info)
    honest[NODE_B].delta_request(CLUSTER_TYPE, nonce=first[NODE_B].nonce)
    index = load_index(manifests)
    await plane.update(MeshIndex.build(dataclasses.replace(
        index.cluster, services=tuple(s for s in index.cluster.services if s.name != "productpage"))))
    for node, client in honest.items():
        pushed = await client.recv()
        assert pushed.type_url == CLUSTER_TYPE, node


async def test_a_client_that_does_not_trust_the_server_s_ca_does_not_connect(plane, tls_clients):
    ca = plane.identities.ca
    stranger = tls_clients(plane.xds_port, issue_node_credential(ca, NODE_A), CertificateAuthority.generate().trust_bundle_pem())
    stranger.request(CLUSTER_TYPE, node_name=NODE_A)
    assert await refused(stranger) == grpc.StatusCode.UNAVAILABLE


async def _connections(plane: ControlPlane) -> list[dict]:
    from .e2e_util import debug_json

    return await debug_json(plane.debug_port, "/debug/connections")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def test_the_server_certificate_is_renewed_at_half_its_life_by_the_next_handshake():
    clock = Clock()
    ca = CertificateAuthority.generate(clock=clock)
    tls = ServerTls(lambda: ca, ["zpilot.istio-system.svc"], require_client_certificate=True,
                    lifetime=timedelta(hours=2))
    tls.credentials()
    first = tls.certificate
    assert tls._fetch() is None  # fresh: gRPC keeps the configuration it has
    clock.now += timedelta(minutes=59)
    assert tls._fetch() is None
    clock.now += timedelta(minutes=2)
    assert tls._fetch() is not None and tls.certificate.serial != first.serial


async def test_a_root_rotation_reaches_the_ads_port_without_a_restart(plane, tls_clients, tmp_path):
    """docs/certificates.md's rotation with ztunnels connecting during it: after SIGHUP's reload the
    server's certificate comes from the new root, node credentials of either root are accepted while
    both are trusted, and a client that trusts only the new root connects."""
    ca_dir = tmp_path / "ca"
    old = plane.identities.ca
    new_root = CertificateAuthority.load_or_create(tmp_path / "new-root")
    (ca_dir / "extra-roots.pem").write_bytes((ca_dir / "root-cert.pem").read_bytes())  # the old root: trusted
    for name in ("root-key.pem", "root-cert.pem"):
        (ca_dir / name).write_bytes((tmp_path / "new-root" / name).read_bytes())  # the new one signs
    assert await plane.reload_ca()
    new = plane.identities.ca
    assert new.fingerprint == new_root.fingerprint
    only_new = tls_clients(plane.xds_port, issue_node_credential(new, NODE_A), new_root.trust_bundle_pem())
    only_new.request(CLUSTER_TYPE, node_name=NODE_A)
    assert (await only_new.recv()).resources
    assert plane.ads.security.tls.certificate.ca_fingerprint == new.fingerprint
    still_old = tls_clients(plane.xds_port, issue_node_credential(old, NODE_B), new.trust_bundle_pem())
    still_old.request(CLUSTER_TYPE, node_name=NODE_B)
    assert (await still_old.recv()).resources
    # the old root dropped (step 5): its credentials are refused in the handshake
    (ca_dir / "extra-roots.pem").unlink()
    assert await plane.reload_ca()
    dropped = tls_clients(plane.xds_port, issue_node_credential(old, NODE_B), new.trust_bundle_pem())
    dropped.request(CLUSTER_TYPE, node_name=NODE_B)
    assert await refused(dropped) == grpc.StatusCode.UNAVAILABLE


def _tls_handshake(port: int, bundle: bytes, tmp_path: Path, credential=None) -> str:
    """One TLS connection to the ADS port with Python's ssl (a client of its own: a gRPC channel may dial again
    in the background), as a ztunnel opens it: ALPN h2, the HTTP/2 preface. Says how it ended."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    (tmp_path / "bundle.pem").write_bytes(bundle)
    context.load_verify_locations(tmp_path / "bundle.pem")
    context.set_alpn_protocols(["h2"])
    if credential is not None:
        (tmp_path / "cert.pem").write_bytes(credential.cert_chain_pem)
        (tmp_path / "key.pem").write_bytes(credential.private_key_pem)
        context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            with context.wrap_socket(sock) as tls:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                return "h2" if tls.recv(9) else "closed"  # the server's SETTINGS frame, or the refusal (TLS 1.3)
        except (ssl.SSLError, OSError):
            return "refused"


async def test_a_handshake_refused_is_counted_without_a_label(plane, tmp_path):
    """A TLS handshake refused (no client certificate, a foreign CA's, a client that does not trust the server)
    reaches no zpilot code but gRPC's certificate fetcher: each connection counts in
    ``zpilot_xds_tls_handshakes_total`` (unlabelled), and opens no stream."""
    ca = plane.identities.ca
    bundle = ca.trust_bundle_pem()
    handshakes = lambda: plane.metrics.value("zpilot_xds_tls_handshakes_total")  # noqa: E731
    before, streams = handshakes(), plane.metrics.value("zpilot_xds_streams_opened_total", mode="sotw")
    attempts = [(None, bundle), (issue_node_credential(CertificateAuthority.generate(), NODE_A), bundle),
                (issue_node_credential(ca, NODE_A), CertificateAuthority.generate().trust_bundle_pem())]
    for credential, trusted in attempts:
        assert await asyncio.to_thread(_tls_handshake, plane.xds_port, trusted, tmp_path, credential) != "h2"
    assert handshakes() == before + 3
    assert await asyncio.to_thread(_tls_handshake, plane.xds_port, bundle, tmp_path,
                                   issue_node_credential(ca, NODE_A)) == "h2"
    assert handshakes() == before + 4
    assert plane.metrics.value("zpilot_xds_streams_opened_total", mode="sotw") == streams
    [family] = [f for f in plane.metrics.registry.collect() if f.name == "zpilot_xds_tls_handshakes"]
    assert [s.labels for s in family.samples] == [{}]
    assert f"\nzpilot_xds_tls_handshakes_total {before + 4:.1f}\n".encode() in plane.metrics.render()

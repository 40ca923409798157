"""Root rotation: after the CA files change, a reload pushes the new trust bundle on open streams."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.runtime.control_plane import ControlPlane, DebugOptions
from zpilot.xds.order import SECRET_TYPE
from zpilot.xds.security import XdsSecurity
from zpilot.xds.server import ServerOptions

from .ads_client import AdsClient
from .conftest import load_index, per_node_translate
from .envoy_util import NODE_A


async def test_extra_root_reaches_rootca_and_a_broken_reload_keeps_the_ca(manifests, tmp_path, caplog):
    ca_dir = tmp_path / "ca"
    identities = IdentityCache(CertificateAuthority.load_or_create(ca_dir))
    plane = ControlPlane(xds_security=XdsSecurity.insecure(), server_options=ServerOptions(host="127.0.0.1", port=0),
                         debug_options=DebugOptions(port=0), translate=per_node_translate({}), identities=identities)
    await plane.update(load_index(manifests))
    await plane.start()
    client = AdsClient(plane.xds_port)
    try:
        client.request(SECRET_TYPE, names=["ROOTCA"], node_name=NODE_A)
        first = await client.recv()
        client.request(SECRET_TYPE, names=["ROOTCA"], nonce=first.nonce, version=first.version_info)
        assert not await plane.reload_ca()  # nothing changed on disk
        await client.expect_silence()

        new_root = CertificateAuthority.generate()
        pem = new_root.signing_certificate.public_bytes(serialization.Encoding.PEM)
        (ca_dir / "extra-roots.pem").write_bytes(pem)
        assert await plane.reload_ca()
        pushed = await client.recv()
        bundle = Secret.FromString(pushed.resources[0].value).validation_context.trusted_ca.inline_bytes
        assert pem in bundle and bundle.count(b"BEGIN CERTIFICATE") == 2

        (ca_dir / "root-key.pem").write_text("not a key")  # a broken reload keeps serving the old CA
        assert not await plane.reload_ca()
        assert "CA reload failed; keeping the current CA" in caplog.text and "root-key.pem" in caplog.text
        await client.expect_silence()
    finally:
        await client.close()
        await plane.stop()

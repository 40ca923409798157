"""Certificates are re-issued at half their lifetime and pushed over SDS on the open stream."""

from __future__ import annotations

from datetime import timedelta

from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.xds.order import SECRET_TYPE

from .ads_client import AdsClient
from .envoy_util import NODE_A

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"


async def test_rotated_certificate_is_pushed_without_reconnecting(make_plane):
    plane = await make_plane(identities=IdentityCache(CertificateAuthority.generate(), lifetime=timedelta(seconds=2)))
    client = AdsClient(plane.xds_port)
    try:
        [name] = [n for n in plane.cache.get_snapshot(NODE_A).resources(SECRET_TYPE).items
                  if n.split("~")[0] == SLEEP_ID]  # by identity (linear) or by pod (article)
        client.request(SECRET_TYPE, names=[name], node_name=NODE_A)
        first = await client.recv()
        client.request(SECRET_TYPE, names=[name], nonce=first.nonce, version=first.version_info)
        rotated = await client.recv(timeout=5.0)  # renewal is due after half of the 2 s lifetime
        assert rotated.version_info != first.version_info
        assert rotated.resources[0].value != first.resources[0].value
        assert len(plane.registry) == 1  # same stream
    finally:
        await client.close()

"""Authenticated ADS with real Envoys: ztunnels bootstrapped by ``zpilot bootstrap``, impostors that get
nothing, credentials rotated under a running Envoy and across restarts of either side. In the default
outbound layout only: who a stream is, and what it may be sent, does not depend on the layout (the other
real-Envoy tests run the config itself with both)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.kube.apiserver import seed_article
from tests.kube.apiserver.fixtures import api_client
from zpilot import contract
from zpilot.certs import CertificateAuthority, IdentityCache
from zpilot.certs.credential_files import write_node_credential
from zpilot.certs.x509_helpers import serial_hex
from zpilot.runtime.control_plane import ControlPlane, DebugOptions
from zpilot.translators.bootstrap import XDS_CLIENT_CERTIFICATE_SECRET, XDS_TOKEN_SECRET, XDS_TRUST_BUNDLE_SECRET
from zpilot.xds.security import XdsSecurity
from zpilot.xds.server import ServerOptions
from zpilot.xds.token_review import TokenReviewer

from .conftest import load_index, per_node_translate
from .e2e_util import wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, NODE_B, eventually, node_credential

pytestmark = NEEDS_ENVOY_AS_ROOT

TWO_DAYS_AGO = datetime.now(timezone.utc) - timedelta(days=2)
BOOTSTRAP_SECRETS = {XDS_CLIENT_CERTIFICATE_SECRET, XDS_TRUST_BUNDLE_SECRET, XDS_TOKEN_SECRET}


class Planes:
    """Control planes on one Unix socket, one at a time, so a test can restart 'zpilot serve'."""

    def __init__(self, manifests: Path, tmp_path: Path, security) -> None:
        self.manifests = manifests
        self.socket = tmp_path / "xds.sock"
        self.ca_dir = tmp_path / "ca"
        CertificateAuthority.load_or_create(self.ca_dir, clock=lambda: TWO_DAYS_AGO)
        self.identities = IdentityCache(CertificateAuthority.load(self.ca_dir))
        self.security = security
        self.bind: dict[str, str] = {}
        self.plane: ControlPlane | None = None

    @property
    def target(self) -> str:
        return f"unix:{self.socket}"

    async def start(self) -> ControlPlane:
        plane = ControlPlane(
            xds_security=await self.security(lambda: self.identities.ca),
            server_options=ServerOptions(host=self.target),
            debug_options=DebugOptions(port=0),
            translate=per_node_translate(self.bind),
            identities=self.identities,
        )
        await plane.update(load_index(self.manifests))
        await plane.start()
        self.plane = plane
        return plane

    async def stop(self) -> None:
        if self.plane is not None:
            await self.plane.stop()
            self.plane = None


@pytest.fixture
async def planes(manifests, tmp_path):
    made: list[Planes] = []

    def make(security=None) -> Planes:
        async def mutual_tls(authority):
            return XdsSecurity.mutual_tls(authority)

        p = Planes(manifests, tmp_path, security or mutual_tls)
        made.append(p)
        return p

    yield make
    for p in made:
        await p.stop()


def denied(plane: ControlPlane, reason: str) -> float:
    return plane.metrics.value("zpilot_xds_access_denied_total", reason=reason)


async def got_nothing(envoy) -> None:
    """The Envoy holds no cluster, listener or secret from the server (only its bootstrap's own)."""
    dump = await envoy.config_dump()
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if kind in ("ClustersConfigDump", "ListenersConfigDump"):
            assert not config.get("dynamic_active_clusters") and not config.get("dynamic_warming_clusters"), config
            assert not config.get("dynamic_listeners"), config
        if kind == "SecretsConfigDump":
            names = {s["name"] for key in ("dynamic_active_secrets", "dynamic_warming_secrets")
                     for s in config.get(key, [])}
            assert names <= BOOTSTRAP_SECRETS, names
        if kind == "EndpointsConfigDump":
            assert not config.get("dynamic_endpoint_configs"), config


async def connect_failures(envoy) -> int:
    """Connections to the ADS server that failed (a TLS handshake refused either way counts here)."""
    name = "cluster.xds-grpc.upstream_cx_connect_fail"
    try:
        return (await envoy.stats(name)).get(name, 0)
    except httpx.HTTPError:  # its admin API is not up yet
        return 0


def bootstrap_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zpilot.cli", "bootstrap", *args], capture_output=True, text=True,
                          timeout=60)


async def test_impostors_get_nothing_while_the_honest_ztunnel_is_served(planes, envoys, tmp_path):
    p = planes()
    plane = await p.start()
    ca = p.identities.ca
    honest = envoys(NODE_A, p.target, cli=("--ca-dir", str(p.ca_dir)), name="honest")
    impostor = envoys(NODE_B, p.target, name="impostor",  # node A's credential, claiming node B
                      tls=node_credential(tmp_path / "stolen", p.target, ca=ca, node=NODE_A))
    stranger = envoys(NODE_A, p.target, name="stranger",  # a credential of another CA (refused in TLS)
                      tls=node_credential(tmp_path / "foreign", p.target, ca=CertificateAuthority.generate(),
                                          node=NODE_A, trust=ca.trust_bundle_pem()))
    await honest.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)

    async def impostor_refused_twice():  # it retried: the refusal is not a one-off
        return denied(plane, "node_mismatch") >= 2

    async def stranger_refused():
        return await connect_failures(stranger) >= 2

    await eventually(impostor_refused_twice, 30)
    await eventually(stranger_refused, 30)
    await got_nothing(impostor)
    await got_nothing(stranger)
    assert plane.registry.connections(NODE_B) == []
    await wait_synced(plane.debug_port, NODE_A)  # still the one honest connection, in sync


async def test_a_ztunnel_restarted_after_its_credential_rotated_reconnects(planes, envoys, caplog):
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    p = planes()
    plane = await p.start()
    envoy = envoys(NODE_A, p.target, cli=("--ca-dir", str(p.ca_dir)))
    credential = envoy.dir / "xds-credential"
    await envoy.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)

    def serial() -> str:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate((credential / contract.CREDENTIAL_CERT_FILE).read_bytes())
        return serial_hex(cert.serial_number)

    def opened_with(number: str) -> bool:
        return any("opened by node=" + NODE_A in r.getMessage() and f"serial {number})" in r.getMessage()
                   for r in caplog.records)

    first = serial()
    assert opened_with(first)
    # Renewed under the running Envoy: it re-reads the files (SDS from a watched directory) ...
    renewed = bootstrap_cli("--renew", "--force", "--node", NODE_A, "--ca-dir", str(p.ca_dir),
                            "--credential-dir", str(credential))
    assert renewed.returncode == 0, renewed.stderr
    second = serial()
    assert second != first

    async def reloaded():
        stats = await envoy.stats(f"sds.{XDS_CLIENT_CERTIFICATE_SECRET}.update_success")
        return stats.get(f"sds.{XDS_CLIENT_CERTIFICATE_SECRET}.update_success", 0) >= 2

    await eventually(reloaded, 15)
    # ... and presents the new certificate when it next connects: zpilot restarts.
    await p.stop()
    plane = await p.start()
    await eventually(lambda: _true(opened_with(second)), 40)
    await wait_synced(plane.debug_port, NODE_A)
    # The ztunnel restarts after another rotation: it reconnects with the newest credential.
    envoy.stop()
    assert bootstrap_cli("--renew", "--force", "--node", NODE_A, "--ca-dir", str(p.ca_dir),
                         "--credential-dir", str(credential)).returncode == 0
    third = serial()
    envoy.start()
    await envoy.wait_ready()
    await eventually(lambda: _true(opened_with(third)), 30)
    await wait_synced(plane.debug_port, NODE_A)


async def test_an_expired_credential_renewed_under_a_running_envoy_connects_it(planes, envoys, tmp_path):
    p = planes()
    plane = await p.start()
    credential = tmp_path / "expired"
    tls = node_credential(credential, p.target, ca=p.identities.ca, node=NODE_A)
    yesterday_s_ca = CertificateAuthority.load(p.ca_dir, clock=lambda: TWO_DAYS_AGO)
    write_node_credential(credential, yesterday_s_ca, NODE_A, timedelta(hours=1))  # expired a day ago
    envoy = envoys(NODE_A, p.target, tls=tls)

    async def handshake_failed():
        return await connect_failures(envoy) >= 1

    await eventually(handshake_failed, 30)
    await got_nothing(envoy)
    renewed = bootstrap_cli("--renew", "--node", NODE_A, "--ca-dir", str(p.ca_dir), "--credential-dir", str(credential))
    assert renewed.returncode == 0 and "past half its lifetime" in renewed.stderr, renewed.stderr
    await envoy.wait_ready(timeout=45)  # Envoy's reconnect backoff, at most 30 s: no restart needed
    await wait_synced(plane.debug_port, NODE_A)


async def test_token_mode_with_a_rotating_projected_token(planes, envoys, apiserver, tmp_path):
    """The token file is swapped as the kubelet swaps it (``..data``); once the first token has expired,
    a reconnect is served only if Envoy sent the new one."""
    seed_article(apiserver)
    async with api_client(apiserver) as api:
        async def token_security(authority):
            return XdsSecurity.token(authority, TokenReviewer(api))

        p = planes(token_security)
        plane = await p.start()
        tokens = tmp_path / "tokens"
        first_expiry = time.time() + 20
        kubelet_write(tokens, apiserver.issue_token(contract.ZTUNNEL_NAMESPACE, contract.ZTUNNEL_SERVICE_ACCOUNT,
                                                    pod="ztunnel-rts54", audiences=[contract.XDS_TOKEN_AUDIENCE],
                                                    expires_in=20))
        bundle = tmp_path / "bundle" / "root-cert.pem"
        bundle.parent.mkdir()
        bundle.write_bytes(p.identities.ca.trust_bundle_pem())
        envoy = envoys(NODE_A, p.target, cli=("--xds-auth", "token", "--token-file", str(tokens / "token"),
                                              "--ca-bundle", str(bundle)))
        await envoy.wait_ready()
        await wait_synced(plane.debug_port, NODE_A)
        kubelet_write(tokens, apiserver.issue_token(contract.ZTUNNEL_NAMESPACE, contract.ZTUNNEL_SERVICE_ACCOUNT,
                                                    pod="ztunnel-rts54", audiences=[contract.XDS_TOKEN_AUDIENCE]))
        await asyncio.sleep(max(0.0, first_expiry + 1 - time.time()))  # the first token is now refused
        await p.stop()
        plane = await p.start()
        await wait_synced(plane.debug_port, NODE_A, timeout=40)
        assert denied(plane, "invalid_credential") == 0  # not even one attempt with the expired token
        await p.stop()


def kubelet_write(directory: Path, token: str) -> None:
    """Write a projected token as the kubelet's AtomicWriter does: a new ``..<stamp>`` directory, then
    the ``..data`` link swapped to it in one rename; ``token`` links through ``..data``."""
    directory.mkdir(exist_ok=True)
    generation = directory / f"..{time.monotonic_ns()}"
    generation.mkdir()
    (generation / "token").write_text(token)
    os.symlink(generation.name, directory / "..data_tmp")
    os.replace(directory / "..data_tmp", directory / "..data")
    if not (directory / "token").is_symlink():
        os.symlink("..data/token", directory / "token")


async def _true(value: bool) -> bool:
    return value

"""``zpilot revoke`` with a real Envoy: a ztunnel bootstrapped by ``zpilot bootstrap`` has its ADS stream
ended when its node is revoked under the running server, is refused on every reconnect, and is served
again once ``zpilot bootstrap --renew --force`` has given it a fresh credential (read by the running Envoy,
no restart of either side)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from zpilot.xds.revocations import DirectoryRevocations
from zpilot.xds.security import XdsSecurity

from .e2e_util import wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, eventually
from .test_xds_auth_envoy import bootstrap_cli, denied, planes  # noqa: F401 (planes: a fixture)

pytestmark = NEEDS_ENVOY_AS_ROOT


def revoke_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zpilot.cli", "revoke", *args], capture_output=True, text=True,
                          timeout=60)


async def test_a_revoked_ztunnel_is_cut_off_and_served_again_after_a_fresh_bootstrap(planes, envoys, tmp_path):  # noqa: F811
    watchers: list[DirectoryRevocations] = []

    async def revocable_tls(authority):
        watcher = DirectoryRevocations(tmp_path / "ca", interval=0.2)
        watcher.load()
        watchers.append(watcher)
        return XdsSecurity.mutual_tls(authority, revocations=watcher.revocations)

    p = planes(revocable_tls)
    plane = await p.start()
    follow = asyncio.create_task(watchers[0].follow())
    try:
        envoy = envoys(NODE_A, p.target, cli=("--ca-dir", str(p.ca_dir)))
        await envoy.wait_ready()
        await wait_synced(plane.debug_port, NODE_A)

        done = await asyncio.to_thread(revoke_cli, "--ca-dir", str(p.ca_dir), "--node", NODE_A)
        assert done.returncode == 0, done.stderr

        async def cut_off_and_refused_again():  # its stream ended, and its reconnect refused
            return denied(plane, "revoked_credential") >= 2 and plane.registry.connections(NODE_A) == []

        await eventually(cut_off_and_refused_again, 45)

        renewed = await asyncio.to_thread(bootstrap_cli, "--renew", "--force", "--node", NODE_A, "--ca-dir",
                                          str(p.ca_dir), "--credential-dir", str(envoy.dir / "xds-credential"))
        assert renewed.returncode == 0, renewed.stderr
        await wait_synced(plane.debug_port, NODE_A, timeout=60)  # Envoy's reconnect backoff: at most 30 s
        refusals = denied(plane, "revoked_credential")
        await asyncio.sleep(1)
        assert denied(plane, "revoked_credential") == refusals  # served, no longer refused
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)

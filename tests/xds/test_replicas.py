"""Two ``zpilot serve`` replicas, one CA Secret, one Envoy moved from one replica to the other.

The replicas are real subprocesses (``--ca-secret --kubeconfig``) against the in-process API
server, started together (so they may race to create the Secret), reading the same manifest
directory. They must hand out certificates from one root, and an Envoy whose replica goes away
must reconnect to the other and keep its config: the same version of every resource type, no
NACK, no difference from the new replica's intent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import httpx

from tests.kube.apiserver.objects import make_namespace

from .e2e_util import debug_json, wait_no_diff, wait_synced
from zpilot.certs import CertificateAuthority

from .envoy_util import (NEEDS_ENVOY_AS_ROOT, NODE_A, Envoy, die_with_parent, eventually, free_port, node_credential,
                         random_loopback, stop_process_group)

pytestmark = NEEDS_ENVOY_AS_ROOT

SECRET = "istio-system/zpilot-ca"


def lifetime_clear_of_a_renewal(now: datetime) -> int:
    """A certificate lifetime (seconds, about a day) whose renewal windows (half-lifetime steps from
    the epoch) have no boundary in the next ten minutes: a renewal during the test would change the
    certificates for a reason other than the move."""
    for lifetime in range(86400, 2 * 86400, 1800):
        into = now.timestamp() % (lifetime / 2)
        if 60 <= into <= lifetime / 2 - 600:
            return lifetime
    raise AssertionError("no lifetime found")  # a 30 min step of the window cannot miss for a whole day


class Replica:
    """``zpilot serve --ca-secret`` as a child process on its own ports."""

    def __init__(self, workdir: Path, name: str, manifests: Path, kubeconfig: Path, bind: str, lifetime: int,
                 layout: str) -> None:
        self.name = name
        self.xds_port, self.debug_port = free_port(), free_port()
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zpilot.cli", "serve", "--manifests", str(manifests),
                 "--ca-secret", SECRET, "--kubeconfig", str(kubeconfig),
                 "--xds-address", "127.0.0.1", "--xds-port", str(self.xds_port), "--debug-port", str(self.debug_port),
                 "--metrics-address", "127.0.0.1", "--metrics-port", "0", "--bind-address", bind,
                 "--cert-lifetime", str(lifetime), "--layout", layout],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )

    async def wait_ready(self) -> None:
        async def ready():
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log.read_text()}"
            try:
                async with httpx.AsyncClient(timeout=2.0) as client:
                    status = (await client.get(f"http://127.0.0.1:{self.debug_port}/healthz/ready")).status_code
            except httpx.HTTPError as exc:  # not listening yet
                raise AssertionError(f"{self.name}: {exc}") from None
            assert status == 200, f"{self.name}: {status}"
            return True

        await eventually(ready, 30, interval=0.1)

    async def root_ca(self, node: str) -> bytes:
        """The trust bundle this replica serves the node, from its debug API's config dump."""
        dump = await debug_json(self.debug_port, "/debug/config_dump", node=node)
        [secrets] = [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")]
        [root] = [s for s in secrets["dynamic_active_secrets"] if s["name"] == "ROOTCA"]
        return base64.b64decode(root["secret"]["validation_context"]["trusted_ca"]["inline_bytes"])

    def stop(self) -> None:
        stop_process_group(self.proc)


def secret_ca(server, workdir: Path) -> CertificateAuthority:
    """The CA the replicas share, as read from its Secret (what an operator would bootstrap nodes with)."""
    data = server.get("secrets", "zpilot-ca", "istio-system")["data"]
    workdir.mkdir(parents=True, exist_ok=True)
    for key in ("ca-cert.pem", "ca-key.pem"):
        (workdir / key).write_bytes(base64.b64decode(data[key]))
    (workdir / "ca-key.pem").chmod(0o600)
    return CertificateAuthority.from_files(workdir / "ca-cert.pem", workdir / "ca-key.pem")


def envoy_with_two_control_planes(workdir: Path, node: str, first: Replica, second: Replica,
                                  ca: CertificateAuthority) -> Envoy:
    """An Envoy whose ADS cluster has both replicas as endpoints (as a Service in front of them would),
    with its node's credential from the replicas' CA (both check it; both certificates carry 127.0.0.1)."""
    envoy = Envoy(workdir, node, first.xds_port,
                  tls=node_credential(workdir / "xds-credential", first.xds_port, ca=ca, node=node))
    config = json.loads(envoy.config.read_text())
    [xds] = config["static_resources"]["clusters"]
    endpoints = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    endpoints.append({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                  "port_value": second.xds_port}}}})
    envoy.config.write_text(json.dumps(config))
    return envoy


def versions(conn: dict) -> dict[str, str]:
    return {t["type"]: t["acked_version"] for t in conn["types"]}


async def connected(replica: Replica, node: str) -> bool:
    return bool(await debug_json(replica.debug_port, "/debug/syncz", node=node))


async def envoy_versions(envoy: Envoy) -> dict[str, str]:
    """Every dynamic resource's version as the Envoy holds it (name -> version_info)."""
    dump = await envoy.config_dump()
    held: dict[str, str] = {}
    for config in dump["configs"]:
        for key, entries in config.items():
            if not key.startswith("dynamic_active") or not isinstance(entries, list):
                continue
            for entry in entries:
                resource = entry.get("cluster") or entry.get("secret") or entry.get("endpoint_config") or {}
                name = entry.get("name") or resource.get("name") or resource.get("cluster_name")
                held[f"{key}/{name}"] = entry.get("version_info", "")
    return held


async def rejected(envoy: Envoy) -> dict[str, int]:
    stats = await envoy.stats("update_rejected")
    return {name: value for name, value in stats.items() if value}


async def test_replicas_share_one_root_and_an_envoy_moved_between_them_keeps_its_config(
        apiserver, manifests, tmp_path, layout):
    """With each outbound layout: the replicas must translate it to the same bytes (versions)."""
    apiserver.create(make_namespace("istio-system"))
    bind = random_loopback()  # the same config on both replicas: the listeners' address included
    lifetime = lifetime_clear_of_a_renewal(datetime.now(timezone.utc))
    replicas = [Replica(tmp_path, name, manifests, apiserver.kubeconfig_path, bind, lifetime, layout)
                for name in ("a", "b")]
    envoy = None
    try:
        await asyncio.gather(*(r.wait_ready() for r in replicas))
        creates = [r.status for r in apiserver.requests if r.verb == "create" and r.resource == "secrets"]
        assert creates.count(201) == 1 and set(creates) <= {201, 409}, creates
        stored = apiserver.get("secrets", "zpilot-ca", "istio-system")["data"]
        root = base64.b64decode(stored["root-cert.pem"])
        assert [await r.root_ca(NODE_A) for r in replicas] == [root, root]

        ca = secret_ca(apiserver, tmp_path / "operator")
        envoy = envoy_with_two_control_planes(tmp_path / "envoy", NODE_A, *replicas, ca).start()
        await envoy.wait_ready()
        [first] = [r for r in replicas if await connected(r, NODE_A)]
        [second] = [r for r in replicas if r is not first]
        before = versions(await wait_synced(first.debug_port, NODE_A))
        await wait_no_diff(first.debug_port, envoy)
        held = await envoy_versions(envoy)
        assert any(k.startswith("dynamic_active_secrets/spiffe://") for k in held), held

        first.stop()  # the Envoy's stream breaks; it reconnects to the other replica
        after = versions(await wait_synced(second.debug_port, NODE_A, timeout=30))
        assert after == before  # same content hashes, workload certificates included
        await wait_no_diff(second.debug_port, envoy)
        assert await envoy_versions(envoy) == held
        assert await rejected(envoy) == {}
        [conn] = await debug_json(second.debug_port, "/debug/syncz", node=NODE_A)
        assert all(t["nack_count"] == 0 for t in conn["types"]), conn
    finally:
        if envoy is not None:
            envoy.stop()
        for replica in replicas:
            replica.stop()

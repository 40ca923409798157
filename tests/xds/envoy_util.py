"""Real Envoy processes for the xDS tests: unique ports, readiness via /ready, always killed.

All helpers are async so the test's event loop (which runs the in-process control plane)
keeps serving ADS while a test waits for Envoy.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import pytest

from zpilot import contract
from zpilot.certs import CertificateAuthority
from zpilot.certs.credential_files import write_atomically, write_node_credential
from zpilot.translators.bootstrap import BootstrapOptions, XdsTls, bootstrap_document, default_server_name, xds_sds_files

ENVOY = shutil.which("envoy") or "envoy"

#: The ztunnel listeners are transparent (IP_TRANSPARENT, SO_MARK): without CAP_NET_ADMIN Envoy NACKs
#: LDS with "Setting socket options failed". Tests that run a real ztunnel Envoy carry these marks.
NEEDS_ENVOY_AS_ROOT = [
    pytest.mark.envoy,
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="ztunnel listeners are transparent: Envoy needs CAP_NET_ADMIN"),
]
_base_ids = itertools.count(random.randrange(10_000, 60_000))

NODE_A = "gke-jimmy-cluster-default-pool-d5041909-d10i"
NODE_B = "gke-jimmy-cluster-default-pool-d5041909-c1da"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In a child before exec: a session of its own, and SIGKILL when the process that started it dies
    (PR_SET_PDEATHSIG; started from the main thread, whose exit is the process's)."""
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it started: SIGTERM to its
    process group, SIGKILL if it is still there after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def random_loopback() -> str:
    """A random 127/8 address, so this test's listeners on 15001/15006/15008 clash with nobody's."""
    return f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"


def xds_target(xds: int | str) -> str:
    return f"127.0.0.1:{xds}" if isinstance(xds, int) else xds


def bootstrap_json(node: str, xds: int | str, admin_port: int, *, delta: bool = False,
                   tls: XdsTls | None = None) -> dict[str, Any]:
    """What ``zpilot bootstrap --node N --xds 127.0.0.1:PORT --admin-port P [--delta]`` prints
    (``xds`` a port on loopback, or a target such as ``unix:/path``); plaintext ADS without ``tls``."""
    return bootstrap_document(BootstrapOptions(node=node, xds=xds_target(xds), admin_port=admin_port, delta=delta, tls=tls))


def node_credential(directory: Path, xds: int | str, *, ca: CertificateAuthority | None = None, node: str = "",
                    trust: bytes | None = None, token: Path | None = None, bundle: Path | None = None) -> XdsTls:
    """What ``zpilot bootstrap`` writes for ADS over TLS, in ``directory``: with ``ca``, ``node``'s
    client certificate (mutual TLS) and ``ca``'s bundle (or ``trust``, to trust another server than
    ``ca``'s); with ``token``, that token file and the CA ``bundle``."""
    directory.mkdir(parents=True, exist_ok=True)
    if ca is not None:
        write_node_credential(directory, ca, node)
        if trust is not None:
            write_atomically(directory, {
                contract.CREDENTIAL_CERT_FILE: (directory / contract.CREDENTIAL_CERT_FILE).read_bytes(),
                contract.CREDENTIAL_KEY_FILE: (directory / contract.CREDENTIAL_KEY_FILE).read_bytes(),
                contract.CREDENTIAL_BUNDLE_FILE: trust}, private=frozenset({contract.CREDENTIAL_KEY_FILE}))
        tls = XdsTls(server_name=default_server_name(xds_target(xds)), sds_dir=str(directory),
                     bundle=str(directory / contract.CREDENTIAL_BUNDLE_FILE),
                     certificate=(str(directory / contract.CREDENTIAL_CERT_FILE),
                                  str(directory / contract.CREDENTIAL_KEY_FILE)))
    else:
        assert token is not None and bundle is not None
        tls = XdsTls(server_name=default_server_name(xds_target(xds)), sds_dir=str(directory), bundle=str(bundle),
                     token=str(token))
    for name, content in xds_sds_files(tls).items():
        (directory / name).write_text(json.dumps(content))
    return tls


class Envoy:
    """One Envoy process for one node; :meth:`stop` always kills it."""

    def __init__(self, workdir: Path, node: str, xds_port: int | str, *, delta: bool = False,
                 tls: XdsTls | None = None, cli: tuple[str, ...] | None = None, flags: tuple[str, ...] = ()) -> None:
        """``tls``: ADS over TLS with these credentials; ``cli``: bootstrapped by the ``zpilot bootstrap``
        command with these extra arguments (its credential directory in ``workdir``); ``flags``: Envoy's own,
        more of them (the tests' Envoys run without ``contract.ENVOY_FLAGS``, so that they see what those hide)."""
        self.flags = flags
        self.node = node
        self.admin_port = free_port()
        self.xds_port = xds_port
        self.delta = delta
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "bootstrap.json"
        if cli is not None:
            argv = [sys.executable, "-m", "zpilot.cli", "bootstrap", "--node", node, "--xds", xds_target(xds_port),
                    "--admin-port", str(self.admin_port), "--credential-dir", str(self.dir / "xds-credential"),
                    *(["--delta"] if delta else []), *cli]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            self.config.write_text(proc.stdout)
        else:
            self.config.write_text(json.dumps(bootstrap_json(node, xds_port, self.admin_port, delta=delta, tls=tls)))
        self.log = self.dir / "envoy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> "Envoy":
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [ENVOY, "-c", str(self.config), "--base-id", str(next(_base_ids)), "--disable-hot-restart",
                 "-l", "info", "--drain-time-s", "0", *self.flags],
                # its own session (stopped as a group), and killed with this process: a test run killed
                # outright (a CI timeout) leaves no Envoy behind
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )
        return self

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Until the admin /ready says LIVE (every listener warmed: CDS, EDS, SDS and LDS arrived)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"envoy exited {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    r = await client.get(f"{self.admin}/ready")
                    if r.status_code == 200 and r.text.strip() == "LIVE":
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"envoy for {self.node} not LIVE in {timeout}s:\n{self.log_tail()}")

    async def get_json(self, path: str) -> Any:
        async with httpx.AsyncClient(timeout=5.0) as client:
            r = await client.get(f"{self.admin}{path}")
            r.raise_for_status()
            return r.json()

    async def config_dump(self) -> dict[str, Any]:
        return await self.get_json("/config_dump?include_eds")

    async def stats(self, prefix: str) -> dict[str, int]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            r = await client.get(f"{self.admin}/stats", params={"filter": prefix})
        out = {}
        for line in r.text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc, grace=5)
        self.proc = None


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Await ``check`` until it returns a truthy value (returned) or raises no AssertionError."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await check()
            if result:
                return result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            if last is not None:
                raise last
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)

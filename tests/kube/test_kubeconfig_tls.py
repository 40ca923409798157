"""A kubeconfig's TLS material and exec plugins as kubectl (client-go) treats them, against the in-process API
server with real TLS and client certificates: key material never on disk, a CA with insecure-skip-tls-verify
refused, ``provideClusterInfo`` and ``installHint``, and one loaded configuration per process."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes_asyncio import client

from tests.kube.test_client import _exec_kubeconfig
from tests.xds.envoy_util import die_with_parent, eventually, free_port, stop_process_group
from zpilot.cli import build_parser
from zpilot.cni.cli import _source
from zpilot.kube.client import KubeConfigError, api_client
from zpilot.kube.kubeconfig import MAX_INSTALL_HINT, KubeConfigProblem, read_kubeconfig
from zpilot.kube.source import first_model

PLUGIN_API = "client.authentication.k8s.io/v1"


async def whoami(api: client.ApiClient, apiserver) -> str:
    await client.CoreV1Api(api).list_namespace()
    return apiserver.requests[-1].user


def _holding(directory: Path, *secrets: bytes) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and any(s in p.read_bytes() for s in secrets)]


def _with_user(apiserver, path: Path, user: dict) -> Path:
    apiserver.write_kubeconfig(path)
    document = yaml.safe_load(path.read_text())
    document["users"][0]["user"] = user
    path.write_text(yaml.safe_dump(document))
    return path


def _certificate_user(apiserver, tmp_path: Path) -> Path:
    """A kubeconfig whose user is a client certificate and key, inline, the server's user "by-certificate"."""
    cert, key = apiserver.issue_client_certificate("by-certificate")
    return _with_user(apiserver, tmp_path / "kubeconfig", {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode()})


async def test_inline_client_certificates_and_ca_never_reach_the_temp_directory(apiserver, tmp_path, temp_dir):
    """kubernetes-asyncio wrote ``*-data`` fields to files under the temp directory, there until the process
    exits: a control plane's client key readable by name in a shared directory. The client still presents the
    certificate (the API server knows the user by it) and checks the server against the inline CA."""
    cert, key = apiserver.issue_client_certificate("by-certificate")
    folded = base64.encodebytes(cert).decode()  # (base64 in lines of 76, as some tools write it: kubectl reads it)
    path = _with_user(apiserver, tmp_path / "kubeconfig", {
        "client-certificate-data": folded, "client-key-data": base64.b64encode(key).decode()})
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "by-certificate"
        assert api.configuration.key_file is None and api.configuration.ssl_ca_cert is None
    assert _holding(temp_dir, key, cert, apiserver.certs.ca_pem) == []
    assert list(temp_dir.iterdir()) == []


async def test_without_memory_files_a_private_directory_holds_them_only_while_the_client_is_made(
        apiserver, tmp_path, temp_dir, monkeypatch):
    """Where there is no ``memfd_create`` (not Linux): a 0700 directory of the temp directory, removed as soon
    as the client has read the files."""
    from zpilot.kube import key_material

    monkeypatch.delattr(os, "memfd_create")
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        made.append(Path(real_mkdtemp(*args, **kwargs)))
        assert made[-1].stat().st_mode & 0o777 == 0o700
        return str(made[-1])

    monkeypatch.setattr(key_material.tempfile, "mkdtemp", mkdtemp)
    path = _certificate_user(apiserver, tmp_path)
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "by-certificate"
        assert made and not any(d.exists() for d in made)
    assert list(temp_dir.iterdir()) == []


async def test_memory_files_refused_fall_back_to_the_private_directory_closing_those_made(
        apiserver, tmp_path, temp_dir, monkeypatch):
    """``memfd_create`` exists but is refused (ENOSYS on an old kernel, EPERM under a container's seccomp
    profile), here at the second file: the client is made all the same, from the private directory, and the
    memory file already made is closed (the start failed with "[Errno 38] Function not implemented")."""
    import errno

    real_memfd_create, made, closed = os.memfd_create, [], []
    real_close = os.close

    def memfd_create(*args):
        if made:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
        made.append(real_memfd_create(*args))
        return made[-1]

    def close(fd):
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "memfd_create", memfd_create)
    monkeypatch.setattr(os, "close", close)
    path = _certificate_user(apiserver, tmp_path)
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "by-certificate"
    assert made and set(made) <= set(closed)
    assert list(temp_dir.iterdir()) == []


async def test_a_plugins_client_certificate_is_presented_and_never_written(apiserver, tmp_path, temp_dir):
    """A plugin may answer a client certificate and key (PEM) instead of a token: the client presents them,
    and they are nowhere on disk (kubernetes-asyncio wrote them to the temp directory)."""
    cert, key = apiserver.issue_client_certificate("plugin-certificate")
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"import json\nprint(json.dumps({{'apiVersion': {PLUGIN_API!r}, 'kind': 'ExecCredential',"
                      f" 'status': {{'clientCertificateData': {cert.decode()!r}, 'clientKeyData': {key.decode()!r}}}}}))\n")
    path = _with_user(apiserver, tmp_path / "kubeconfig",
                      {"exec": {"apiVersion": PLUGIN_API, "command": sys.executable, "args": [str(plugin)]}})
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "plugin-certificate"
    assert _holding(temp_dir, key) == []


async def test_a_client_certificate_without_its_key_is_named(apiserver, tmp_path):
    cert, _ = apiserver.issue_client_certificate("half")
    path = _with_user(apiserver, tmp_path / "kubeconfig", {"client-certificate-data": base64.b64encode(cert).decode()})
    with pytest.raises(KubeConfigError, match="user test-apiserver: client-certificate and client-key go together"):
        await api_client(path, environ={})


def test_an_encrypted_client_key_is_named_not_asked_for_on_the_terminal(apiserver, tmp_path):
    """A passphrase-protected key (client-go cannot use one): OpenSSL, given no password, asked for one on the
    process's terminal ("Enter PEM pass phrase:"), and ``zpilot serve`` started from a shell waited there.
    Run with a terminal of its own (a pty), the load now ends with an error naming the user."""
    import pty
    import select

    from cryptography.hazmat.primitives import serialization

    cert, key = apiserver.issue_client_certificate("encrypted")
    encrypted = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"))
    path = _with_user(apiserver, tmp_path / "kubeconfig", {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(encrypted).decode()})
    script = ("import asyncio, sys\n"
              "from zpilot.kube.client import KubeConfigError, api_client\n"
              "try:\n"
              f"    asyncio.run(api_client({str(path)!r}, environ={{}}))\n"
              "except KubeConfigError as exc:\n"
              "    print('REFUSED', exc, flush=True)\n")
    pid, terminal = pty.fork()  # (the child's controlling terminal: what OpenSSL's prompt opens)
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", script])
    out = b""
    try:
        while b"pass phrase" not in out:  # (else until the child has ended: EOF, or EIO once the pty's other end closed)
            ready, _, _ = select.select([terminal], [], [], 60)
            assert ready, out
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # (EIO: the child has ended)
                break
            if not chunk:
                break
            out += chunk
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(terminal)
    assert b"pass phrase" not in out, out
    assert b"REFUSED" in out and b"user test-apiserver: its client key is encrypted" in out, out


async def test_a_ca_that_is_not_pem_is_named_at_load(apiserver, tmp_path):
    path = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    document = yaml.safe_load(path.read_text())
    document["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(b"not a certificate").decode()
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(KubeConfigError, match="cluster test-apiserver: its certificate authority is not a PEM CA"):
        await api_client(path, environ={})


# -- a CA and insecure-skip-tls-verify: kubectl refuses it ------------------------------------------------------


def _insecure_with_ca(apiserver, path: Path) -> Path:
    apiserver.write_kubeconfig(path)
    document = yaml.safe_load(path.read_text())
    document["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    path.write_text(yaml.safe_dump(document))
    return path


async def test_a_ca_with_insecure_skip_tls_verify_is_refused_naming_the_cluster(apiserver, tmp_path):
    """client-go: "specifying a root certificates file with the insecure flag is not allowed". zpilot took it,
    and did not check the server at all."""
    path = _insecure_with_ca(apiserver, tmp_path / "kubeconfig")
    with pytest.raises(KubeConfigProblem, match="cluster test-apiserver: certificate-authority and "
                                                "insecure-skip-tls-verify are both set"):
        read_kubeconfig([path])
    with pytest.raises(KubeConfigError, match=f"--kubeconfig {path}: cluster test-apiserver"):
        await api_client(path, environ={})
    document = yaml.safe_load(path.read_text())
    del document["clusters"][0]["cluster"]["certificate-authority-data"]
    path.write_text(yaml.safe_dump(document))
    assert read_kubeconfig([path]).cluster["insecure-skip-tls-verify"] is True  # alone, as kubectl allows


def test_serve_with_a_ca_and_insecure_skip_tls_verify_exits_2_at_start(apiserver, tmp_path):
    path = _insecure_with_ca(apiserver, tmp_path / "kubeconfig")
    done = subprocess.run(  # (60 s: only if it serves, as it did)
        [sys.executable, "-m", "zpilot.cli", "serve", "--kubeconfig", str(path), "--insecure-xds",
         "--xds-address", "127.0.0.1", "--xds-port", "0", "--debug-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60, preexec_fn=die_with_parent)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "cluster test-apiserver: certificate-authority and insecure-skip-tls-verify are both set" in done.stderr


async def test_a_ca_file_and_ca_data_together_are_refused_naming_the_cluster(apiserver, tmp_path):
    """kubectl refuses a cluster with both ("certificate-authority-data and certificate-authority are both
    specified"): zpilot used the data and ignored the file, silently, which may not be the CA its author meant."""
    path = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    document = yaml.safe_load(path.read_text())
    (tmp_path / "ca.crt").write_bytes(apiserver.certs.ca_pem)
    document["clusters"][0]["cluster"]["certificate-authority"] = "ca.crt"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(KubeConfigProblem, match="cluster test-apiserver: certificate-authority and "
                                                "certificate-authority-data are both set"):
        read_kubeconfig([path])
    with pytest.raises(KubeConfigError, match=f"--kubeconfig {path}: cluster test-apiserver: certificate-authority"):
        await api_client(path, environ={})
    del document["clusters"][0]["cluster"]["certificate-authority-data"]
    path.write_text(yaml.safe_dump(document))
    async with await api_client(path, environ={}) as api:  # the file alone, as kubectl takes it
        assert await whoami(api, apiserver) == "admin"


@pytest.mark.parametrize("key", ["client-certificate", "client-key"])
async def test_a_client_certificate_or_key_as_file_and_data_is_refused_naming_the_user(apiserver, tmp_path, key):
    """The same rule of kubectl's for the user's certificate and key."""
    cert, private = apiserver.issue_client_certificate("both")
    (tmp_path / key).write_bytes(cert if key == "client-certificate" else private)
    path = _with_user(apiserver, tmp_path / "kubeconfig", {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(private).decode(), key: key})
    with pytest.raises(KubeConfigError, match=f"user test-apiserver: {key} and {key}-data are both set"):
        await api_client(path, environ={})


# -- exec plugins: provideClusterInfo, installHint ----------------------------------------------------------------


def _info_plugin(apiserver, tmp_path: Path, **section) -> tuple[Path, Path]:
    """A plugin that keeps the KUBERNETES_EXEC_INFO it was given, and answers a token."""
    seen = tmp_path / "exec-info.json"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"import json, os, pathlib\npathlib.Path({str(seen)!r}).write_text(os.environ['KUBERNETES_EXEC_INFO'])\n"
                      f"print(json.dumps({{'apiVersion': {PLUGIN_API!r}, 'kind': 'ExecCredential',"
                      f" 'status': {{'token': {apiserver.admin_token!r}}}}}))\n")
    path = _with_user(apiserver, tmp_path / "kubeconfig", {"exec": {
        "apiVersion": PLUGIN_API, "command": sys.executable, "args": [str(plugin)], **section}})
    document = yaml.safe_load(path.read_text())
    document["clusters"][0]["cluster"]["extensions"] = [
        {"name": "client.authentication.k8s.io/exec", "extension": {"audience": "mesh", "region": "eu-west-1"}},
        {"name": "other", "extension": {"not": "given"}}]
    path.write_text(yaml.safe_dump(document))
    return path, seen


async def test_provide_cluster_info_gives_the_plugin_the_cluster(apiserver, tmp_path):
    """As client-go: the server, the CA (base64, from the file if need be) and the cluster's
    ``client.authentication.k8s.io/exec`` extension as ``spec.cluster.config``."""
    path, seen = _info_plugin(apiserver, tmp_path, provideClusterInfo=True)
    async with await api_client(path, environ={}) as api:
        assert await whoami(api, apiserver) == "admin"
    info = json.loads(seen.read_text())
    assert info["spec"] == {"interactive": False, "cluster": {
        "server": apiserver.url, "certificate-authority-data": base64.b64encode(apiserver.certs.ca_pem).decode(),
        "config": {"audience": "mesh", "region": "eu-west-1"}}}


async def test_without_provide_cluster_info_the_plugin_gets_no_cluster(apiserver, tmp_path):
    path, seen = _info_plugin(apiserver, tmp_path)
    async with await api_client(path, environ={}):
        pass
    assert json.loads(seen.read_text())["spec"] == {"interactive": False}


async def test_a_plugin_not_found_names_its_install_hint_bounded_and_printable(apiserver, tmp_path):
    hint = "\x1b[31mInstall gke-gcloud-auth-plugin: https://cloud.google.com/kubernetes-engine\x1b[0m " + "x" * 5000
    path = _with_user(apiserver, tmp_path / "kubeconfig", {"exec": {
        "apiVersion": PLUGIN_API, "command": "zpilot-test-no-such-plugin", "installHint": hint}})
    with pytest.raises(KubeConfigError) as caught:
        await api_client(path, environ={"PATH": str(tmp_path)})
    message = str(caught.value)
    assert "user test-apiserver: exec plugin zpilot-test-no-such-plugin: cannot be run (No such file or directory);" \
           " [31mInstall gke-gcloud-auth-plugin: https://cloud.google.com/kubernetes-engine" in message, message
    assert "\x1b" not in message and len(message) < len(str(path)) + 200 + MAX_INSTALL_HINT


# -- one loaded configuration per process -------------------------------------------------------------------------


def test_the_cni_agent_runs_its_plugin_once_for_the_check_and_the_watch(apiserver, tmp_path):
    """The flags' check and the watch share what the check loaded (two asyncio loops, as the command runs)."""
    path, token, runs = _exec_kubeconfig(apiserver, tmp_path, expires_in=timedelta(hours=1))
    token.write_text(apiserver.admin_token)
    args = build_parser().parse_args(["cni", "status", "--node", "some-node", "--kubeconfig", str(path)])
    import asyncio

    asyncio.run(first_model(_source(args)))
    assert runs.read_text().splitlines() == ["run"]


async def test_serve_runs_its_plugin_once_for_the_watch_and_token_reviews(apiserver, tmp_path):
    """``zpilot serve --xds-auth token`` made a client for the check, one for token reviews and one for the
    watch, each loading the kubeconfig: a plugin ran three times at each start (a slow one, three times as
    slow). Now once; renewals too are shared."""
    path, token, runs = _exec_kubeconfig(apiserver, tmp_path, expires_in=timedelta(hours=1))
    token.write_text(apiserver.admin_token)
    debug_port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zpilot.cli", "serve", "--kubeconfig", str(path), "--xds-auth", "token",
             "--ca-dir", str(tmp_path / "ca"), "--xds-address", "127.0.0.1", "--xds-port", "0",
             "--debug-port", str(debug_port), "--metrics-address", "127.0.0.1", "--metrics-port", "0"],
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            env={k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")})
    try:
        async def ready() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                async with httpx.AsyncClient(timeout=1.0) as c:
                    return (await c.get(f"http://127.0.0.1:{debug_port}/healthz/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, 60)
    finally:
        stop_process_group(proc)
    assert runs.read_text().splitlines() == ["run"], log.read_text(errors="replace")[-3000:]

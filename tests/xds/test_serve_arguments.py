"""``zpilot serve``'s arguments: bad values are argument errors, sockets are private, exposure is said."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from zpilot.certs.kube_secret import DEFAULT_SECRET
from zpilot.cli import build_parser
from zpilot.commands.serve import exposed_debug_address

from .envoy_util import die_with_parent, free_port, stop_process_group

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "article"


def serve_argv(*extra: str) -> list[str]:
    """``zpilot serve`` on the example; metrics on a free loopback port unless ``extra`` says otherwise.
    ADS is plaintext (``--insecure-xds``): these tests are about arguments and sockets, not ztunnels."""
    return [sys.executable, "-m", "zpilot.cli", "serve", "--manifests", str(EXAMPLE), "--insecure-xds",
            "--metrics-address", "127.0.0.1", "--metrics-port", "0", *extra]


def parse_serve(*argv: str):
    """``zpilot serve``'s arguments as parsed from ``--manifests EXAMPLE *argv``."""
    return build_parser().parse_args(["serve", "--manifests", str(EXAMPLE), *argv])


@pytest.mark.parametrize("value", ["0", "nan"])
def test_a_certificate_lifetime_of_zero_or_nan_is_an_argument_error_not_a_traceback(value):
    proc = subprocess.run(serve_argv("--xds-port", "0", "--debug-port", "0", "--cert-lifetime", value),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"argument --cert-lifetime: {value!r}: must be a finite number of seconds, more than zero" in proc.stderr


@pytest.mark.parametrize("flag", ["--cert-lifetime", "--debounce-quiet", "--debounce-max", "--max-connection-age"])
@pytest.mark.parametrize("value", ["nan", "inf", "-5", "soon"])
def test_every_duration_must_be_a_finite_number_of_seconds(flag, value, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_serve(flag, value)
    assert exit.value.code == 2
    assert f"argument {flag}: {value!r}" in capsys.readouterr().err


def test_only_the_quiet_window_may_be_zero():
    args = parse_serve("--debounce-quiet", "0")
    assert args.debounce_quiet == 0.0
    for flag in ("--cert-lifetime", "--debounce-max", "--max-connection-age"):
        with pytest.raises(SystemExit):
            parse_serve(flag, "0")


def test_the_ca_secret_flag_takes_namespace_slash_name_or_the_default(capsys):
    assert parse_serve().ca_secret is None
    assert str(parse_serve("--ca-secret").ca_secret) == "istio-system/zpilot-ca" == DEFAULT_SECRET  # one default
    args = parse_serve("--ca-secret", "mesh/cacerts", "--kubeconfig", "/k", "--context", "prod")
    assert (str(args.ca_secret), str(args.kubeconfig), args.context) == ("mesh/cacerts", "/k", "prod")
    with pytest.raises(SystemExit):
        parse_serve("--ca-secret", "cacerts")
    assert "argument --ca-secret: 'cacerts': a CA Secret is NAMESPACE/NAME" in capsys.readouterr().err


def test_the_ca_secret_does_not_go_with_another_ca():
    proc = subprocess.run(serve_argv("--ca-secret", "--ca-dir", "/tmp/nowhere"), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--ca-secret keeps the CA in a Secret; it does not go with --ca-dir" in proc.stderr


@pytest.mark.parametrize("flag", ["--xds-address", "--debug-address", "--metrics-address"])
def test_a_listen_address_with_a_port_is_an_argument_error_naming_the_port_flag(flag, capsys):
    """``127.0.0.1:15012`` was taken for a host name: the debug API was refused as exposed (naming 127.0.0.1),
    the other listeners failed to bind. An IPv6 address, a name and a socket path stay addresses."""
    with pytest.raises(SystemExit) as exited:
        parse_serve(flag, "127.0.0.1:15012")
    port_flag = flag.replace("-address", "-port")
    assert exited.value.code == 2 and f"give the address alone, and the port with {port_flag}" in capsys.readouterr().err
    for address in ("::1", "fd00::1", "localhost", "unix:/run/zpilot/xds.sock", "0.0.0.0"):
        assert getattr(parse_serve(flag, address), flag[2:].replace("-", "_")) == address


def test_the_root_namespace_is_a_namespace_name(capsys):
    args = parse_serve()
    assert args.root_namespace == "istio-system"
    assert parse_serve("--root-namespace", "mesh-root").root_namespace == "mesh-root"
    with pytest.raises(SystemExit):
        parse_serve("--root-namespace", "Istio_System")
    assert "argument --root-namespace: 'Istio_System' is not a namespace name" in capsys.readouterr().err


@pytest.mark.parametrize("address, exposed", [
    ("127.0.0.1", False), ("127.0.0.53", False), ("::1", False), ("localhost", False), ("unix:/run/z.sock", False),
    ("0.0.0.0", True), ("::", True), ("10.0.0.1", True), ("zpilot.example", True),
])
def test_which_debug_addresses_expose_the_config(address, exposed):
    assert exposed_debug_address(address) is exposed


class Serve:
    """``zpilot serve`` as a child process, stopped at the end."""

    def __init__(self, tmp_path: Path, *extra: str, umask: int = 0o022) -> None:
        self.log = tmp_path / "serve.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(serve_argv(*extra), stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=die_with_parent, umask=umask)

    def wait_ready(self, client: httpx.Client, url: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"zpilot serve exited:\n{self.log.read_text()}"
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{self.log.read_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process_group(self.proc)


def unix_sockets(tmp_path: Path, prefix: str = "") -> tuple[Path, Path, Path, list[str]]:
    xds, debug, metrics = (tmp_path / f"{prefix}{name}.sock" for name in ("xds", "debug", "metrics"))
    return xds, debug, metrics, ["--xds-address", f"unix:{xds}", "--debug-address", f"unix:{debug}",
                                 "--metrics-address", f"unix:{metrics}"]


def test_unix_sockets_are_owner_only_whatever_the_umask(tmp_path):
    xds, debug, metrics, flags = unix_sockets(tmp_path)
    serve = Serve(tmp_path, *flags, umask=0)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(debug)), timeout=2.0) as client:
            serve.wait_ready(client, "http://zpilot/healthz/ready")
        for sock in (xds, debug, metrics):
            mode = os.stat(sock).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, f"{sock.name}: {oct(stat.S_IMODE(mode))}"
    finally:
        serve.stop()
    assert serve.proc.returncode == 0, serve.log.read_text()


def test_a_socket_another_server_listens_on_is_not_taken_over(tmp_path):
    xds, debug, _, flags = unix_sockets(tmp_path)
    first = Serve(tmp_path, *flags)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(debug)), timeout=2.0) as client:
            first.wait_ready(client, "http://zpilot/healthz/ready")
            for taken in ("--xds-address", "--debug-address"):  # each of the first one's sockets in turn
                *_, second_flags = unix_sockets(tmp_path, prefix="second-")
                at = second_flags.index(taken)
                second_flags[at + 1] = flags[flags.index(taken) + 1]
                second = subprocess.run(serve_argv(*second_flags), capture_output=True, text=True, timeout=60)
                path = second_flags[at + 1][len("unix:"):]
                assert second.returncode == 2 and f"a server already listens on {path}" in second.stderr, \
                    second.stderr
                assert client.get("http://zpilot/healthz/ready").status_code == 200  # the first one still serves
        assert stat.S_ISSOCK(os.stat(xds).st_mode)
    finally:
        first.stop()


def test_a_debug_api_off_loopback_needs_a_token_file(tmp_path):
    proc = subprocess.run(serve_argv("--xds-address", "127.0.0.1", "--xds-port", "0", "--debug-address", "0.0.0.0",
                                     "--debug-port", "0"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "the debug API on 0.0.0.0 would show every node's configuration" in proc.stderr
    assert "--debug-token-file" in proc.stderr


@pytest.mark.parametrize("content, error", [("", "holds nothing"), ("two words", "several words"),
                                            ("x" * 5000, "larger than 4096 bytes")])
def test_a_debug_token_file_holds_one_token(tmp_path, content, error):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    proc = subprocess.run(serve_argv("--debug-token-file", str(token_file)), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and error in proc.stderr, proc.stderr


def test_a_debug_api_off_loopback_answers_only_with_its_token(tmp_path):
    port = free_port()
    token_file = tmp_path / "debug-token"
    token_file.write_text("s3cret-debug-token\n")
    token_file.chmod(0o600)
    serve = Serve(tmp_path, "--xds-address", "127.0.0.1", "--xds-port", "0", "--debug-address", "0.0.0.0",
                  "--debug-port", str(port), "--debug-token-file", str(token_file))
    try:
        with httpx.Client(timeout=2.0) as client:
            serve.wait_ready(client, f"http://127.0.0.1:{port}/healthz/ready")  # probes need no token
            for path in ("/debug/syncz", "/debug/connections", "/debug/registryz",
                         "/debug/config_dump?node=gke-jimmy-cluster-default-pool-d5041909-d10i"):
                url = f"http://127.0.0.1:{port}{path}"
                bare = client.get(url)
                assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer", path
                assert client.get(url, headers={"Authorization": "Bearer s3cret-debug-toke"}).status_code == 401
                assert client.get(url, headers={"Authorization": "Basic s3cret-debug-token"}).status_code == 401
                assert client.get(url, headers={"Authorization": "Bearer s3cret-debug-token"}).status_code == 200
        # zpilot diff reads the intent with the token (and then fails on the Envoy, which is not there)
        diff = ["zpilot.cli", "diff", "--server", f"http://127.0.0.1:{port}", "--envoy-admin", "http://127.0.0.1:9",
                "--node", "gke-jimmy-cluster-default-pool-d5041909-d10i"]
        refused = subprocess.run([sys.executable, "-m", *diff], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "HTTP 401" in refused.stderr, refused.stderr
        allowed = subprocess.run([sys.executable, "-m", *diff, "--debug-token-file", str(token_file)],
                                 capture_output=True, text=True, timeout=60)
        assert allowed.returncode == 2 and "http://127.0.0.1:9/config_dump" in allowed.stderr, allowed.stderr
    finally:
        serve.stop()
    assert serve.proc.returncode == 0, serve.log.read_text()


def test_plaintext_ads_is_never_the_default(tmp_path):
    """Without a CA on disk there is no authenticated ADS to offer: the command says what to give."""
    argv = [arg for arg in serve_argv("--xds-port", "0", "--debug-port", "0") if arg != "--insecure-xds"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--xds-auth tls needs a CA that outlives this process" in proc.stderr and "--insecure-xds" in proc.stderr
    both = subprocess.run([*argv, "--insecure-xds", "--xds-auth", "tls"], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "does not go with --xds-auth" in both.stderr


def test_insecure_ads_is_warned_about_at_start(tmp_path):
    xds, debug, _, flags = unix_sockets(tmp_path)
    serve = Serve(tmp_path, *flags)  # serve_argv says --insecure-xds
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(debug)), timeout=2.0) as client:
            serve.wait_ready(client, "http://zpilot/healthz/ready")
    finally:
        serve.stop()
    assert "WARNING zpilot.xds.server: ADS is PLAINTEXT and UNAUTHENTICATED (--insecure-xds)" in serve.log.read_text()


def test_the_ads_limit_flags_state_the_real_defaults_and_reach_the_server():
    """The flags module states Limits' defaults as text (``--help`` loads no gRPC): they must be
    Limits' own; given flags replace them, others stay."""
    from zpilot.commands.xds_limit_flags import FLAGS, limits_from
    from zpilot.xds.limits import Limits

    defaults = Limits()
    assert {field: int(text.split(",")[0]) for field, text, _ in FLAGS.values()} == {
        field: getattr(defaults, field) for field, _, _ in FLAGS.values()}
    args = parse_serve("--max-streams", "7", "--max-resource-names", "50000", "--max-request-bytes", str(16 << 20))
    assert limits_from(args) == Limits(max_streams=7, max_resource_names=50_000, max_request_bytes=16 << 20)


@pytest.mark.parametrize("flag", ["--max-request-bytes", "--max-resource-names", "--max-streams",
                                  "--max-streams-per-connection"])
@pytest.mark.parametrize("value", ["0", "-1", "many", "2147483648"])
def test_ads_limits_must_be_positive_whole_numbers(flag, value, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_serve(flag, value)
    assert exit.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err

"""``zpilot bootstrap``: Envoy accepts it, for every form of control-plane address."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zpilot.envoy_binary import validate


def bootstrap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zpilot.cli", "bootstrap", *args], capture_output=True, text=True)


@pytest.mark.envoy
@pytest.mark.parametrize(
    "xds,extra",
    [("127.0.0.1:15010", []), ("zpilot.istio-system.svc:15010", ["--delta"]), ("unix:/run/zpilot/xds.sock", []), ("[::1]:15010", [])],
)
def test_envoy_accepts_bootstrap(xds: str, extra: list[str]) -> None:
    proc = bootstrap("--node", "node-a", "--xds", xds, "--admin-port", "0", *extra)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert config["node"]["metadata"]["NODE_NAME"] == "node-a"
    assert config["node"]["id"] == "ztunnel~node-a"
    assert config["bootstrap_extensions"][0]["name"] == "envoy.bootstrap.internal_listener"
    flags = config["layered_runtime"]["layers"][0]["static_layer"]
    assert flags["envoy.reloadable_features.enable_send_rst_on_user_space_socket"] is False  # see RUNTIME_FLAGS
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if extra else "GRPC")
    result = validate(config)
    assert result.ok, result.output[-2000:]


def test_bad_xds_address_is_a_clear_error() -> None:
    proc = bootstrap("--node", "n", "--xds", "no-port-here")
    assert proc.returncode == 2 and "is not host:port or unix:/path" in proc.stderr

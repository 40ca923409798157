"""Data-path limits are explicit and configurable (issue 11, point 9): every cluster that carries
traffic has circuit breakers fit for a node proxy, and every proxy and tunnel stream the configured
idle timeout, instead of Envoy's defaults (1,024 per cluster; 5-minute stream idle timeout)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from google.protobuf import json_format

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from zpilot.envoy_binary import validate
from zpilot.translators import NodeResources, TranslateOptions
from zpilot.translators.limits import DataPathLimits
from zpilot.translators.static import static_bootstrap

from .render_util import ARTICLE, NODE_A, REPO, render

#: Clusters that carry no connection: nothing to limit.
UNLIMITED = {"BlackHoleCluster"}
#: Each outbound layout has its own clusters and proxies: every one of them is limited.
LAYOUTS = ["article", "linear"]


def _tcp_proxies(resources: NodeResources) -> list[tcp_proxy_pb2.TcpProxy]:
    out = []
    for listener in resources.listeners.values():
        chains = list(listener.filter_chains) + ([listener.default_filter_chain] if listener.HasField("default_filter_chain") else [])
        for chain in chains:
            for f in chain.filters:
                if f.typed_config.type_url.endswith("TcpProxy"):
                    out.append(tcp_proxy_pb2.TcpProxy.FromString(f.typed_config.value))
    return out


def _connection_managers(resources: NodeResources) -> list[hcm.HttpConnectionManager]:
    return [
        hcm.HttpConnectionManager.FromString(f.typed_config.value)
        for listener in resources.listeners.values()
        for chain in listener.filter_chains
        for f in chain.filters
        if f.typed_config.type_url.endswith("HttpConnectionManager")
    ]


def assert_limits(resources: NodeResources, limits: DataPathLimits) -> None:
    limited = [c for name, c in resources.clusters.items() if name not in UNLIMITED]
    assert len(limited) >= 7  # the article node: 3 fixed minus blackhole, 3 tunnels per identity, service ports
    for cluster in limited:
        [threshold] = cluster.circuit_breakers.thresholds
        assert (threshold.max_connections.value, threshold.max_pending_requests.value, threshold.max_requests.value) == (
            limits.max_connections,
            limits.max_pending_requests,
            limits.max_requests,
        ), cluster.name
    idle_ns = round(limits.idle_timeout * 1e9)
    proxies = _tcp_proxies(resources)
    assert proxies and all(p.idle_timeout.ToNanoseconds() == idle_ns and p.HasField("idle_timeout") for p in proxies)
    managers = _connection_managers(resources)
    assert managers
    for manager in managers:
        assert manager.HasField("stream_idle_timeout") and manager.stream_idle_timeout.ToNanoseconds() == idle_ns
        assert manager.common_http_protocol_options.idle_timeout.ToNanoseconds() == idle_ns
        [route] = manager.route_config.virtual_hosts[0].routes
        assert route.route.HasField("timeout") and route.route.timeout.ToNanoseconds() == 0
    tunnels = [c for c in limited if c.typed_extension_protocol_options]
    assert tunnels
    for cluster in tunnels:
        options = http_protocol_options_pb2.HttpProtocolOptions()
        next(iter(cluster.typed_extension_protocol_options.values())).Unpack(options)
        assert options.common_http_protocol_options.idle_timeout.ToNanoseconds() == idle_ns


@pytest.mark.parametrize("layout", LAYOUTS)
def test_defaults_are_explicit_and_fit_for_a_node_proxy(layout: str) -> None:
    """The first landing set none of these: Envoy refused the 1,025th concurrent tunnelled connection
    of a cluster, and cut a tunnel idle for 5 minutes."""
    resources, _, _ = render(ARTICLE, NODE_A, TranslateOptions(layout=layout))
    defaults = DataPathLimits()
    assert defaults.max_requests >= 100_000 and defaults.idle_timeout >= 3600
    assert_limits(resources, defaults)


@pytest.mark.envoy
@pytest.mark.parametrize(
    "limits",
    [DataPathLimits(), DataPathLimits(max_connections=10, max_pending_requests=20, max_requests=30, idle_timeout=0.25),
     DataPathLimits(idle_timeout=0)],
    ids=["defaults", "small", "no-idle-timeout"],
)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_configured_limits_reach_every_cluster_and_envoy_accepts_them(limits: DataPathLimits, layout: str) -> None:
    resources, secrets, _ = render(ARTICLE, NODE_A, TranslateOptions(layout=layout, limits=limits))
    assert_limits(resources, limits)
    config = json_format.MessageToDict(static_bootstrap(resources, secrets, admin_port=0), preserving_proto_field_name=True)
    result = validate(config)
    assert result.ok, result.output[-3000:]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_requests": 0}, {"max_connections": 2**32}, {"max_pending_requests": 1.5}, {"max_requests": True},
     {"idle_timeout": -1}, {"idle_timeout": float("nan")}, {"idle_timeout": float("inf")}, {"idle_timeout": 10**9}],
)
def test_limits_out_of_range_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DataPathLimits(**kwargs)


def test_render_flags() -> None:
    cmd = [sys.executable, "-m", "zpilot.cli", "render", "--manifests", str(ARTICLE), "--node", NODE_A, "--quiet"]
    flags = ["--max-connections", "11", "--max-pending-requests", "12", "--max-requests", "13", "--idle-timeout", "90.5"]
    proc = subprocess.run(cmd + flags, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    text = json.dumps(json.loads(proc.stdout))
    assert '"max_connections": 11, "max_pending_requests": 12, "max_requests": 13' in text
    assert '"stream_idle_timeout": "90.500s"' in text and '"idle_timeout": "90.500s"' in text
    for bad in (["--idle-timeout", "nan"], ["--max-requests", "0"], ["--max-connections", "many"]):
        proc = subprocess.run(cmd + bad, capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2 and f"argument {bad[0]}" in proc.stderr, proc.stderr


def test_serve_takes_the_same_flags() -> None:
    from zpilot.cli import build_parser
    from zpilot.commands.data_path_flags import limits_from

    args = build_parser().parse_args(
        ["serve", "--manifests", str(ARTICLE), "--max-requests", "7", "--idle-timeout", "0"]
    )
    assert limits_from(args) == DataPathLimits(max_requests=7, idle_timeout=0)
    assert limits_from(build_parser().parse_args(["serve", "--manifests", "x"])) == DataPathLimits()


def test_the_help_states_the_real_defaults() -> None:
    """The flags module must not import the translators (``--help`` stays light), so it states the
    defaults as text: they must be DataPathLimits' own."""
    from zpilot.commands.data_path_flags import HELP_DEFAULTS

    defaults = DataPathLimits()
    assert {k: float(v) for k, v in HELP_DEFAULTS.items()} == {k: float(getattr(defaults, k)) for k in HELP_DEFAULTS}

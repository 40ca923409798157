"""``zpilot bootstrap --service-stats`` and ``--pod-cluster-stats``: which of a ztunnel's stat names the
bootstrap's exclusion list leaves out. Envoy matches each name against the list's RE2 patterns, whole; Python's ``re`` reads these
patterns the same way, so the names are checked here against every cluster and tcp_proxy of a real
config, in both layouts (tests/xds/test_envoy_cluster_stats.py checks a real Envoy's /stats)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from zpilot import contract
from zpilot.kube.manifests import load_manifests
from zpilot.model.index import MeshIndex
from zpilot.translators import TranslateOptions, translate_node
from zpilot.translators.bootstrap import (
    TUNNEL_CERTIFICATE_STATS,
    TUNNEL_CLUSTER_BOOKKEEPING,
    BootstrapOptions,
    bootstrap,
    stats_config,
)
from zpilot.translators.names import PODS_ON_PREFIX

from ..layouts import LAYOUTS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "article"
#: A few of a cluster's traffic stats (made on its first connection, or at start with --cluster-stats eager).
TRAFFIC = ("upstream_cx_total", "upstream_cx_overflow", "upstream_rq_pending_overflow", "upstream_cx_rx_bytes_total",
           "bind_errors")
#: A few of its bookkeeping stats, made at start.
BOOKKEEPING = ("membership_total", "membership_healthy", "update_success", "version", "version_text",
               "circuit_breakers.default.cx_open", "circuit_breakers.high.rq_pending_open", "lb_healthy_panic",
               "assignment_stale", "max_host_weight", "init_fetch_timeout", "internal_upstream.no_metadata")


def excluded(service_stats: str, pod_cluster_stats: str = "all"):
    """Whether Envoy leaves a stat out: a prefix pattern on its name's first tokens (Envoy's fast path: one
    that ends in "."), a regex on the whole name."""
    patterns = stats_config(service_stats, pod_cluster_stats).stats_matcher.exclusion_list.patterns
    prefixes = [p.prefix for p in patterns if p.WhichOneof("match_pattern") == "prefix"]
    assert all(prefix.endswith(".") for prefix in prefixes), prefixes  # else Envoy makes a string of every name
    regexes = [re.compile(p.safe_regex.regex) for p in patterns if p.WhichOneof("match_pattern") == "safe_regex"]
    assert len(prefixes) + len(regexes) == len(patterns)
    return lambda name: any(name.startswith(p) for p in prefixes) or any(r.fullmatch(name) for r in regexes)


def as_envoy_spells(name: str) -> str:
    """A cluster's or stat prefix's name as Envoy writes it in a stat's name (``://`` -> ``_``)."""
    return name.replace("://", "_")


def cluster_stat_names(resources) -> set[str]:
    """Each cluster's name as its stats read it (``cluster.<this>.*``): its ``alt_stat_name``, else its name."""
    return {cluster.alt_stat_name or name for name, cluster in resources.clusters.items()}


def tcp_stat_prefixes(resources) -> set[str]:
    prefixes = set()
    for listener in resources.listeners.values():
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.typed_config.Is(tcp_proxy_pb2.TcpProxy.DESCRIPTOR):
                    proxy = tcp_proxy_pb2.TcpProxy()
                    f.typed_config.Unpack(proxy)
                    prefixes.add(proxy.stat_prefix)
    return prefixes


@pytest.fixture(scope="module")
def index() -> MeshIndex:
    manifests = load_manifests(EXAMPLE)
    return MeshIndex.build(manifests.cluster, manifests.problems)


def configs(index: MeshIndex, layout: str):
    nodes = sorted(index.nodes)
    return [translate_node(index, node, TranslateOptions(layout=layout)) for node in nodes]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_service_ports_and_tunnels_lose_stats(index: MeshIndex, layout: str) -> None:
    """A service port's cluster keeps its traffic counters (``traffic``) or none (``none``); a tunnel's cluster its
    traffic counters and its chain's tcp_proxy none, unless every stat is asked for (the cluster counts the same
    connections and bytes); every other cluster and tcp_proxy keeps all of its stats."""
    hosts = {s.hostname() for s in index.services}
    service_port = lambda name: any(f"_{host}" in name for host in hosts)  # noqa: E731 (both layouts' names)
    tunnel = lambda name: "tunnel_clus_spiffe:" in name and not service_port(name)  # noqa: E731
    # a linear tunnel chain's tcp_proxy: named after the chain (its identity's two chains share one cluster)
    tunnel_chain = lambda prefix: prefix.startswith(("tunnel.tunnel_spiffe:", "tunnel.tunnel_local_spiffe:"))  # noqa: E731
    clusters = {name for r in configs(index, layout) for name in cluster_stat_names(r)}
    prefixes = {name for r in configs(index, layout) for name in tcp_stat_prefixes(r)}
    assert any(map(service_port, clusters)) and not all(map(service_port, clusters)), clusters
    assert any(map(service_port, prefixes)) and not all(map(service_port, prefixes)), prefixes
    traffic, none, every = excluded("traffic"), excluded("none"), excluded("all")
    assert any(map(tunnel, clusters)), clusters
    assert layout != "linear" or any(map(tunnel_chain, prefixes)), prefixes
    for cluster in clusters:
        ours = service_port(cluster)
        for stat in BOOKKEEPING:
            name = f"cluster.{as_envoy_spells(cluster)}.{stat}"
            out = ours or tunnel(cluster)
            assert (traffic(name), none(name), every(name)) == (out, out, False), name
        for stat in TRAFFIC:
            name = f"cluster.{as_envoy_spells(cluster)}.{stat}"
            assert (traffic(name), none(name), every(name)) == (False, ours, False), name
    for prefix in prefixes:
        name = f"tcp.{as_envoy_spells(prefix)}.downstream_cx_total"
        out = service_port(prefix) or tunnel_chain(prefix)
        assert (traffic(name), none(name), every(name)) == (out, out, False), name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_none_leaves_out_a_service_port_by_prefixes_alone(index: MeshIndex, layout: str) -> None:
    """A service port's cluster's and tcp_proxy's stats start with the fixed ``svc`` token (``alt_stat_name``, stat
    prefix), so ``--service-stats none`` leaves every one of them out by a prefix (Envoy's fast path, no regex), and
    with ``--pod-cluster-stats all`` its exclusion list has no regex but the tunnels' certificates'."""
    hosts = {s.hostname() for s in index.services}
    for r in configs(index, layout):
        ports = {name: c for name, c in r.clusters.items() if any(f"_{host}" in name for host in hosts)}
        assert ports, r.clusters
        assert all(c.alt_stat_name == f"svc.{name}" for name, c in ports.items()), ports
        assert all(not c.alt_stat_name for name, c in r.clusters.items() if name not in ports)
        assert {p for p in tcp_stat_prefixes(r) if any(f"_{host}" in p for host in hosts)} == {
            f"svc.{name}" for name in ports}
    patterns = stats_config("none", "all").stats_matcher.exclusion_list.patterns
    assert [p.prefix for p in patterns[:-1]] == ["tcp.svc.", "cluster.svc.", "tcp.tunnel."]
    assert patterns[-1].safe_regex.regex == f"{TUNNEL_CERTIFICATE_STATS}|{TUNNEL_CLUSTER_BOOKKEEPING}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pod_cluster_stats_traffic_leaves_out_the_pods_clusters_bookkeeping_only(index: MeshIndex, layout: str) -> None:
    """``--pod-cluster-stats traffic`` (the default): each node's pods cluster (``pods_on_<node>``, the linear
    layout's) keeps its traffic counters and loses its bookkeeping, and its chain's tcp_proxy (``tcp.pods.*``) its
    stats, whatever ``--service-stats`` says; every other cluster and tcp_proxy keeps theirs; ``all`` leaves
    nothing of it out."""
    clusters = {name for r in configs(index, layout) for name in cluster_stat_names(r)}
    prefixes = {name for r in configs(index, layout) for name in tcp_stat_prefixes(r)}
    pods = {c for c in clusters if c.startswith(PODS_ON_PREFIX)}
    assert bool(pods) == (layout == "linear"), clusters
    hosts = {s.hostname() for s in index.services}
    # (a tunnel's cluster and chain lose theirs too unless every stat is asked for: the test above)
    others = {c for c in clusters - pods if not any(f"_{host}" in c for host in hosts) and "tunnel_clus_" not in c}
    assert others, clusters
    for service_stats in contract.SERVICE_STATS:
        traffic, every = excluded(service_stats, "traffic"), excluded(service_stats, "all")
        for cluster in pods | {"pods_on_ip-10-0-0-1.ec2.internal"}:
            for stat in BOOKKEEPING:
                name = f"cluster.{cluster}.{stat}"
                assert (traffic(name), every(name)) == (True, False), name
            for stat in TRAFFIC:
                assert not traffic(f"cluster.{cluster}.{stat}"), (cluster, stat)
        for cluster in others:
            for stat in BOOKKEEPING + TRAFFIC:
                assert not traffic(f"cluster.{cluster}.{stat}"), (cluster, stat)
        pod_chains = {p for p in prefixes if p.startswith(f"pods.{PODS_ON_PREFIX}")}
        assert len(pod_chains) == len(pods), (pod_chains, pods)
        for prefix in prefixes - {p for p in prefixes if any(f"_{host}" in p for host in hosts) or p.startswith("tunnel.")}:
            name = f"tcp.{as_envoy_spells(prefix)}.downstream_cx_total"
            assert (traffic(name), every(name)) == (prefix in pod_chains, False), prefix


def test_the_default_leaves_out_the_pods_clusters_bookkeeping() -> None:
    config = bootstrap(BootstrapOptions(node="n", xds="127.0.0.1:15010", service_stats="all")).stats_config
    assert contract.DEFAULT_POD_CLUSTER_STATS == "traffic"
    pods, tunnels, pattern = config.stats_matcher.exclusion_list.patterns
    assert pods.prefix == "tcp.pods."  # each node's pods chain's tcp_proxy
    assert tunnels.prefix == "tcp.tunnel."  # each tunnel chain's (its cluster counts the same)
    assert re.fullmatch(pattern.safe_regex.regex, "cluster.pods_on_node-0.membership_total")
    assert not re.fullmatch(pattern.safe_regex.regex, "cluster.pods_on_node-0.upstream_cx_total")
    assert not re.fullmatch(pattern.safe_regex.regex, "cluster.tcp-0_svc-0.ns-0.svc.cluster.local.membership_total")
    with pytest.raises(ValueError, match="pod cluster stats 'none' is not one of traffic, all"):
        bootstrap(BootstrapOptions(node="n", xds="127.0.0.1:15010", pod_cluster_stats="none"))


@pytest.mark.parametrize("name", [
    "server.live", "listener_manager.total_listeners_active", "cluster_manager.active_clusters",
    "http.inbound_hcm.rbac.allow.denied", "listener.10.0.0.1_15008.ssl.fail_verify_san",
    "cluster.xds-grpc.membership_total", "cluster.pods_on_ip-10-0-0-1.ec2.internal.membership_total",
    "cluster.outbound_tunnel_clus_spiffe_td.svc.example/ns/a/sa/b.ssl.fail_verify_san",  # Envoy's "://" -> "_"
    "tcp.inbound_guard_plaintext.downstream_cx_total",
    # the linear layout's pod-direct chain and cluster, named after an identity: a trust domain, or a
    # service account, with ".svc." in it is no service port
    "cluster.outbound_pod_internal_to_spiffe_a.b.svc.c/ns/x/sa/y.membership_total",
    "tcp.outbound_pod_internal_to_spiffe_a.b.svc.c/ns/x/sa/y.downstream_cx_total",
    "cluster.outbound_pod_internal_to_spiffe_td/ns/x/sa/y.z.svc.w.membership_total",
])
def test_nothing_else_is_left_out(name: str) -> None:
    """Names of other kinds, among them nodes and trust domains with dots (even a ``.svc.``)."""
    assert not excluded("traffic")(name) and not excluded("none")(name)
    if not name.startswith(f"cluster.{PODS_ON_PREFIX}"):
        assert not excluded("traffic", "traffic")(name) and not excluded("none", "traffic")(name)


def test_all_is_envoy_s_default_and_bad_values_are_refused() -> None:
    options = BootstrapOptions(node="n", xds="127.0.0.1:15010", service_stats="all", pod_cluster_stats="all")
    assert not bootstrap(options).stats_config.HasField("stats_matcher")  # its stat tags only (test_bootstrap_tags.py)
    assert BootstrapOptions(node="n", xds="x:1").service_stats == contract.DEFAULT_SERVICE_STATS == "traffic"
    with pytest.raises(ValueError, match="service stats 'some' is not one of traffic, none, all"):
        bootstrap(BootstrapOptions(node="n", xds="127.0.0.1:15010", service_stats="some"))


# a tunnel cluster (either layout's), and one of the article layout's pod tunnels
TUNNELS = ("outbound_tunnel_clus_spiffe_td/ns/a/sa/b", "outbound_pod_local_tunnel_clus_spiffe_td.example.com/ns/a/sa/b.v1")
SECRETS = ("ROOTCA", "spiffe://td/ns/a/sa/b~b-5644bdc767-2dfg7~85c8c34e-7ae3-4d29-9582-0819e2b10c69")


@pytest.mark.parametrize("service_stats", contract.SERVICE_STATS)
@pytest.mark.parametrize("pod_cluster_stats", contract.POD_CLUSTER_STATS)
def test_tunnels_certificate_stats_are_left_out_unless_every_stat_is_asked_for(service_stats, pod_cluster_stats) -> None:
    """A tunnel's certificate expiry stats repeat the inbound listener's for the same secrets; left out, the
    certificate tag is not tried on every cluster stat. With every stat asked for they are made, and tagged. Its
    bookkeeping stats likewise (a node has a tunnel cluster per local identity); its traffic counters stay."""
    every = service_stats == pod_cluster_stats == "all"
    out = excluded(service_stats, pod_cluster_stats)
    for tunnel in TUNNELS:
        for secret in SECRETS:
            assert out(f"cluster.{tunnel}.ssl.certificate.{secret}.expiration_unix_time_seconds") == (not every)
        for stat in ("ssl.handshake", "ssl.fail_verify_san", "upstream_cx_total"):
            assert not out(f"cluster.{tunnel}.{stat}"), (tunnel, stat)
        for stat in BOOKKEEPING:  # a tunnel cluster's bookkeeping, likewise (TUNNEL_CLUSTER_BOOKKEEPING)
            assert out(f"cluster.{tunnel}.{stat}") == (not every), (tunnel, stat)
    for kept in [f"listener.10.0.0.1_15008.ssl.certificate.{s}.expiration_unix_time_seconds" for s in SECRETS] + [
            "cluster.xds-grpc.ssl.certificate.xds-client-certificate.expiration_unix_time_seconds"]:
        assert not out(kept), kept
    tags = stats_config(service_stats, pod_cluster_stats).stats_tags
    assert [t.regex.split("\\.")[0] for t in tags if t.tag_name == "envoy.tls_certificate"] == (
        ["^listener", "^cluster"] if every else ["^listener"])

"""The bootstrap's stat tags on the names zpilot makes, read as Envoy reads a TagSpecifier: the regex's first
group is taken out of the metric's name, the second is the tag's value (Envoy runs them with std::regex,
ECMAScript: Python's re agrees with it on these regexes: alternatives tried in order, lazy repeats, lookahead). A real Envoy reads them in
tests/xds/test_envoy_cluster_stats.py."""

from __future__ import annotations

import re

import pytest

from zpilot import contract
from zpilot.translators.bootstrap import (
    MISSING_STATS_CONFIG_FIELDS,
    NAME_TAGS,
    PER_CHAIN_TCP_STATS,
    BootstrapOptions,
    bootstrap_document,
    stats_tags,
)
from zpilot.translators.names import stat_name_tag_value

#: Each tag name's regexes in the bootstrap's order (the certificate's has two: Envoy takes the first that matches).
TAGS: dict[str, list[re.Pattern[str]]] = {}
for _spec in stats_tags():
    TAGS.setdefault(_spec.tag_name, []).append(re.compile(_spec.regex))
SERVICE = "tcp-0_svc-0.ns-0.svc.cluster.local"
TUNNEL = "outbound_tunnel_clus_spiffe_td.example.com/ns/ns-0/sa/sa-0"  # Envoy writes "://" as "_"
ARTICLE = "spiffe_cluster.local/ns/default/sa/sleep_to_http_details.default.svc.cluster.local_outbound_internal"
POD_CERT = "spiffe_cluster.local/ns/default/sa/sleep~sleep-5644bdc767-2dfg7~85c8c34e-7ae3-4d29-9582-0819e2b10c69"
DOTTED_NODE = "pods_on_ip-10-0-1-7.ec2.internal"  # an EKS node's name
DOTTED_IDENTITY = "spiffe://td.example.com/ns/ns-0/sa/sa.v1.reviews"  # a ServiceAccount's name may hold dots
DOTTED_TUNNEL = "outbound_tunnel_clus_" + DOTTED_IDENTITY.replace("://", "_")


def tag(name: str, stat: str) -> tuple[str, str] | None:
    """(value, the stat's name without the tag) of tag ``name`` in ``stat``, None if it does not match."""
    match = next(filter(None, (regex.search(stat) for regex in TAGS[name])), None)
    if match is None:
        return None
    return match.group(2), stat[:match.start(1)] + stat[match.end(1):]


@pytest.mark.parametrize(("name", "stat", "value", "rest"), [
    ("envoy.cluster_name", f"cluster.{SERVICE}.upstream_cx_total", SERVICE, "cluster.upstream_cx_total"),
    ("envoy.cluster_name", f"cluster.{SERVICE}.circuit_breakers.default.cx_open", SERVICE, "cluster.circuit_breakers.default.cx_open"),
    ("envoy.cluster_name", f"cluster.{TUNNEL}.ssl.fail_verify_san", TUNNEL, "cluster.ssl.fail_verify_san"),
    ("envoy.cluster_name", f"cluster.{ARTICLE}.upstream_cx_total", ARTICLE, "cluster.upstream_cx_total"),
    ("envoy.cluster_name", "cluster.xds-grpc.upstream_cx_total", "xds-grpc", "cluster.upstream_cx_total"),
    # a node's name and a ServiceAccount's may hold dots: whole, up to the stat after them
    ("envoy.cluster_name", f"cluster.{DOTTED_NODE}.upstream_cx_total", DOTTED_NODE, "cluster.upstream_cx_total"),
    ("envoy.cluster_name", f"cluster.{DOTTED_NODE}.version", DOTTED_NODE, "cluster.version"),
    ("envoy.cluster_name", f"cluster.{DOTTED_NODE}.default.total_match_count", DOTTED_NODE, "cluster.default.total_match_count"),
    ("envoy.cluster_name", f"cluster.{DOTTED_NODE}.tlsMode-disabled.total_match_count", DOTTED_NODE,
     "cluster.tlsMode-disabled.total_match_count"),
    ("envoy.cluster_name", "cluster.pods_on_n.version.version", "pods_on_n.version", "cluster.version"),
    ("envoy.cluster_name", "cluster.pods_on_node-1.membership_total", "pods_on_node-1", "cluster.membership_total"),
    ("envoy.cluster_name", f"cluster.{DOTTED_TUNNEL}.ssl.handshake", DOTTED_TUNNEL, "cluster.ssl.handshake"),
    ("envoy.cluster_name", f"cluster.{DOTTED_TUNNEL}.http2.trailers", DOTTED_TUNNEL, "cluster.http2.trailers"),
    ("envoy.cluster_name", f"cluster.{DOTTED_TUNNEL}.internal.upstream_rq_200", DOTTED_TUNNEL,
     "cluster.internal.upstream_rq_200"),
    ("envoy.cluster_name", f"cluster.{DOTTED_TUNNEL}.circuit_breakers.default.cx_open", DOTTED_TUNNEL,
     "cluster.circuit_breakers.default.cx_open"),
    ("envoy.tcp_prefix", f"tcp.{DOTTED_NODE}.downstream_cx_total", DOTTED_NODE, "tcp.downstream_cx_total"),
    ("envoy.tcp_prefix", f"tcp.{DOTTED_TUNNEL}.tcpproxy_tunneling.rq_total", DOTTED_TUNNEL, "tcp.tcpproxy_tunneling.rq_total"),
    ("envoy.listener_address", f"listener.envoy_internal_{DOTTED_TUNNEL}.worker_0.downstream_cx_total",
     f"envoy_internal_{DOTTED_TUNNEL}", "listener.worker_0.downstream_cx_total"),
    ("envoy.xds_resource_name", f"sds.{DOTTED_IDENTITY}.update_success", DOTTED_IDENTITY, "sds.update_success"),
    ("envoy.xds_resource_name", f"sds.{DOTTED_IDENTITY}.version", DOTTED_IDENTITY, "sds.version"),
    ("envoy.tls_certificate", f"cluster.{DOTTED_TUNNEL}.ssl.certificate.{DOTTED_IDENTITY}.expiration_unix_time_seconds",
     DOTTED_IDENTITY, f"cluster.{DOTTED_TUNNEL}.ssl.certificate.expiration_unix_time_seconds"),
    ("envoy.tcp_prefix", f"tcp.{SERVICE}.downstream_cx_total", SERVICE, "tcp.downstream_cx_total"),
    ("envoy.tcp_prefix", f"tcp.{TUNNEL}.downstream_cx_total", TUNNEL, "tcp.downstream_cx_total"),
    # the linear layout's service port tcp_proxy: "svc." leads its stats (names.service_tcp_stat_prefix), out with it
    ("envoy.tcp_prefix", f"tcp.svc.{SERVICE}.downstream_cx_total", SERVICE, "tcp.downstream_cx_total"),
    # the linear layout's chain to a node's pods: "pods." leads its stats (names.pods_tcp_stat_prefix), out with it
    ("envoy.tcp_prefix", "tcp.pods.pods_on_node-1.downstream_cx_total", "pods_on_node-1", "tcp.downstream_cx_total"),
    ("envoy.tcp_prefix", f"tcp.pods.{DOTTED_NODE}.idle_timeout", DOTTED_NODE, "tcp.idle_timeout"),
    ("envoy.tcp_prefix", "tcp.rbac.allowed", "rbac", "tcp.allowed"),  # the inbound RBAC filter's "tcp." prefix
    ("envoy.tcp_prefix", "tcp.virtual_inbound_plaintext.downstream_cx_total", "virtual_inbound_plaintext",
     "tcp.downstream_cx_total"),
    ("envoy.xds_resource_name", f"sds.{POD_CERT}.update_success", POD_CERT, "sds.update_success"),
    ("envoy.xds_resource_name", "sds.ROOTCA.update_success", "ROOTCA", "sds.update_success"),
    # a UID that is no lowercase UUID (the regex tries one first, for Envoy's std::regex): whole all the same
    ("envoy.xds_resource_name", "sds.spiffe_td/ns/a/sa/b~p-1~0123ABCD-x~y.update_success", "spiffe_td/ns/a/sa/b~p-1~0123ABCD-x~y",
     "sds.update_success"),
    ("envoy.xds_resource_name", f"sds.{POD_CERT}x.update_success", f"{POD_CERT}x", "sds.update_success"),
    ("envoy.tls_certificate", f"listener.10.0.0.1_15008.ssl.certificate.{POD_CERT.replace('spiffe_', 'spiffe://')}"
     ".expiration_unix_time_seconds", POD_CERT.replace("spiffe_", "spiffe://"),
     "listener.10.0.0.1_15008.ssl.certificate.expiration_unix_time_seconds"),
    ("envoy.tls_certificate", f"cluster.{TUNNEL}.ssl.certificate.ROOTCA.expiration_unix_time_seconds", "ROOTCA",
     f"cluster.{TUNNEL}.ssl.certificate.expiration_unix_time_seconds"),
    ("envoy.listener_address", "listener.10.0.0.1_15008.downstream_cx_total", "10.0.0.1_15008", "listener.downstream_cx_total"),
    ("envoy.listener_address", "listener.[fd00__1]_15008.downstream_cx_total", "[fd00__1]_15008", "listener.downstream_cx_total"),
    ("envoy.listener_address", "listener.envoy_internal_outbound_tunnel_lis_spiffe_td.example.com/ns/a/sa/b.downstream_cx_total",
     "envoy_internal_outbound_tunnel_lis_spiffe_td.example.com/ns/a/sa/b", "listener.downstream_cx_total"),
    ("envoy.listener_address", "listener.envoy_internal_pod_select_lis.downstream_cx_total", "envoy_internal_pod_select_lis",
     "listener.downstream_cx_total"),
    ("envoy.listener_address", "listener.admin.downstream_cx_total", None, None),  # untagged, as Envoy leaves it
    ("envoy.listener_address", "listener.administrator.downstream_cx_total", "administrator", "listener.downstream_cx_total"),
])
def test_a_name_zpilot_makes_is_one_tag_value(name, stat, value, rest) -> None:
    assert tag(name, stat) == (None if value is None else (value, rest))


@pytest.mark.parametrize("stat", [
    f"http.inbound_hcm.ssl.certificate.{POD_CERT}.expiration_unix_time_seconds",  # no such stat: neither tries it
    f"sds.{POD_CERT}.update_success",
])
def test_only_a_listener_or_cluster_stat_carries_the_certificate_tag(stat) -> None:
    assert tag("envoy.tls_certificate", stat) is None


@pytest.mark.parametrize("stat", [f"tcp.{value}.downstream_cx_total" for value in PER_CHAIN_TCP_STATS] + [
    f"tcp.{value}x.downstream_cx_total" for value in PER_CHAIN_TCP_STATS] + [f"tcp.{value}" for value in PER_CHAIN_TCP_STATS])
def test_the_per_chain_tcp_values_tried_first_change_no_tag(stat) -> None:
    """The tcp tag tries the names each inbound chain repeats first, for Envoy's sake (std::regex tries each
    alternative in order, one step per character): the tag is what the alternatives after them take."""
    (regex,) = [r for tag_name, r in NAME_TAGS if tag_name == "envoy.tcp_prefix"]
    without = re.compile(regex.format(stat_name_tag_value(contract.CLUSTER_DOMAIN)))
    found, expected = TAGS["envoy.tcp_prefix"][0].search(stat), without.search(stat)
    assert (found and found.span(1), found and found.group(2)) == (expected and expected.span(1), expected and expected.group(2))


def test_every_tag_regex_starts_with_its_first_token() -> None:
    """Envoy runs a ``stats_tags`` regex (with std::regex, backtracking) only on the stats whose first token is
    the regex's literal first one; a regex without one would be tried on every stat of every scope (each
    filter chain's own), which cost a real Envoy at R about 0.2 CPU-s to LIVE for the certificate's alone."""
    for spec in stats_tags():
        assert re.match(r"\^[A-Za-z0-9_]+\\\.", spec.regex), (spec.tag_name, spec.regex)


def test_envoy_reads_the_tags_in_place_of_its_own() -> None:
    """Without ``allow_default_tag_overrides`` Envoy keeps its own extractor of a tag name and ignores ours."""
    document = bootstrap_document(BootstrapOptions(node="n", xds="127.0.0.1:15010", service_stats="all",
                                                    pod_cluster_stats="all"))
    assert MISSING_STATS_CONFIG_FIELDS == {"allow_default_tag_overrides": True}
    assert document["stats_config"]["allow_default_tag_overrides"] is True
    assert {t["tag_name"] for t in document["stats_config"]["stats_tags"]} == set(TAGS)
    assert "stats_matcher" not in document["stats_config"]

"""Spike (issue 13, a real Envoy at R): where node-0's memory and time to LIVE go, part by part.

``bench/scale.py``'s envoy phase serves node-0's config as zpilot makes it; this serves it with
one part changed, to see what that part costs a real Envoy 1.40 (run by hand; about 8 s a run):

    as-served        node-0's config as zpilot makes it
    no-identity      the pods' endpoints (``pods_on_<node>``) without their ``tunnel`` metadata
    no-pod-endpoints those assignments with the passthrough endpoint alone
    locality         each node's pods grouped by identity into localities that carry ``tunnel`` once
    unique-identity  each pod's ``tunnel`` metadata made unique (its address beside its identity)
    svc-one-endpoint each service port's assignment with its first endpoint alone (2,000 endpoints, not 20,000)
    one-tunnel-cluster  one tunnel cluster per local identity, not two: both its chains name it and give it its
                     address (the destination's IP on the HBONE or the same-node hairpin port) in filter state,
                     for measuring (round twelve: 720 M fewer instructions to LIVE at R; no traffic was sent).
                     Served since round thirteen (outbound_linear.py): on a config that has no second tunnel
                     cluster this variant changes nothing, and is as-served
    typed            the identity as typed metadata (``envoy.transport_sockets.proxy_protocol``
                     ``PerHostConfig``, a TLV per host) instead of a ``tunnel`` Struct

or as served with the bootstrap's stats settings changed (as served: ``--service-stats traffic``,
``--pod-cluster-stats traffic``):

    stats-all        ``--service-stats all``: every stat of every service port (as served until round five)
    stats-none       ``--service-stats none``
    tags-min         stats-all with ``use_all_default_tags: false`` and six of Envoy's tag extractors
    tags-min+none    both; tags-min+traffic: tags-min as served
    slow-noop        stats-all with an exclusion matcher that matches nothing (the matcher's own cost)
    reject-all       no stats at all (what all of them cost)
    tags-none        no ``stats_tags`` (what zpilot's stat tags cost)
    cert-tags-none   no certificate tag (what its two regexes cost)
    cert-cluster-tag-out  the TLS clusters' certificate tag alone left out (as served unless every stat is asked for)
    tags-round5      the certificate's tag as round five had it, unanchored (tried on every stat name)
    pods-stats-all   ``--pod-cluster-stats all``: every stat of the per-node pod clusters (``pods_on_<node>``),
                     as served until round eight
    pods-tcp-out     their tcp_proxies' stats left out too
    listener-tags-out      neither of zpilot's ``listener.`` tags (address, certificate): what they cost the inbound
                           chains' listener stats (round eleven; the certificate would stay in the metric's name)
    listener-addr-default  zpilot's listener address tag left to Envoy's own (RE2), which takes an address whole
    matcher-prefixes-only  the exclusion list's regex left out, its prefixes kept: what the matcher's slow path costs
                           the inbound chains, whose names it leaves out none of (CDS then makes more stats)

or both changed (round ten):

    svc-reject       each service port's cluster with a stats matcher of its own that rejects all
                     (``typed_filter_metadata["envoy.stats_matcher"]``, Envoy 1.38+), in place of ``--service-stats none``'s
                     prefix on the bootstrap's list
    no-regex         ``--service-stats none`` and each pods cluster's stats left out by a prefix too: an exclusion list of
                     prefixes alone, so Envoy never makes a stat's name a string to match it

or both changed, the stats options as served (round eleven):

    svc-extra-token  each service port's cluster's stat name one token longer (``svc.x.<name>``), its regex and tag
                     following: what one token of those names costs (each of the 94,000 bookkeeping names at R is
                     made a string, matched and remembered as rejected)
    tunnel-tcp-out   (round twelve) each tunnel chain's tcp_proxy stats under a ``tunnel`` token, left out by its prefix
    tunnel-bookkeeping-out  (round twelve) the tunnel clusters' bookkeeping stats left out by the served regex
                     (both measured on round twelve's main before it served them; served since, so now as-served)
    svc-traffic-own  ``--service-stats traffic`` done by a stats matcher of each service port's cluster's own that
                     leaves out its bookkeeping stats by token prefixes alone (Envoy's fast path), its traffic counters
                     kept (the server would have to know each ztunnel's setting)

Envoy runs with ``contract.ENVOY_FLAGS``, as the chart runs it (``--without-envoy-flags``: without them);
``--envoy-arg=ARG`` (repeated) gives it more.
``--callgrind`` runs Envoy under ``valgrind --tool=callgrind`` instead (about 3 minutes a run) and reports its
main thread's instructions per step of its start (dumped as its log announces each: CDS applied, the
clusters warm, the inbound, plaintext and outbound listeners added, and LIVE): a count the machine's load does not
change, where the binary's missing symbols leave ``perf`` only addresses (docs/scale.md, round six). Under
valgrind Envoy is slow enough that its LDS initial fetch times out and its ADS stream may be reset (then it
takes the whole config again); a run whose log shows a reset before its last listener, or before LIVE, is
reported as such.

Only ``as-served`` pins identities: the others are for measuring (Envoy's ``internal_upstream``
hands an internal listener a host's or its cluster's ``filter_metadata``, never its locality's, and
no typed metadata). Per run: seconds to ``/ready`` LIVE, Envoy CPU seconds, RSS and tcmalloc's
``/memory`` then. Runs are interleaved; the minimum is the least disturbed on a shared machine.

    PYTHONPATH=$PWD python3 bench/spikes/envoy_at_r_variants.py --runs 5 as-served no-identity
    PYTHONPATH=$PWD python3 bench/spikes/envoy_at_r_variants.py --census --runs 1 as-served stats-all  # stats by kind
    PYTHONPATH=$PWD python3 bench/spikes/envoy_at_r_variants.py --callgrind --runs 1 as-served tags-round5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for scale.py's helpers

import scale  # noqa: E402

from zpilot import contract  # noqa: E402
from zpilot.synthetic import Shape, node_name  # noqa: E402
from zpilot.translators.names import SERVICE_PORT_STAT_NAME  # noqa: E402

PODS_ON = "pods_on_"
PROXY_PROTOCOL_HOST_TLVS = "envoy.transport_sockets.proxy_protocol"


def _pod_assignments(resources):
    for name in [n for n in resources.endpoints if n.startswith(PODS_ON)]:
        cla = type(resources.endpoints[name])()
        cla.CopyFrom(resources.endpoints[name])  # the translators' own objects are shared: copy
        resources.endpoints[name] = cla
        yield cla


def _identity(lb) -> str | None:
    tunnel = lb.metadata.filter_metadata.get(contract.TUNNEL_METADATA)
    return tunnel.fields[contract.TUNNEL_IDENTITY].string_value if tunnel is not None else None


def no_identity(resources) -> None:
    for cla in _pod_assignments(resources):
        for lb in (lb for group in cla.endpoints for lb in group.lb_endpoints if _identity(lb)):
            lb.ClearField("metadata")


def no_pod_endpoints(resources) -> None:
    for cla in _pod_assignments(resources):
        for group in cla.endpoints:
            kept = [lb for lb in group.lb_endpoints if not _identity(lb)]
            del group.lb_endpoints[:]
            group.lb_endpoints.extend(kept)


def locality(resources) -> None:
    for cla in _pod_assignments(resources):
        by_identity: dict[str, list] = {}
        others = []
        for lb in (lb for group in cla.endpoints for lb in group.lb_endpoints):
            identity = _identity(lb)
            if identity:
                lb.ClearField("metadata")
                by_identity.setdefault(identity, []).append(lb)
            else:
                others.append(lb)
        del cla.endpoints[:]
        for i, (identity, lbs) in enumerate(sorted(by_identity.items())):
            group = cla.endpoints.add()
            group.locality.sub_zone = f"identity-{i}"
            group.metadata.filter_metadata[contract.TUNNEL_METADATA].fields[contract.TUNNEL_IDENTITY].string_value = identity
            group.lb_endpoints.extend(lbs)
        cla.endpoints.add().lb_endpoints.extend(others)


def typed(resources) -> None:
    from envoy.config.core.v3 import proxy_protocol_pb2

    for cla in _pod_assignments(resources):
        for lb in (lb for group in cla.endpoints for lb in group.lb_endpoints):
            identity = _identity(lb)
            if identity:
                lb.ClearField("metadata")
                tlvs = proxy_protocol_pb2.PerHostConfig(added_tlvs=[proxy_protocol_pb2.TlvEntry(type=0xE2, value=identity.encode())])
                lb.metadata.typed_filter_metadata[PROXY_PROTOCOL_HOST_TLVS].Pack(tlvs)


def unique_identity(resources) -> None:
    """Each pod's ``tunnel`` metadata made unique by its address beside its identity: Envoy keeps a host's metadata
    in a pool shared by equal values, found by hash and compared field by field (protobuf's MessageDifferencer)
    when it is there already, as for the 100 pods of a node that share an identity."""
    for cla in _pod_assignments(resources):
        for lb in (lb for group in cla.endpoints for lb in group.lb_endpoints if _identity(lb)):
            tunnel = lb.metadata.filter_metadata[contract.TUNNEL_METADATA]
            tunnel.fields["pod"].string_value = lb.endpoint.address.envoy_internal_address.endpoint_id


def svc_one_endpoint(resources) -> None:
    """Each service port's assignment with its first endpoint alone: what EDS costs per endpoint, per assignment."""
    for name in [n for n in resources.endpoints if not n.startswith(PODS_ON)]:
        cla = type(resources.endpoints[name])()
        cla.CopyFrom(resources.endpoints[name])
        for group in cla.endpoints:
            del group.lb_endpoints[1:]
        resources.endpoints[name] = cla


def _set_original_dst(port: int):
    """A ``set_filter_state`` network filter giving the ORIGINAL_DST cluster its address: the connection's
    destination IP on ``port`` (``envoy.network.transport_socket.original_dst_address``)."""
    from envoy.config.core.v3 import substitution_format_string_pb2
    from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
    from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2
    from envoy.config.listener.v3 import listener_components_pb2
    from zpilot.translators.envoy_common import pack

    value = value_pb2.FilterStateValue(
        object_key="envoy.network.transport_socket.original_dst_address",
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source={"inline_string": f"%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:{port}"}),
        shared_with_upstream=value_pb2.FilterStateValue.ONCE,
    )
    return listener_components_pb2.Filter(name="envoy.filters.network.set_filter_state",
                                          typed_config=pack(set_filter_state_pb2.Config(on_new_connection=[value])))


def one_tunnel_cluster(resources) -> None:
    """One tunnel cluster per local identity, not two (to another node, to this one): each identity's two
    chains name the same cluster, without a port override, and set its address (the destination's IP on the
    HBONE port or on the same-node hairpin port) in filter state: what a node's second cluster per identity costs
    (round twelve: R's nodes now host 100 identities each)."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
    from zpilot.translators import names

    if not any(n.startswith("outbound_local_tunnel_clus_") for n in resources.clusters):
        return  # served so since round thirteen: the chains already set the address (a second filter would be measured)
    for name in [n for n in resources.clusters if n.startswith("outbound_local_tunnel_clus_")]:
        del resources.clusters[name]
    for name in [n for n in resources.clusters if n.startswith("outbound_tunnel_clus_")]:
        cluster = type(resources.clusters[name])()
        cluster.CopyFrom(resources.clusters[name])
        cluster.original_dst_lb_config.ClearField("upstream_port_override")
        resources.clusters[name] = cluster
    listener = listener_pb2.Listener()
    listener.CopyFrom(resources.listeners[contract.LINEAR_TUNNEL_LISTENER])
    for chain in listener.filter_chains:
        local = chain.name.startswith("tunnel_local_")
        proxy = tcp_proxy_pb2.TcpProxy()
        chain.filters[-1].typed_config.Unpack(proxy)
        if local:
            proxy.cluster = proxy.cluster.replace("outbound_local_tunnel_clus_", "outbound_tunnel_clus_")
        chain.filters[-1].typed_config.Pack(proxy)
        chain.filters.insert(len(chain.filters) - 1,
                             _set_original_dst(contract.PORT_HBONE_LOCAL if local else contract.PORT_HBONE))
    resources.listeners[contract.LINEAR_TUNNEL_LISTENER] = listener


VARIANTS: dict[str, Callable | None] = {
    "as-served": None, "no-identity": no_identity, "no-pod-endpoints": no_pod_endpoints, "locality": locality, "typed": typed,
    "svc-one-endpoint": svc_one_endpoint, "unique-identity": unique_identity, "one-tunnel-cluster": one_tunnel_cluster,
}

# -- the bootstrap's stats settings (node-0's config as served, the bootstrap changed) ------------

#: Envoy's default tag extractors kept by name (``use_all_default_tags: false`` drops the others).
KEPT_TAGS = ("envoy.cluster_name", "envoy.listener_address", "envoy.tcp_prefix", "envoy.http_conn_manager_prefix",
             "envoy.response_code", "envoy.response_code_class")


def tags_min(config) -> None:
    config.stats_config.use_all_default_tags.value = False
    for name in KEPT_TAGS:
        config.stats_config.stats_tags.add(tag_name=name)


def slow_noop(config) -> None:
    """An exclusion matcher that matches nothing and is not a token prefix: what the matcher's slow
    path (each stat's name made a string) costs on its own."""
    config.stats_config.stats_matcher.exclusion_list.patterns.add().prefix = "zzz"


def reject_all(config) -> None:
    config.stats_config.stats_matcher.reject_all = True


def tags_none(config) -> None:
    del config.stats_config.stats_tags[:]


def cert_tags_none(config) -> None:
    """No certificate tag (what the two of ``envoy.tls_certificate``, a TLS listener's and a TLS cluster's, cost)."""
    kept = [t for t in config.stats_config.stats_tags if t.tag_name != "envoy.tls_certificate"]
    del config.stats_config.stats_tags[:]
    config.stats_config.stats_tags.extend(kept)


def cert_cluster_tag_out(config) -> None:
    """The certificate tag of the TLS clusters left out (the listeners' kept): what it costs on every cluster stat."""
    kept = [t for t in config.stats_config.stats_tags
            if not (t.tag_name == "envoy.tls_certificate" and t.regex.startswith(r"^cluster\."))]
    del config.stats_config.stats_tags[:]
    config.stats_config.stats_tags.extend(kept)


def listener_tags_out(config) -> None:
    """Neither of zpilot's two ``listener.`` tags (the address, the certificate): what they cost on each inbound
    chain's listener stats (measuring only: the certificate would stay in the metric's name)."""
    kept = [t for t in config.stats_config.stats_tags if not t.regex.startswith(r"^listener\.")]
    del config.stats_config.stats_tags[:]
    config.stats_config.stats_tags.extend(kept)


def listener_addr_default(config) -> None:
    """zpilot's listener address tag left out: Envoy's own (RE2) takes an address-named listener's."""
    kept = [t for t in config.stats_config.stats_tags if t.tag_name != "envoy.listener_address"]
    del config.stats_config.stats_tags[:]
    config.stats_config.stats_tags.extend(kept)


def matcher_prefixes_only(config) -> None:
    """The exclusion list's regex left out (its prefixes kept): what the matcher's slow path (each name made a
    string and matched) costs the steps whose names it leaves out none of, the inbound chains' (measuring only:
    CDS then makes the service ports' and pods clusters' bookkeeping stats)."""
    patterns = [p for p in config.stats_config.stats_matcher.exclusion_list.patterns if not p.HasField("safe_regex")]
    del config.stats_config.stats_matcher.exclusion_list.patterns[:]
    config.stats_config.stats_matcher.exclusion_list.patterns.extend(patterns)


def tags_round5(config) -> None:
    """The certificate's tag as one regex without a literal first token, as round five wrote it."""
    from zpilot.translators.names import SECRET_STAT_TAG_VALUE

    kept = [t for t in config.stats_config.stats_tags if t.tag_name != "envoy.tls_certificate"]
    del config.stats_config.stats_tags[:]
    config.stats_config.stats_tags.extend(kept)
    config.stats_config.stats_tags.add(
        tag_name="envoy.tls_certificate", regex=rf"\.ssl\.certificate\.(({SECRET_STAT_TAG_VALUE})\.)")


def pods_tcp_out(config) -> None:
    """The per-node pod clusters' tcp_proxies' stats left out too (as ``--service-stats traffic`` does a service port's)."""
    from zpilot.translators.bootstrap import _regex
    from zpilot.translators.names import PODS_ON_PREFIX

    config.stats_config.stats_matcher.exclusion_list.patterns.append(_regex(rf"tcp\.{PODS_ON_PREFIX}[^/]*"))


# -- a matcher of each service port's cluster's own, or no regex at all (config and bootstrap changed) ----------


def _service_port_clusters(resources):
    from zpilot.translators.names import SERVICE_PORT_STAT_REST

    for name in [n for n in resources.clusters if re.fullmatch(SERVICE_PORT_STAT_NAME + SERVICE_PORT_STAT_REST, n)]:
        cluster = type(resources.clusters[name])()
        cluster.CopyFrom(resources.clusters[name])
        resources.clusters[name] = cluster
        yield cluster


def pods_alt_stat_name(resources) -> None:
    """Each node's pods cluster's stats under ``cluster.pods.pods_on_<node>.*`` (``alt_stat_name``)."""
    for name in [n for n in resources.clusters if n.startswith(PODS_ON)]:
        cluster = type(resources.clusters[name])()
        cluster.CopyFrom(resources.clusters[name])
        cluster.alt_stat_name = f"pods.{name}"
        resources.clusters[name] = cluster


def svc_reject_all(resources) -> None:
    """Each service port's cluster with a stats matcher of its own (``typed_filter_metadata["envoy.stats_matcher"]``,
    Envoy 1.38+, which replaces the bootstrap's for that cluster's scope): none of its stats."""
    from envoy.config.metrics.v3 import stats_pb2

    for cluster in _service_port_clusters(resources):
        cluster.metadata.typed_filter_metadata["envoy.stats_matcher"].Pack(stats_pb2.StatsMatcher(reject_all=True))


def _bootstrap_excluding(prefixes: tuple[str, ...], regex: bool) -> Callable:
    """The bootstrap's exclusion list: the tcp_proxies' prefixes and ``prefixes``, then (``regex``) the pods
    clusters' bookkeeping and the tunnels' certificate stats by the one regex, as served; the stat tags as served."""
    from envoy.type.matcher.v3 import string_pb2

    from zpilot.translators.bootstrap import (
        CLUSTER_BOOKKEEPING_STATS, POD_CLUSTER_STAT_NAME, TUNNEL_CERTIFICATE_STATS, _regex, stats_tags)

    def tweak(config) -> None:
        del config.stats_config.stats_tags[:]
        config.stats_config.stats_tags.extend(stats_tags(tls_cluster_certificates=False))
        config.stats_config.ClearField("stats_matcher")
        patterns = config.stats_config.stats_matcher.exclusion_list.patterns
        patterns.extend(string_pb2.StringMatcher(prefix=p) for p in ("tcp.svc.", "tcp.pods.", *prefixes))
        if regex:
            patterns.append(_regex(rf"cluster\.{POD_CLUSTER_STAT_NAME}\.(?:{CLUSTER_BOOKKEEPING_STATS})|{TUNNEL_CERTIFICATE_STATS}"))
    return tweak


def _svc_extra_token(resources) -> None:
    """Each service port's cluster's stat name one token longer (``svc.x.<name>``, not ``svc.<name>``)."""
    for name, cluster in list(resources.clusters.items()):
        if cluster.alt_stat_name.startswith("svc."):
            copy = type(cluster)()
            copy.CopyFrom(cluster)
            copy.alt_stat_name = "svc.x." + cluster.alt_stat_name[len("svc."):]
            resources.clusters[name] = copy


def _bootstrap_svc_extra_token(config) -> None:
    """As served (``--service-stats traffic``), its exclusion regex and cluster tag taking ``svc.x.`` for ``svc.``."""
    for pattern in config.stats_config.stats_matcher.exclusion_list.patterns:
        if pattern.HasField("safe_regex"):
            pattern.safe_regex.regex = pattern.safe_regex.regex.replace(r"cluster\.(?:svc\.", r"cluster\.(?:svc\.x\.")
    for tag in config.stats_config.stats_tags:
        tag.regex = tag.regex.replace(r"^cluster\.((?:svc\.)?", r"^cluster\.((?:svc\.x\.)?")


#: The stats Envoy 1.40 makes at start for an EDS cluster besides its traffic counters, one token (or the first tokens)
#: each, as ``CLUSTER_BOOKKEEPING_STATS`` matches them (read from node-0's Envoy at R: ``xds-grpc``'s and an EDS cluster's).
BOOKKEEPING_TOKENS = (
    "assignment_stale", "assignment_timeout_received", "assignment_use_cached", "circuit_breakers", "default",
    "internal_upstream", "init_fetch_timeout", "lb_healthy_panic", "lb_local_cluster_not_ok",
    "lb_recalculate_zone_structures", "lb_subsets_active", "lb_subsets_created", "lb_subsets_fallback",
    "lb_subsets_fallback_panic", "lb_subsets_removed", "lb_subsets_selected", "lb_zone_cluster_too_small",
    "lb_zone_no_capacity_left", "lb_zone_routing_all_directly", "lb_zone_routing_cross_zone",
    "lb_zone_routing_sampled", "max_host_weight", "membership_change", "membership_degraded", "membership_excluded",
    "membership_healthy", "membership_total", "update_attempt", "update_empty", "update_failure",
    "update_duration", "update_no_rebuild", "update_rejected", "update_success", "update_time", "version", "version_text",
    "warming_state",
)


def svc_traffic_own(resources) -> None:
    """Each service port's cluster with a stats matcher of its own (Envoy 1.38+) that leaves out its bookkeeping stats
    by token prefixes alone (Envoy's fast path: no name made a string, no regex), its traffic counters kept: what
    ``--service-stats traffic`` would cost done this way (the server would have to know each ztunnel's setting)."""
    from envoy.config.metrics.v3 import stats_pb2
    from envoy.type.matcher.v3 import string_pb2

    for cluster in _service_port_clusters(resources):
        scope = f"cluster.{cluster.alt_stat_name or cluster.name}."
        patterns = [string_pb2.StringMatcher(prefix=f"{scope}{token}.") for token in BOOKKEEPING_TOKENS]
        matcher = stats_pb2.StatsMatcher(exclusion_list=string_pb2.ListStringMatcher(patterns=patterns))
        cluster.metadata.typed_filter_metadata["envoy.stats_matcher"].Pack(matcher)


def _tunnel_tcp_token(resources) -> None:
    """Each tunnel chain's tcp_proxy stats under a fixed first token (``tcp.tunnel.<cluster>.*``)."""
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    listener = listener_pb2.Listener()
    listener.CopyFrom(resources.listeners[contract.LINEAR_TUNNEL_LISTENER])
    for chain in listener.filter_chains:
        proxy = tcp_proxy_pb2.TcpProxy()
        chain.filters[-1].typed_config.Unpack(proxy)
        proxy.stat_prefix = f"tunnel.{proxy.stat_prefix}"
        chain.filters[-1].typed_config.Pack(proxy)
    resources.listeners[contract.LINEAR_TUNNEL_LISTENER] = listener


def _bootstrap_tunnel_tcp_out(config) -> None:
    from envoy.type.matcher.v3 import string_pb2

    config.stats_config.stats_matcher.exclusion_list.patterns.insert(0, string_pb2.StringMatcher(prefix="tcp.tunnel."))


def _bootstrap_tunnel_bookkeeping_out(config) -> None:
    """The tunnel clusters' bookkeeping stats left out, one alternative more in the served regex."""
    from zpilot.translators.bootstrap import CLUSTER_BOOKKEEPING_STATS, IDENTITY_IN_STATS

    for pattern in config.stats_config.stats_matcher.exclusion_list.patterns:
        if pattern.HasField("safe_regex"):
            pattern.safe_regex.regex += (rf"|cluster\.outbound_[a-z_]*tunnel_clus_{IDENTITY_IN_STATS}[^/]+?"
                                         rf"\.(?:{CLUSTER_BOOKKEEPING_STATS})")


#: name -> (a change to the config, a change to the bootstrap), the bootstrap's stats options ``all`` before it.
COMBINED_VARIANTS: dict[str, tuple[Callable, Callable]] = {
    # --service-stats none by a matcher of each service port's cluster's own, not the bootstrap's prefix (round ten)
    "svc-reject": (svc_reject_all, _bootstrap_excluding((), True)),
    # no regex at all: as --service-stats none, and none of each pods cluster's stats (a prefix on an alt_stat_name
    # of its own), the tunnels' certificate stats kept: what the bootstrap's regex costs on every other name
    "no-regex": (pods_alt_stat_name, _bootstrap_excluding(("cluster.svc.", "cluster.pods."), False)),
    # round eleven: one token more in each service port's stat name (what a token costs the 94,000 names rejected)
    "svc-extra-token": (_svc_extra_token, _bootstrap_svc_extra_token),
    # round eleven: --service-stats traffic by a matcher of each service port's cluster's own, of token prefixes alone
    "svc-traffic-own": (svc_traffic_own, lambda config: None),
    # round twelve (R's nodes host 100 identities each): each tunnel chain's tcp_proxy stats, which repeat its
    # cluster's traffic counters, left out by a token prefix; the tunnel clusters' bookkeeping stats left out
    "tunnel-tcp-out": (_tunnel_tcp_token, _bootstrap_tunnel_tcp_out),
    "tunnel-bookkeeping-out": (lambda resources: None, _bootstrap_tunnel_bookkeeping_out),
}


#: The combined variants that keep the served stats options (the others start from ``all``).
AS_SERVED_STATS = {"svc-extra-token", "svc-traffic-own", "tunnel-tcp-out", "tunnel-bookkeeping-out"}
#: name -> (``--service-stats``, ``--pod-cluster-stats``, a change to the bootstrap or None); as-served is the
#: default, ``traffic`` for both.
BOOTSTRAP_VARIANTS: dict[str, tuple[str, str, Callable | None]] = {
    "stats-all": ("all", "traffic", None), "stats-none": ("none", "traffic", None), "tags-min": ("all", "traffic", tags_min),
    "tags-min+none": ("none", "traffic", tags_min), "tags-min+traffic": ("traffic", "traffic", tags_min),
    "slow-noop": ("all", "traffic", slow_noop), "reject-all": ("all", "traffic", reject_all),
    "tags-none": ("traffic", "traffic", tags_none), "tags-round5": ("traffic", "traffic", tags_round5),
    "pods-tcp-out": ("traffic", "traffic", pods_tcp_out), "pods-stats-all": ("traffic", "all", None),
    "cert-tags-none": ("traffic", "traffic", cert_tags_none),
    "cert-cluster-tag-out": ("traffic", "traffic", cert_cluster_tag_out),
    "listener-tags-out": ("traffic", "traffic", listener_tags_out),
    "listener-addr-default": ("traffic", "traffic", listener_addr_default),
    "matcher-prefixes-only": ("traffic", "traffic", matcher_prefixes_only),
}


def _census(admin: int) -> dict:
    """How many stats Envoy made, by the first part of their names (service ports' apart)."""
    import re
    from collections import Counter

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=60) as r:
        names = [line.rsplit(": ", 1)[0] for line in r.read().decode().splitlines()]  # a name may hold "://"
    service = re.compile(rf"(cluster|tcp)\.{SERVICE_PORT_STAT_NAME}.*")
    kinds = Counter("service-port " + n.split(".", 1)[0] if service.fullmatch(n) else n.split(".", 1)[0] for n in names)
    return {"stats": len(names), "by_kind": dict(kinds.most_common(12))}


#: The steps of Envoy's start a ``--callgrind`` run counts, each ending where Envoy's log (``-l info``) says so.
CALLGRIND_STEPS = (
    ("start+cds", "cds: added/updated"),  # the bootstrap, the ADS connection, CDS decoded and applied
    ("eds", "all clusters initialized. initializing"),
    ("lds+inbound", "lds: add/update listener 'ztunnel_inbound'"),  # LDS decoded, the small listeners, the HBONE one
    ("plaintext", "lds: add/update listener 'ztunnel_inbound_plaintext'"),
    ("outbound", "lds: add/update listener 'ztunnel_outbound'"),
)
RESET = "gRPC config stream to xds-grpc closed"


async def _dump_at_each_step(pid: int, log: Path, deadline: float) -> None:
    steps = [marker for _, marker in CALLGRIND_STEPS]
    while steps and time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        while steps and steps[0] in text:
            subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=False)
            steps.pop(0)
        await asyncio.sleep(0.2)


def _main_thread_instructions(out: Path) -> list[int]:
    """Each dump's instructions of thread 1 (``--separate-threads``: ``<out>.<dump>-<thread>``)."""
    counts = {}
    for dump in out.parent.glob(f"{out.name}.*-01"):
        found = re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.M)
        counts[int(dump.name[len(out.name) + 1:].split("-")[0])] = int(found.group(1)) if found else 0
    return [counts[n] for n in sorted(counts)]


async def run(variant: str, concurrency: int | None, census_stats: bool = False, callgrind: bool = False,
              envoy_args: tuple[str, ...] = ()) -> dict:
    from google.protobuf import json_format

    from zpilot.certs import CertificateAuthority, IdentityCache
    from zpilot.envoy_binary import envoy_path, next_base_id
    from zpilot.runtime.control_plane import ControlPlane, DebugOptions
    from zpilot.translators import TranslateOptions, translate_node
    from zpilot.translators.bootstrap import BootstrapOptions, bootstrap, with_missing_fields
    from zpilot.xds.push import EveryNode
    from zpilot.xds.security import XdsSecurity
    from zpilot.xds.server import ServerOptions

    _, index, _ = scale._model(Shape.reference())
    bind = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    options, node, change = TranslateOptions(layout="linear", bind_address=bind), node_name(0), VARIANTS.get(variant)
    if variant in COMBINED_VARIANTS:
        change = COMBINED_VARIANTS[variant][0]

    def translate(model, name):
        resources = translate_node(model, name, options)
        if change is not None:
            change(resources)
        return resources

    every = EveryNode(translate)

    class OneNode:
        def inputs(self, model):
            return {n: i for n, i in every.inputs(model).items() if n == node}

        def translate(self, node_input):
            return every.translate(node_input)

    plane = ControlPlane(
        xds_security=XdsSecurity.insecure(), server_options=ServerOptions(host="127.0.0.1", port=0),
        debug_options=DebugOptions(host="127.0.0.1", port=0), translate=OneNode(),
        identities=IdentityCache(CertificateAuthority.generate()),
    )
    await plane.update(index)
    await plane.start()
    snapshot = plane.cache.get_snapshot(node)
    sizes = {url.rsplit(".", 1)[-1]: round(t.size / 1e6, 2) for url, t in snapshot.types.items()}
    admin = scale._free_port()
    workdir = Path(tempfile.mkdtemp(prefix="zpilot-spike-envoy-"))
    service_stats, pod_cluster_stats, tweak = BOOTSTRAP_VARIANTS.get(
        variant, (contract.DEFAULT_SERVICE_STATS, contract.DEFAULT_POD_CLUSTER_STATS, None))
    if variant in COMBINED_VARIANTS:
        service_stats, pod_cluster_stats, tweak = "all", "all", COMBINED_VARIANTS[variant][1]
        if variant in AS_SERVED_STATS:
            service_stats, pod_cluster_stats = contract.DEFAULT_SERVICE_STATS, contract.DEFAULT_POD_CLUSTER_STATS
    config = bootstrap(BootstrapOptions(node=node, xds=f"127.0.0.1:{plane.xds_port}", admin_port=admin,
                                        service_stats=service_stats, pod_cluster_stats=pod_cluster_stats))
    if tweak is not None:
        tweak(config)
    (workdir / "bootstrap.json").write_text(json.dumps(with_missing_fields(json_format.MessageToDict(config, preserving_proto_field_name=True))))
    args = [scale._envoy_binary(envoy_path()), "-c", str(workdir / "bootstrap.json"), "--base-id", str(next_base_id() + 7100),
            "--disable-hot-restart", "-l", "info" if callgrind else "warning"]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    args += envoy_args
    out = workdir / "callgrind.out"
    if callgrind:
        args = ["valgrind", "--tool=callgrind", "--cache-sim=no", "--separate-threads=yes",
                f"--callgrind-out-file={out}", *args]
    log = open(workdir / "envoy.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        live, log_at_live = None, ""
        timeout = 900 if callgrind else 60
        if callgrind:
            await _dump_at_each_step(proc.pid, workdir / "envoy.log", started + timeout)
        while time.monotonic() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"envoy exited {proc.returncode}: {(workdir / 'envoy.log').read_text()[-500:]}")
            if await asyncio.to_thread(scale._is_live, admin):
                live = time.monotonic() - started
                if callgrind:  # the step from the last listener to LIVE: its certificates, the listeners warmed
                    subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=False)
                    log_at_live = (workdir / "envoy.log").read_text(errors="replace")
                break
            await asyncio.sleep(1 if callgrind else 0.01)
        if callgrind:
            text = (workdir / "envoy.log").read_text(errors="replace")
            last = text.find(CALLGRIND_STEPS[-1][1])
            counts = _main_thread_instructions(out)
            steps = {step: round(n / 1e6) for (step, _), n in zip((*CALLGRIND_STEPS, ("live", "")), counts)}
            return {"variant": variant, "million_instructions": steps,
                    "total_million": round(sum(counts[:len(CALLGRIND_STEPS)]) / 1e6),
                    "to_live_million": round(sum(counts[:len(CALLGRIND_STEPS) + 1]) / 1e6) if live else None,
                    "reset_before_last_listener": RESET in (text[:last] if last >= 0 else text),
                    "reset_before_live": RESET in log_at_live}
        rss, cpu = scale._rss_mb(proc.pid), scale._cpu_seconds(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/memory", timeout=5) as r:
            memory = json.load(r)
        mib = {k: round(int(memory[k]) / 2**20, 1) for k in ("allocated", "heap_size", "pageheap_free")}
        census = _census(admin) if census_stats else {}
        return {"variant": variant, "config_mb": sizes, "live_s": live and round(live, 3), "cpu_s": round(cpu, 2),
                "rss_mib": round(rss), **{f"{k}_mib": v for k, v in mib.items()}, **census}
    finally:
        scale._kill(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        await plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    known = [*VARIANTS, *BOOTSTRAP_VARIANTS, *COMBINED_VARIANTS]
    parser.add_argument("variants", nargs="*", help=f"of {', '.join(known)} (the config variants when none is named)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, help="Envoy's --concurrency (default: Envoy's, the core count)")
    parser.add_argument("--envoy-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for Envoy (repeat for more), e.g. --envoy-arg=--skip-deprecated-logs")
    parser.add_argument("--without-envoy-flags", action="store_true", help="Envoy without contract.ENVOY_FLAGS")
    parser.add_argument("--census", action="store_true", help="count Envoy's stats by kind after LIVE (slow)")
    parser.add_argument("--callgrind", action="store_true",
                        help="Envoy's main-thread instructions per step, under valgrind")
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}: one of {', '.join(known)}")
    results: dict[str, list[dict]] = {v: [] for v in args.variants or VARIANTS}
    for _ in range(args.runs):
        for variant in results:
            result = asyncio.run(run(variant, args.concurrency, args.census, args.callgrind,
                                     (*(() if args.without_envoy_flags else contract.ENVOY_FLAGS), *args.envoy_arg)))
            print(json.dumps(result), flush=True)
            results[variant].append(result)
    if args.callgrind:
        return 0
    for variant, runs in results.items():
        cpu, rss = [r["cpu_s"] for r in runs], [r["rss_mib"] for r in runs]
        live = [r["live_s"] for r in runs]
        print(f"{variant:18} LIVE s min {min(live)} median {statistics.median(live)}  "
              f"CPU s min {min(cpu)} median {statistics.median(cpu)}  RSS MiB {min(rss)}-{max(rss)}  "
              f"allocated MiB {statistics.median(r['allocated_mib'] for r in runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

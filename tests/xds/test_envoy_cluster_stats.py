"""``zpilot bootstrap --cluster-stats``: with ``lazy`` (the default) a real Envoy makes a cluster's
traffic counters on its first connection, not at start, and counts that connection; with ``eager``
they are there, at zero, from the start. The cluster's other stats (its endpoints, its config
updates) are made at start either way. The clusters are made on first use per worker too
(``enable_deferred_cluster_creation``): the connection below goes through one made that way.

``--service-stats``: a service port's cluster keeps only its traffic counters (``traffic``, the
default), none (``none``) or all (``all``), its tcp_proxy none but with ``all``. ``--pod-cluster-stats``:
each node's pods cluster (``pods_on_<node>``) keeps only its traffic counters (``traffic``, the default) or
all (``all``). Every other cluster keeps all of its stats."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from zpilot import contract
from zpilot.translators.bootstrap import ADMIN_CLUSTER, BootstrapOptions, bootstrap_document
from zpilot.translators.names import PODS_ON_PREFIX

from .conftest import load_index
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, NODE_B, eventually, free_port

pytestmark = NEEDS_ENVOY_AS_ROOT

TRAFFIC = f"cluster.{ADMIN_CLUSTER}.upstream_cx_total"  # a traffic stat: deferred when lazy
MEMBERSHIP = f"cluster.{ADMIN_CLUSTER}.membership_total"  # an endpoint stat: never deferred


@pytest.mark.parametrize("mode", contract.CLUSTER_STATS)
async def test_cluster_traffic_stats_appear_on_first_connection_when_lazy(mode, make_plane, envoys):
    plane = await make_plane()
    envoy = envoys(NODE_A, plane.xds_port)
    envoy.stop()  # restarted below from a bootstrap with the readiness listener (its admin cluster idles until asked)
    port = free_port()
    options = BootstrapOptions(node=NODE_A, xds=f"127.0.0.1:{plane.xds_port}", admin_port=envoy.admin_port,
                               readiness_port=port, cluster_stats=mode)
    envoy.config.write_text(json.dumps(bootstrap_document(options)))
    envoy.start()
    await envoy.wait_ready()

    before = await envoy.stats(f"^{re.escape(f'cluster.{ADMIN_CLUSTER}.')}")
    assert before[MEMBERSHIP] == 1
    assert before.get(TRAFFIC) == (None if mode == "lazy" else 0), before
    async with httpx.AsyncClient(timeout=5.0) as client:  # through the readiness listener to ztunnel-admin
        answer = await client.get(f"http://127.0.0.1:{port}{contract.READINESS_PATH}")
    assert (answer.status_code, answer.text.strip()) == (200, "LIVE")

    async def counted() -> bool:
        return (await envoy.stats(f"^{re.escape(TRAFFIC)}$")).get(TRAFFIC) == 1

    await eventually(counted)


@pytest.mark.parametrize("mode", contract.SERVICE_STATS)
async def test_service_ports_keep_the_stats_service_stats_says(mode, layout, manifests, make_plane, envoys):
    plane = await make_plane(layout=layout)
    # eager: a cluster's traffic counters are made at start, so what the matcher keeps of them shows without traffic
    envoy = envoys(NODE_A, plane.xds_port, cli=("--insecure-xds", "--cluster-stats", "eager", "--service-stats", mode))
    await envoy.wait_ready()
    hosts = {s.hostname() for s in load_index(manifests).services}
    async with httpx.AsyncClient(timeout=5.0) as client:
        listing = (await client.get(f"{envoy.admin}/clusters")).text
    # as its stats name it: Envoy writes "://" (an identity's "spiffe://") and any other ":" as "_"
    clusters = {line.split("::", 1)[0].replace("://", "_").replace(":", "_") for line in listing.splitlines() if "::" in line}
    services = {c for c in clusters if any(f"_{host}" in c for host in hosts)}
    pods = {c for c in clusters if c.startswith(PODS_ON_PREFIX)}  # --pod-cluster-stats traffic, the default
    tunnels = {c for c in clusters if "tunnel_clus_spiffe_" in c}  # unless every stat is asked for, the same
    others = clusters - services - pods - tunnels
    assert tunnels, clusters
    assert services and {"xds-grpc", "virtual_inbound"} <= others, clusters
    assert bool(pods) == (layout == "linear"), clusters
    stats = await envoy.stats("")
    for cluster in others:  # every other cluster keeps its stats, of every kind
        assert stats.get(f"cluster.{cluster}.membership_total") is not None, cluster
        assert stats.get(f"cluster.{cluster}.upstream_cx_total") is not None, cluster
    for cluster in pods | tunnels:  # its traffic counters, none of its bookkeeping
        kept = {name.removeprefix(f"cluster.{cluster}.") for name in stats if name.startswith(f"cluster.{cluster}.")}
        assert {"upstream_cx_total", "upstream_cx_overflow", "upstream_rq_pending_overflow"} <= kept, cluster
        assert not {s for s in kept if s.split(".")[0] in ("circuit_breakers", "version")
                    or s.startswith(("membership_", "update_", "lb_", "assignment_"))}, (cluster, kept)
    assert stats["server.live"] == 1 and any(name.startswith("listener.") for name in stats)
    # their chains' tcp_proxies (a linear tunnel chain's: tcp.tunnel.<chain>.*, its cluster counting the same)
    # (the article layout's tunnel listeners' tcp_proxies, tcp.outbound_pod_[local_]tunnel_clus_*, are kept)
    assert not [name for name in stats if name.startswith(
        ("tcp.pods.", f"tcp.{PODS_ON_PREFIX}", "tcp.tunnel.", "tcp.tunnel_", "tcp.outbound_tunnel_clus_"))]
    for cluster in services:  # named in stats by its alt_stat_name, svc.<name> (names.service_cluster_stat_name)
        assert not [name for name in stats if name.startswith(f"cluster.{cluster}.")], cluster
        kept = {name.removeprefix(f"cluster.svc.{cluster}.") for name in stats if name.startswith(f"cluster.svc.{cluster}.")}
        if mode == "all":
            assert {"membership_total", "update_success", "circuit_breakers.default.cx_open", "upstream_cx_total"} <= kept
        elif mode == "traffic":
            assert {"upstream_cx_total", "upstream_cx_overflow", "upstream_rq_pending_overflow"} <= kept, cluster
            assert not {s for s in kept if s.split(".")[0] in ("circuit_breakers", "version")
                        or s.startswith(("membership_", "update_", "lb_", "assignment_"))}, (cluster, kept)
        else:
            assert not kept, (cluster, kept)
    service_tcp = {name for name in stats if name.startswith("tcp.") and any(f"_{host}" in name for host in hosts)}
    assert bool(service_tcp) == (mode == "all"), sorted(service_tcp)[:5]


def _prometheus_names(text: str) -> dict[str, set[str]]:
    """Metric name -> the label sets it is given, from ``/stats/prometheus``."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            out.setdefault(name, set()).add(rest.rpartition("}")[0])
    return out


async def test_prometheus_names_a_cluster_and_a_tcp_proxy_whole(layout, manifests, make_plane, envoys):
    """Envoy's own ``envoy.cluster_name`` and ``envoy.tcp_prefix`` end a name at its first dot: a service port's
    ``<port>_<fqdn>`` and an identity's tunnel (its trust domain) gave a metric per namespace, the label cut.
    With the bootstrap's tags the label holds the whole name and the metric is Envoy's standard one; the other
    default tags are Envoy's as before."""
    plane = await make_plane(layout=layout)
    # eager and all: every cluster's and tcp_proxy's stats are there from the start, their tags taken as they are made
    # (the tunnel chains' tcp_proxies' too: tcp.tunnel.<chain>.*, whose tag takes "tunnel." out)
    envoy = envoys(NODE_A, plane.xds_port, cli=("--insecure-xds", "--cluster-stats", "eager", "--service-stats", "all",
                                                "--pod-cluster-stats", "all"))
    await envoy.wait_ready()
    async with httpx.AsyncClient(timeout=5.0) as client:
        listing = (await client.get(f"{envoy.admin}/clusters")).text
        metrics = _prometheus_names((await client.get(f"{envoy.admin}/stats/prometheus")).text)
    # as Envoy writes them in stats: "://" (an identity's "spiffe://") as "_"
    clusters = {line.split("::", 1)[0].replace("://", "_") for line in listing.splitlines() if "::" in line}
    services = {c for c in clusters if ".svc.cluster.local" in c}
    tunnels = {c for c in clusters if "tunnel_clus_spiffe_" in c}
    assert services and tunnels, clusters
    labelled = metrics["envoy_cluster_upstream_cx_total"]
    for cluster in clusters:  # every cluster, dots or not, under the one metric, its whole name the label
        assert f'envoy_cluster_name="{cluster}"' in labelled, (cluster, sorted(labelled)[:5])
    prefixes = {re.sub(r'^envoy_tcp_prefix="(.*)"$', r"\1", labels) for labels in metrics["envoy_tcp_downstream_cx_total"]}
    whole = {c for c in clusters if c in prefixes}  # a tcp_proxy's stat prefix is its cluster's name, but the article's tunnels'
    if layout == "linear":  # and the tunnel chains', named after each chain (the two of an identity share its cluster)
        identities = {c.removeprefix("outbound_tunnel_clus_") for c in tunnels}
        chains = {f"{side}{identity}" for identity in identities for side in ("tunnel_", "tunnel_local_")}
        assert services <= whole and chains <= prefixes, sorted(prefixes)[:5]
    else:
        assert whole & tunnels, sorted(prefixes)[:5]
    assert any(prefix.startswith(contract.TUNNEL_LISTENER_PREFIX + "spiffe_") and prefix.count("/") == 4
               for prefix in prefixes) == (layout == "article"), sorted(prefixes)[:5]
    # the names each inbound chain makes again (the tag tries them first, bootstrap.PER_CHAIN_TCP_STATS)
    assert "virtual_inbound_plaintext" in prefixes, sorted(prefixes)[:5]
    assert any('envoy_tcp_prefix="rbac"' in labels for labels in metrics["envoy_allowed"]), metrics.get("envoy_allowed")
    leaked = sorted(name for name in metrics if any(part in name for part in ("cluster_local", "svc_", "spiffe", "local_ns")))
    assert not leaked, leaked[:5]
    # a certificate's secret whole in its SDS and expiry stats' labels, not a metric per pod or identity: the
    # article's names a pod's (<identity>~<pod>~<uid>), the linear layout's an identity's
    pod_secret = r"~[^\"~]+~[-0-9a-f]{36}" if layout == "article" else ""
    for tag, metric in (("envoy_xds_resource_name", "envoy_sds_update_success"),
                        ("envoy_tls_certificate", "envoy_listener_ssl_certificate_expiration_unix_time_seconds")):
        assert any(re.search(rf'{tag}="spiffe[^"]+/ns/[^"/]+/sa/[^"~]+{pod_secret}"', labels)
                   for labels in metrics[metric]), (tag, sorted(metrics[metric])[:3])
    # a listener by its address, an internal one by its name, whole (the article layout's are named after an
    # identity), each worker's too; the admin API's listener untagged, as Envoy leaves it
    listeners = "".join(metrics["envoy_listener_downstream_cx_total"] | metrics["envoy_listener_worker_downstream_cx_total"])
    assert bool(re.search(r'envoy_listener_address="envoy_internal_outbound_tunnel_lis_spiffe_[^"]+/sa/[^"/]+"', listeners)) \
        == (layout == "article"), listeners[:300]
    assert "envoy_listener_admin_downstream_cx_total" in metrics
    # the default tags operators read besides: listener address, worker, connection manager, response code
    everything = "".join(label for labels in metrics.values() for label in labels)
    for tag in ("envoy_listener_address=", "envoy_worker_id=", "envoy_http_conn_manager_prefix=", "envoy_tcp_prefix="):
        assert tag in everything, tag


#: Names Kubernetes allows (DNS subdomains) and real clusters have: an EKS node, a ServiceAccount with a dot.
DOTTED_NODE = "ip-10-0-1-7.ec2.internal"
DOTTED_ACCOUNT = "bookinfo.reviews"


def _with_dotted_names(manifests) -> None:
    """The example with node B named as an EKS node is, and the reviews pods' ServiceAccount dotted."""
    for path in manifests.glob("*.yaml"):
        text = path.read_text().replace(NODE_B, DOTTED_NODE)
        path.write_text(text.replace("serviceAccountName: bookinfo-reviews", f"serviceAccountName: {DOTTED_ACCOUNT}"))


async def test_prometheus_names_a_dotted_node_and_service_account_whole(layout, manifests, make_plane, envoys):
    """A node's name and a ServiceAccount's may hold dots (``ip-10-0-1-7.ec2.internal``): the stats of the
    ``pods_on_<node>`` cluster and tcp_proxy and of the tunnels to an identity carry the whole name in their
    label, under Envoy's standard metric name, not ``envoy_cluster_ec2_internal_*`` with the name cut."""
    _with_dotted_names(manifests)
    plane = await make_plane(layout=layout)
    # all: the pods cluster's bookkeeping (envoy_cluster_membership_total...) kept, to read its labels too
    envoy = envoys(NODE_A, plane.xds_port, cli=("--insecure-xds", "--cluster-stats", "eager", "--service-stats", "all",
                                                "--pod-cluster-stats", "all"))
    await envoy.wait_ready()
    async with httpx.AsyncClient(timeout=5.0) as client:
        listing = (await client.get(f"{envoy.admin}/clusters")).text
        text = (await client.get(f"{envoy.admin}/stats/prometheus")).text
    metrics = _prometheus_names(text)
    clusters = {line.split("::", 1)[0].replace("://", "_") for line in listing.splitlines() if "::" in line}
    dotted = {c for c in clusters if c.endswith((DOTTED_NODE, DOTTED_ACCOUNT))}
    assert {c for c in dotted if DOTTED_NODE in c} == ({f"pods_on_{DOTTED_NODE}"} if layout == "linear" else set())
    assert any(DOTTED_ACCOUNT in c for c in dotted), sorted(clusters)
    for cluster in dotted:
        for metric in ("envoy_cluster_upstream_cx_total", "envoy_cluster_membership_total", "envoy_cluster_version"):
            assert f'envoy_cluster_name="{cluster}"' in metrics[metric], (cluster, metric)
    if layout == "linear":
        assert f'envoy_tcp_prefix="pods_on_{DOTTED_NODE}"' in metrics["envoy_tcp_downstream_cx_total"]
    leaked = sorted(name for name in metrics if any(part in name for part in ("ec2", "reviews", "pods_on")))
    assert not leaked, leaked[:10]


def _certificate_stats(stats: dict[str, int], kind: str) -> set[str]:
    """The secrets of the ``<kind>.<name>.ssl.certificate.<secret>.expiration_unix_time_seconds`` stats."""
    return {name.split(".ssl.certificate.", 1)[1].removesuffix(".expiration_unix_time_seconds")
            for name in stats if name.startswith(f"{kind}.") and name.endswith(".expiration_unix_time_seconds")}


async def test_tunnels_certificate_stats_repeat_the_inbound_listener_s(layout, make_plane, envoys):
    """The bootstrap leaves a tunnel's certificate expiry stats out unless every stat is asked for (the certificate
    tag would otherwise be tried on every cluster stat): the inbound listener's give the same secrets' expiry."""
    plane = await make_plane(layout=layout)
    every = envoys(NODE_A, plane.xds_port, cli=("--insecure-xds", "--service-stats", "all", "--pod-cluster-stats", "all"))
    await every.wait_ready()
    stats = await every.stats(r"\.ssl\.certificate\.")
    tunnels, listeners = _certificate_stats(stats, "cluster"), _certificate_stats(stats, "listener")
    assert tunnels and "ROOTCA" in tunnels and any(s.startswith("spiffe://") for s in tunnels), sorted(stats)[:5]
    assert tunnels <= listeners, (tunnels - listeners, sorted(listeners)[:3])
    every.stop()
    default = envoys(NODE_A, plane.xds_port, cli=("--insecure-xds",))
    await default.wait_ready()
    stats = await default.stats(r"\.ssl\.certificate\.")
    assert not _certificate_stats(stats, "cluster") and _certificate_stats(stats, "listener") == listeners, sorted(stats)

"""``zpilot bootstrap --cluster-stats``: with ``lazy`` (the default) a real Envoy makes a cluster's
traffic counters on its first connection, not at start, and counts that connection; with ``eager``
they are there, at zero, from the start. The cluster's other stats (its endpoints, its config
updates) are made at start either way. The clusters are made on first use per worker too
(``enable_deferred_cluster_creation``): the connection below goes through one made that way.

``--service-stats``: a service port's cluster keeps only its traffic counters (``traffic``, the
default), none (``none``) or all (``all``), its tcp_proxy none but with ``all``; every other cluster
keeps all of its stats."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from google.protobuf import json_format

from zpilot import contract
from zpilot.translators.bootstrap import ADMIN_CLUSTER, BootstrapOptions, bootstrap

from .conftest import load_index
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, eventually, free_port

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
    envoy.config.write_text(json.dumps(json_format.MessageToDict(bootstrap(options), preserving_proto_field_name=True)))
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
    others = clusters - services
    assert services and {"xds-grpc", "virtual_inbound"} <= others, clusters
    stats = await envoy.stats("")
    for cluster in others:  # every other cluster keeps its stats, of every kind
        assert stats.get(f"cluster.{cluster}.membership_total") is not None, cluster
        assert stats.get(f"cluster.{cluster}.upstream_cx_total") is not None, cluster
    assert stats["server.live"] == 1 and any(name.startswith("listener.") for name in stats)
    for cluster in services:
        kept = {name.removeprefix(f"cluster.{cluster}.") for name in stats if name.startswith(f"cluster.{cluster}.")}
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

"""``zpilot bootstrap --cluster-stats``: with ``lazy`` (the default) a real Envoy makes a cluster's
traffic counters on its first connection, not at start, and counts that connection; with ``eager``
they are there, at zero, from the start. The cluster's other stats (its endpoints, its config
updates) are made at start either way. The clusters are made on first use per worker too
(``enable_deferred_cluster_creation``): the connection below goes through one made that way."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from google.protobuf import json_format

from zpilot import contract
from zpilot.translators.bootstrap import ADMIN_CLUSTER, BootstrapOptions, bootstrap

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

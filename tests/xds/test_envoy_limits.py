"""A real Envoy runs with zpilot's data-path limits, not its own defaults (issue 11, point 9): its
/clusters reports our circuit-breaker thresholds for every data-path cluster (Envoy's default is
1,024), and the CONNECT terminator's stream idle timeout is ours (Envoy's default is 5 minutes)."""

from __future__ import annotations

import pytest

from zpilot.translators.bootstrap import XDS_CLUSTER
from zpilot.translators.limits import DataPathLimits

from .e2e_util import wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A

pytestmark = NEEDS_ENVOY_AS_ROOT


@pytest.mark.parametrize("layout", ["article", "linear"])
async def test_envoy_applies_our_circuit_breakers_and_idle_timeouts(make_plane, envoys, layout):
    limits = DataPathLimits()
    plane = await make_plane(layout=layout)
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)

    statuses = (await envoy.get_json("/clusters?format=json"))["cluster_statuses"]
    effective = {
        s["name"]: next(t for t in s["circuit_breakers"]["thresholds"] if t.get("priority", "DEFAULT") == "DEFAULT")
        for s in statuses
    }
    ours = set(effective) - {"BlackHoleCluster", XDS_CLUSTER}
    assert len(ours) >= 10 and any(name.startswith("outbound_tunnel_clus_") for name in ours)
    if layout == "linear":  # the way to pod IPs: by node pod CIDR, through the pod-select listener
        assert "pod_select" in ours and any(name.startswith("pods_on_") for name in ours)
    for name in ours:
        threshold = effective[name]
        assert (threshold["max_connections"], threshold["max_pending_requests"], threshold["max_requests"]) == (
            limits.max_connections,
            limits.max_pending_requests,
            limits.max_requests,
        ), name

    dump = await envoy.config_dump()
    listeners = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
    [inbound] = [
        lis["active_state"]["listener"] for lis in listeners["dynamic_listeners"] if lis["name"] == "ztunnel_inbound"
    ]
    managers = [
        f["typed_config"]
        for chain in inbound["filter_chains"]
        for f in chain["filters"]
        if f["typed_config"]["@type"].endswith("HttpConnectionManager")
    ]
    assert managers
    for manager in managers:
        assert manager["stream_idle_timeout"] == "3600s"
        assert manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"] == "0s"

"""A real Envoy through NACKs, restarts of either side, and delta ADS, with each outbound layout
(the ``layout`` fixture)."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from .conftest import load_index
from .e2e_util import config_diff, debug_json, scrape, wait_nacked, wait_no_diff, wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, eventually

pytestmark = NEEDS_ENVOY_AS_ROOT

SENT = re.compile(r"sent (\w+) to node=(\S+) conn=(\S+)")


def sent_order(caplog, conn_id: str) -> list[str]:
    """The types the server's log says it sent on one connection, in order."""
    out = []
    for record in caplog.records:
        m = SENT.match(record.getMessage())
        if m and m.group(3) == conn_id:
            out.append(m.group(1))
    return out


def assert_cds_before_lds(order: list[str]) -> None:
    assert "CDS" in order and "LDS" in order, order
    assert order.index("CDS") < order.index("LDS"), order
    assert order.index("EDS") < order.index("LDS") and order.index("SDS") < order.index("LDS"), order


class BreakBlackHole:
    """An edit of the translated resources: when on, one cluster gets a connect_timeout Envoy's
    validation rejects."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, resources) -> None:
        if self.on:
            resources.clusters["BlackHoleCluster"].connect_timeout.seconds = -1


async def test_invalid_resource_is_nacked_not_resent_and_fixed(make_plane, envoys, layout):
    hook = BreakBlackHole()
    plane = await make_plane(edit=hook, layout=layout)
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)

    hook.on = True
    await plane.update()

    cds = await wait_nacked(plane.debug_port, NODE_A, "CDS")
    assert "Expected positive duration" in cds["last_nack"]["error"]
    assert cds["last_nack"]["version"] == cds["last_sent_version"]
    assert plane.metrics.value("zpilot_xds_nacks_total", type="CDS") >= 1
    metrics_text = await scrape(plane)
    assert re.search(r'zpilot_xds_nacks_total\{type="CDS"\} [1-9]', metrics_text)
    # Envoy kept its last good config, so it now differs from intent, and zpilot diff says so.
    assert "BlackHoleCluster" in await config_diff(plane.debug_port, envoy)

    # The rejected version is never sent again, not even when the model is produced again.
    sent_before = cds["sent_count"]
    await plane.update()
    import asyncio

    await asyncio.sleep(1.0)
    [conn] = await debug_json(plane.debug_port, "/debug/syncz", node=NODE_A)
    cds = next(t for t in conn["types"] if t["type"] == "CDS")
    assert cds["sent_count"] == sent_before and cds["state"] == "NACKED"

    # The fix: Envoy takes the next version.
    hook.on = False
    await plane.update()
    await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)


async def test_envoy_restart_reconverges(make_plane, envoys, caplog, layout):
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    plane = await make_plane(layout=layout)
    first = envoys(NODE_A, plane.xds_port, name="first")
    await first.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)
    first.stop()

    async def gone():
        return await debug_json(plane.debug_port, "/debug/syncz", node=NODE_A) == []

    await eventually(gone)
    second = envoys(NODE_A, plane.xds_port, name="second")
    await second.wait_ready()
    conn = await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, second)
    assert_cds_before_lds(sent_order(caplog, conn["id"]))


async def test_server_restart_reconverges(make_plane, envoys, caplog, layout):
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    plane = await make_plane(layout=layout)
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)
    port = plane.xds_port
    await plane.stop()
    caplog.clear()

    restarted = await make_plane(xds_port=port, layout=layout)
    conn = await wait_synced(restarted.debug_port, NODE_A, timeout=20)
    await wait_no_diff(restarted.debug_port, envoy)
    order = sent_order(caplog, conn["id"])
    assert_cds_before_lds(order)
    # Envoy reconnected with the versions it had; the server answered every type regardless.
    assert len(restarted.registry) == 1


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_envoy_converges_and_loses_a_removed_service(make_plane, envoys, manifests, caplog, delta, layout):
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    plane = await make_plane(layout=layout)
    envoy = envoys(NODE_A, plane.xds_port, delta=delta)
    await envoy.wait_ready()
    conn = await wait_synced(plane.debug_port, NODE_A)
    assert conn["mode"] == ("delta" if delta else "sotw")
    await wait_no_diff(plane.debug_port, envoy)

    # Remove the details Service: its cluster and endpoints must be removed by name.
    index = load_index(manifests)
    cluster = dataclasses.replace(
        index.cluster, services=tuple(s for s in index.cluster.services if s.name != "details")
    )
    from zpilot.model.index import MeshIndex

    await plane.update(MeshIndex.build(cluster))

    async def details_gone():
        return "details.default.svc" not in str(await envoy.config_dump())

    await eventually(details_gone)
    await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)
    if delta:
        removals = [r.getMessage() for r in caplog.records if "removed_resources=" in r.getMessage()]
        assert any("CDS" in m and "details.default.svc" in m for m in removals), removals
        # (Envoy unsubscribes the removed clusters' endpoints itself, so EDS owes it no removal notice.)


SENT_EDS = re.compile(r"sent EDS to node=\S+ conn=(\S+) .* resources=(\d+) ")


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_a_service_added_reaches_envoy_with_only_its_endpoints_sent(
    make_plane, envoys, manifests, caplog, delta, layout
):
    """Envoy asks for the endpoints of the clusters a service added brought (a delta subscription,
    a SotW name list): they are sent, and no other assignment (2,000 of them at R)."""
    from zpilot.model.index import MeshIndex
    from zpilot.xds.order import ENDPOINT_TYPE

    caplog.set_level(logging.INFO, logger="zpilot.xds")
    full = load_index(manifests)
    without = MeshIndex.build(dataclasses.replace(
        full.cluster, services=tuple(s for s in full.cluster.services if s.name != "details")))
    plane = await make_plane(layout=layout, index=without)
    envoy = envoys(NODE_A, plane.xds_port, delta=delta)
    await envoy.wait_ready()
    conn = await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)
    caplog.clear()

    await plane.update(MeshIndex.build(full.cluster))
    await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)  # the new clusters warmed: their endpoints came
    added = [n for n in plane.cache.get_snapshot(NODE_A).resources(ENDPOINT_TYPE).items if "details.default.svc" in n]
    assert added
    sent = [int(m.group(2)) for r in caplog.records if (m := SENT_EDS.match(r.getMessage())) and m.group(1) == conn["id"]]
    assert sum(sent) == len(added), (sent, added)


async def test_delta_envoy_reconnect_resends_only_what_differs(make_plane, envoys, caplog, layout):
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    plane = await make_plane(layout=layout)
    envoy = envoys(NODE_A, plane.xds_port, delta=True)
    await envoy.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)
    port = plane.xds_port
    await plane.stop()
    caplog.clear()

    restarted = await make_plane(xds_port=port, layout=layout)  # same model, same certificates: nothing differs

    async def reconnected():
        conns = await debug_json(restarted.debug_port, "/debug/syncz", node=NODE_A)
        return conns if conns and {t["type"] for t in conns[0]["types"]} == {"CDS", "EDS", "SDS", "LDS"} else None

    [conn] = await eventually(reconnected, 20)
    await wait_no_diff(restarted.debug_port, envoy)
    assert all(t["nack_count"] == 0 for t in conn["types"])
    # Envoy reported what it had (initial_resource_versions); every version matched, so nothing was resent.
    assert sent_order(caplog, conn["id"]) == []


async def test_bounded_connection_age_recycles_streams_and_envoy_stays_in_sync(make_plane, envoys, layout):
    plane = await make_plane(max_connection_age_ms=1500, max_connection_age_grace_ms=500, layout=layout)
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    first = await wait_synced(plane.debug_port, NODE_A)

    async def recycled():
        conns = await debug_json(plane.debug_port, "/debug/syncz", node=NODE_A)
        return conns and conns[0]["id"] != first["id"]

    await eventually(recycled, timeout=15)
    assert plane.metrics.value("zpilot_xds_streams_opened_total", mode="sotw") >= 2
    await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)

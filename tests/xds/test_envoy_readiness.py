"""``zpilot bootstrap --readiness-port``: a kubelet can probe Envoy's ``/ready`` while the admin
API stays on loopback, and nothing else of the admin API is reachable through that port."""

from __future__ import annotations

import json

import httpx

from zpilot import contract
from zpilot.translators.bootstrap import BootstrapOptions, bootstrap_document

from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A, free_port

pytestmark = NEEDS_ENVOY_AS_ROOT


async def test_the_readiness_port_answers_ready_and_nothing_else(make_plane, envoys):
    plane = await make_plane()
    envoy = envoys(NODE_A, plane.xds_port)
    envoy.stop()  # restarted below from a bootstrap with the readiness listener
    port = free_port()
    options = BootstrapOptions(node=NODE_A, xds=f"127.0.0.1:{plane.xds_port}", admin_port=envoy.admin_port,
                               readiness_port=port)
    envoy.config.write_text(json.dumps(bootstrap_document(options)))
    envoy.start()
    await envoy.wait_ready()
    ready = f"http://127.0.0.1:{port}{contract.READINESS_PATH}"
    async with httpx.AsyncClient(timeout=5.0) as client:
        answer = await client.get(ready)
        assert (answer.status_code, answer.text.strip()) == (200, "LIVE")
        # The admin API's other handlers are not reachable through it, whatever the method or path.
        for method, path in (("GET", "/config_dump"), ("GET", "/stats"), ("POST", "/quitquitquit"),
                             ("POST", contract.READINESS_PATH), ("GET", "/ready/../config_dump"), ("GET", "/readyz")):
            refused = await client.request(method, f"http://127.0.0.1:{port}{path}")
            assert refused.status_code == 404, (method, path, refused.text[:200])
        # ... and the admin API itself is still where it was, on loopback, and still up.
        assert (await client.get(f"{envoy.admin}/ready")).text.strip() == "LIVE"

"""No control plane: both ztunnels run `zpilot render --static` output (config and secrets inline,
one CA), and the article's path works the same: the static renderer's output carries traffic."""

from __future__ import annotations

import base64
import shutil

import pytest

from zpilot.world import demo as world_demo
from zpilot.world import workdir
from zpilot.world.builder import World, WorldOptions
from zpilot.world.errors import WorldError

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow]


@pytest.mark.parametrize("layout", ["article", "linear"])
def test_scenario_1_on_static_bootstraps(layout):
    """Also keeps its directory: the logs and manifests stay, no private key does (the CA's, and
    the workload keys inline in the static bootstraps)."""
    with World(options=WorldOptions(static_config=True, keep_workdir=True, layout=layout)) as world:
        assert world.server is None
        assert _holds_a_private_key(world.dir / "ztunnel-a.bootstrap.json")
        result = world_demo.run_scenario_1(world)
        assert result.observation.trace.ok, result.observation.trace.error
        assert result.observation.facts.get("response_flags") == "-"
        assert result.differences == {}, result.differences
        with pytest.raises(WorldError):
            world.relabel("sleep", {"app": "sleep"})
    try:
        assert world.leftovers() == []
        assert (world.dir / "ztunnel-a.err").exists() and (world.manifests / "workloads.yaml").exists()
        assert (world.dir / workdir.KEPT_MARKER).exists()
        assert [f for f in world.dir.rglob("*") if f.is_file() and _holds_a_private_key(f)] == []
    finally:
        shutil.rmtree(world.dir)


def _holds_a_private_key(path) -> bool:
    """PEM, or PEM inside a bootstrap's base64 ``inline_bytes``."""
    data = path.read_bytes()
    return b"PRIVATE KEY" in data or base64.b64encode(b"-----BEGIN PRIVATE KEY-----") in data

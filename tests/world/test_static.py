"""No control plane: both ztunnels run `zpilot render --static` output (config and secrets inline,
one CA), and the article's path works the same: the static renderer's output carries traffic."""

from __future__ import annotations

import pytest

from zpilot.world import demo as world_demo
from zpilot.world.builder import World, WorldError, WorldOptions

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow]


def test_scenario_1_on_static_bootstraps():
    with World(options=WorldOptions(static_config=True)) as world:
        assert world.server is None
        result = world_demo.run_scenario_1(world)
        assert result.observation.trace.ok, result.observation.trace.error
        assert result.observation.facts.get("response_flags") == "-"
        assert result.differences == {}, result.differences
        with pytest.raises(WorldError):
            world.relabel("sleep", {"app": "sleep"})
    assert world.leftovers() == []

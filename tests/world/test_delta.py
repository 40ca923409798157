"""The same article path with the ztunnels on incremental (delta) ADS: a world of its own, per
outbound layout (what delta ADS sends and removes is each layout's resources)."""

from __future__ import annotations

import pytest

from zpilot.world import demo as world_demo
from zpilot.world.builder import World, WorldOptions

from ..layouts import LAYOUTS

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scenario_1_over_delta_ads(layout):
    with World(options=WorldOptions(delta_xds=True, layout=layout)) as world:
        modes = {c["mode"] for c in world.debug("/debug/syncz")}
        assert modes == {"delta"}, modes
        result = world_demo.run_scenario_1(world)
        assert result.observation.trace.ok, result.observation.trace.error
        assert result.differences == {}, result.differences
    assert world.leftovers() == []

"""``contract.ENVOY_FLAGS``, the Envoy flags a ztunnel runs with (the chart passes them; bench/scale.py measures
with them). ``--ignore-unknown-dynamic-fields`` has Envoy skip its walk of every xDS resource for unknown,
deprecated and work-in-progress fields, which only logs and counts them: the tests' Envoys run without it, and
here a real Envoy counts none of them in zpilot's config, so the flag hides nothing; and with the flag a
resource Envoy cannot take is still refused."""

from __future__ import annotations

import re

from zpilot import contract

from .e2e_util import wait_nacked, wait_synced
from .envoy_util import NEEDS_ENVOY_AS_ROOT, NODE_A
from .test_envoy_lifecycle import BreakBlackHole

pytestmark = NEEDS_ENVOY_AS_ROOT

#: The work-in-progress messages zpilot's config uses, each logged by Envoy without the flag: the source gate's
#: IP matcher and its ranges.
WORK_IN_PROGRESS = {"xds.type.matcher.v3.IPMatcher", "xds.type.matcher.v3.IPMatcher.IPRangeMatcher", "xds.core.v3.CidrRange"}


async def test_zpilot_config_has_nothing_the_flag_hides(make_plane, envoys, layout):
    plane = await make_plane(layout=layout)
    envoy = envoys(NODE_A, plane.xds_port, cli=("--insecure-xds",))  # without contract.ENVOY_FLAGS
    await envoy.wait_ready()
    stats = await envoy.stats(r"^(server\.dynamic_unknown_fields|runtime\.deprecated_feature_use)$")
    assert stats == {"server.dynamic_unknown_fields": 0, "runtime.deprecated_feature_use": 0}, stats
    logged = set(re.findall(r"message '([\w.]+)' is contained in proto file '[^']+' marked as work-in-progress",
                            envoy.log.read_text(errors="replace")))
    assert logged <= WORK_IN_PROGRESS, logged


async def test_with_the_flags_a_resource_envoy_cannot_take_is_still_refused(make_plane, envoys, layout):
    assert contract.ENVOY_FLAGS == ("--ignore-unknown-dynamic-fields",)
    hook = BreakBlackHole()
    plane = await make_plane(edit=hook, layout=layout)
    envoy = envoys(NODE_A, plane.xds_port, cli=("--insecure-xds",), flags=contract.ENVOY_FLAGS)
    await envoy.wait_ready()
    await wait_synced(plane.debug_port, NODE_A)
    assert "work-in-progress" not in envoy.log.read_text(errors="replace")  # the walk was skipped
    hook.on = True
    await plane.update()
    assert "Expected positive duration" in (await wait_nacked(plane.debug_port, NODE_A, "CDS"))["last_nack"]["error"]

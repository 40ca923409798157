"""One world per outbound layout for the whole tests/world package: building it takes ~10 s (two
Envoys, the control plane, the node rules), and the scenarios only read it, except the relabel
scenario, which puts the pod back. Each is torn down before the next layout's is built, and the
last after the package's last test (so it does not keep two Envoys busy while the rest of the
suite runs), also on failure or Ctrl-C."""

from __future__ import annotations

import pytest

from zpilot.contract import DEFAULT_LAYOUT
from zpilot.world.builder import World, WorldOptions
from zpilot.world.prerequisites import missing_prerequisites

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow]


def pytest_collection_modifyitems(config, items):
    missing = missing_prerequisites()
    if not missing:
        return
    skip = pytest.mark.skip(reason="needs " + "; ".join(missing))
    for item in items:
        if "tests/world" in str(item.fspath) and "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="package")
def world(request):
    """The article's world, one per outbound layout: every module using it parameterizes it
    (indirectly) with ``pytest.mark.parametrize("world", LAYOUTS, indirect=True)`` (tests/layouts.py),
    so that pytest groups the tests by layout and builds each layout's world once (a test that did
    not would get a world of the default layout of its own: a third build)."""
    layout = getattr(request, "param", DEFAULT_LAYOUT)
    with World(options=WorldOptions(layout=layout)) as w:
        yield w
    assert w.leftovers() == [], "the world left something behind"


#: Figures the world's tests measured (fault suite): shown at the end of the run, whatever -s says.
FIGURES = pytest.StashKey[list]()


@pytest.fixture
def figure(request, record_property):
    """``figure("...")``: a measured figure of this test, kept in the JUnit report (``record_property``),
    printed with the test's output and listed in the run's terminal summary."""

    def record(text: str) -> None:
        record_property("figure", text)
        request.config.stash.setdefault(FIGURES, []).append((request.node.nodeid, text))
        print(f"FIGURE {request.node.name}: {text}")

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("figures measured by tests/world")
        for nodeid, text in figures:
            terminalreporter.write_line(f"{nodeid}: {text}")

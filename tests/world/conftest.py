"""One world for the whole tests/world package: building it takes ~10 s (two Envoys, the control
plane, the node rules), and the scenarios only read it, except the relabel scenario, which puts
the pod back. It is torn down after the package's last test (so it does not keep two Envoys busy
while the rest of the suite runs), also on failure or Ctrl-C."""

from __future__ import annotations

import pytest

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
    """The article's world; a module parameterizes it (indirectly) with the outbound layout:
    ``pytest.mark.parametrize("world", ["article", "linear"], indirect=True)``."""
    layout = getattr(request, "param", "article")
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

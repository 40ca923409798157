"""``zpilot --help`` and every sub-command's ``--help`` load no heavy module.

A check of WHAT is imported, not a timing: the commands import their work (gRPC, protobuf and
the Envoy API, FastAPI, cryptography, pyroute2, YAML...) when they run, so building the parser
loads the standard library and the command modules alone. Each command line runs in a fresh
interpreter as ``python -m zpilot.cli ... --help`` does (``runpy``), and lists ``sys.modules`` as
the process exits.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from zpilot.cli import build_parser

#: Modules of ours a ``--help`` may load: the parser, the argument definitions (the commands', and the
#: source flags serve and the CNI agent share), and the ztunnel contract their defaults come from (ports,
#: names: the standard library alone).
ALLOWED_OURS = {"zpilot", "zpilot.cli", "zpilot.logs", "zpilot.commands", "zpilot.cni", "zpilot.cni.cli",
                "zpilot.cni.errors", "zpilot.contract", "zpilot.kube", "zpilot.kube.source_flags"}
#: Named so that a failure reads plainly; any other non-stdlib module fails the test too.
HEAVY = ("grpc", "google.protobuf", "envoy", "xds", "udpa", "validate", "fastapi", "starlette", "pydantic",
         "uvicorn", "cryptography", "kubernetes_asyncio", "pyroute2", "yaml", "pythonjsonlogger", "httpx")


def command_lines(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the parser (``()``, ``("serve",)``, ``("cni", "plan")``...)."""
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(command_lines(sub, (*prefix, name)))
    return out


#: Runs ``python -m zpilot.cli ARGS`` in this interpreter and lists ``sys.modules`` on stderr at
#: exit (``--help`` ends with SystemExit, and exit handlers still run).
LIST_MODULES = """
import atexit, runpy, sys
atexit.register(lambda: print(*(f"module: {name}" for name in sys.modules), sep="\\n", file=sys.stderr))
if len(sys.argv) > 1:
    sys.argv = ["zpilot", *sys.argv[1:]]
    runpy.run_module("zpilot.cli", run_name="__main__", alter_sys=True)
"""


def imported_modules(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", LIST_MODULES, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.removeprefix("module: ") for line in proc.stderr.splitlines() if line.startswith("module: ")}


@pytest.fixture(scope="module")
def interpreter_start() -> set[str]:
    """What any Python process here has loaded before our code runs (site, .pth hooks, editable installs)."""
    return imported_modules()


def test_every_command_path_is_checked():
    paths = command_lines(build_parser())
    assert {(), ("serve",), ("render",), ("cni",), ("cni", "plan"), ("cni", "run")} <= set(paths)


@pytest.mark.parametrize("command", command_lines(build_parser()), ids=lambda c: " ".join(c) or "zpilot")
def test_help_imports_only_the_argument_definitions(command, interpreter_start):
    loaded = imported_modules(*command, "--help") - interpreter_start
    assert "zpilot.commands.serve" in loaded  # the check sees the parser being built
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.startswith("google.protobuf"))
    assert not heavy, f"`zpilot {' '.join(command)} --help` imports {heavy}"
    ours = {m for m in loaded if m.split(".")[0] == "zpilot"}
    work = sorted(m for m in ours - ALLOWED_OURS if not m.startswith("zpilot.commands."))
    assert not work, f"`zpilot {' '.join(command)} --help` imports {work}"
    foreign = sorted(m for m in loaded - ours if m.split(".")[0] not in sys.stdlib_module_names)
    assert not foreign, f"`zpilot {' '.join(command)} --help` imports non-stdlib modules {foreign}"


#: The examples' manifests, and a node and pod of theirs (the commands below read them, as the tests do).
ARTICLE = Path(__file__).resolve().parents[1] / "examples" / "article"
ARTICLE_NODE = "gke-jimmy-cluster-default-pool-d5041909-d10i"
ARTICLE_POD = "default/sleep-5644bdc767-2dfg7"
#: The Kubernetes client: 0.5 s of CPU to import, for a command that never talks to an API server.
CLUSTER_CLIENT = "kubernetes_asyncio"


def test_serve_from_manifests_does_not_load_the_kubernetes_client(tmp_path):
    """``zpilot serve --manifests`` (the tests' and the demo's way to run it) with its CA on disk reads no
    cluster: started to ready, then stopped, it has not imported the client (it did through the API watch's
    module, the credentials' and the CA Secret's, 0.5 s of CPU at every start)."""
    proc = subprocess.Popen([sys.executable, "-c", LIST_MODULES, "serve", "--manifests", str(ARTICLE),
                             "--ca-dir", str(tmp_path / "ca"), "--xds-address", "127.0.0.1", "--xds-port", "0",
                             "--debug-port", "0", "--metrics-address", "127.0.0.1", "--metrics-port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        lines = []
        for line in proc.stderr:  # the "serving N nodes" record comes once ADS listens: ready
            lines.append(line)
            if "serving " in line and " nodes: ADS on " in line:
                break
        else:
            raise AssertionError("zpilot serve ended before it was ready:\n" + "".join(lines)[-2000:])
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, rest[-2000:]
    loaded = {line.removeprefix("module: ") for line in rest.splitlines() if line.startswith("module: ")}
    assert "zpilot.runtime.serve" in loaded  # the check sees the command's work
    assert CLUSTER_CLIENT not in loaded


@pytest.mark.parametrize("command", [
    ("render", "--manifests", str(ARTICLE), "--node", ARTICLE_NODE),
    ("bootstrap", "--node", ARTICLE_NODE, "--xds", "127.0.0.1:15010", "--insecure-xds"),
    ("explain", "--manifests", str(ARTICLE), "--from", ARTICLE_POD, "--to", "10.0.0.1:80"),
    ("cni", "plan", "--manifests", str(ARTICLE), "--node", ARTICLE_NODE),
], ids=lambda c: c[0] if c[0] != "cni" else "cni plan")
def test_offline_commands_do_not_load_the_kubernetes_client(command):
    """Commands that read manifests or files only never import the client (kept so: the tests run them often)."""
    loaded = imported_modules(*command)
    assert "zpilot.model" in loaded or command[0] == "bootstrap"  # the check sees the command's work
    assert CLUSTER_CLIENT not in loaded

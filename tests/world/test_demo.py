"""``zpilot demo`` and ``zpilot explain`` agree on scenario 1; the demo runs from the command line
and leaves nothing behind; a world torn down by Ctrl-C leaves nothing behind either."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from zpilot.contract import DEFAULT_LAYOUT
from zpilot.explain import FACT_KEYS
from zpilot.world import demo as world_demo
from zpilot.world import workdir
from zpilot.world.builder import sweep_abandoned_worlds
from zpilot.world.netns import list_netns, world_prefix
from zpilot.world.topology import NODE_B

from ..layouts import LAYOUTS, pod_chain, service_chain

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow]


@pytest.mark.parametrize("world", LAYOUTS, indirect=True)
def test_explain_agrees_with_what_the_demo_observed(world):
    result = world_demo.run_scenario_1(world)
    trace = result.observation.trace
    assert trace.ok, trace.error
    assert result.observation.facts.get("response_flags") == "-"
    observed = {k: result.observation.facts.get(k) for k in FACT_KEYS}
    missing = [k for k, v in observed.items() if v is None]
    assert not missing, f"the demo did not observe {missing}"
    assert result.differences == {}, f"explain vs observed: {result.differences}"
    # the observations are the kernel's and Envoy's own, not copies of explain's
    evidence = result.observation.evidence
    assert "+" in evidence["mark"] and "pkts" in evidence["mark"]
    assert "ip route get" in evidence["route_table"] and "ip route get" in evidence["dest_route_table"]
    assert evidence["peer_identity"].endswith("access log")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_demo_command_prints_the_path_and_cleans_up(layout):
    """``zpilot demo`` (its default layout) and ``zpilot demo --layout article``."""
    flags = [] if layout == DEFAULT_LAYOUT else ["--layout", layout]
    proc = subprocess.run([sys.executable, "-m", "zpilot.cli", "demo", *flags], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for expected in ("mark               0x100", "route_table        101", "tunnel_device      istioout",
                     "tproxy_port        15001", "inbound_chain      inbound_10.4.3.20",
                     "filter_chain       " + service_chain(layout, "http_productpage.default.svc.cluster.local"),
                     "peer_identity      spiffe://cluster.local/ns/default/sa/sleep",
                     f"agrees on all {len(FACT_KEYS)} facts", "(ADS over mutual TLS, each with its node's certificate)"):
        assert expected in out, out
    # other worlds (other test runs) may come and go meanwhile: look at the demo's own
    prefix = re.search(r"namespaces (zw\d+-\d+)-\*", out).group(1)
    assert [ns for ns in list_netns() if ns.startswith(prefix + "-")] == []


def test_demo_without_prerequisites_says_what_is_missing(monkeypatch, capsys):
    from zpilot.commands import demo as demo_command
    from zpilot.world import prerequisites

    monkeypatch.setattr(prerequisites, "missing_prerequisites", lambda: ["root (...)", "`ipset` not on PATH"])
    assert demo_command.run(type("Args", (), {"keep_logs": False})()) == 2
    err = capsys.readouterr().err
    assert "root" in err and "ipset" in err


#: A world whose rules come from one `zpilot cni apply` per node (no agent), used once before Ctrl-C:
#: on the default outbound layout only, since what is tested (the CNI's rules carry traffic, the
#: teardown leaves nothing) is the node's side, the same with either layout.
#: Ctrl-C must raise KeyboardInterrupt here even if the suite was started with SIGINT ignored (as any
#: `cmd &` from a non-interactive shell is): Python keeps an inherited ignore, and the SIGINT the test
#: sends would then be lost while the world sleeps on.
BUILD_AND_WAIT = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from zpilot.world import scenarios
from zpilot.world.builder import World, WorldOptions
with World(options=WorldOptions(cni_agent=False)) as w:
    # a pod-IP connection: one line at ztunnel A, three in the linear layout (its pod-select and tunnel
    # internal listeners too)
    logs_at_a = 3 if w.options.layout == "linear" else 1
    trace = scenarios.request(w, "sleep", "10.4.3.20", 9080, expect_logs={"a": logs_at_a, "b": 1})
    chain = [e["filter_chain"] for e in trace.at("a", log="ztunnel_outbound")]
    print(w.prefix, w.dir, trace.ok, *chain, flush=True)
    time.sleep(120)
"""


def test_ctrl_c_tears_the_world_down(tmp_path):
    """Built with `zpilot cni apply` instead of the agent, used, then interrupted."""
    errors = tmp_path / "world.err"  # a file, not a pipe nobody reads: a full pipe would block the child
    with open(errors, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", BUILD_AND_WAIT], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line, errors.read_text()
        prefix, workdir = line[0], Path(line[1])
        # rules from `zpilot cni apply` carry traffic as well as the agent's do
        assert line[2:] == ["True", pod_chain(DEFAULT_LAYOUT, "spiffe://cluster.local/ns/default/sa/bookinfo-productpage", node=NODE_B)], line
        assert any(ns.startswith(prefix + "-") for ns in list_netns())
        envoys = _pids_running(str(workdir))
        assert envoys, "no process of the world found"
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the world still runs 60 s after SIGINT; its stderr:\n{errors.read_text()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not [ns for ns in list_netns() if ns.startswith(prefix + "-")]
    deadline = time.monotonic() + 5
    while _pids_running(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_running(str(workdir)), "processes of the world survived Ctrl-C"
    assert not workdir.exists()


#: A world being built, to be killed with SIGKILL half-way (no teardown can run).
BUILD_FOREVER = """
import time
from zpilot.world.builder import World, WorldOptions
with World(options=WorldOptions(cni_agent=False)):
    time.sleep(120)
"""


def test_a_sigkilled_world_is_swept_by_the_next_one(tmp_path):
    """Killed once its CA's key is on disk: the namespaces and the directory, key included, stay
    behind; the sweep every world runs first removes both."""
    errors = tmp_path / "world.err"
    with open(errors, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", BUILD_FOREVER], stdout=subprocess.DEVNULL, stderr=err)
    prefix = f"{world_prefix(proc.pid)}-1"
    pattern = f"{workdir.DIR_PREFIX}{prefix}-*"
    try:
        deadline = time.monotonic() + 120  # against a hang only: the key appears within seconds
        while not list(Path(tempfile.gettempdir()).glob(f"{pattern}/{workdir.CA_DIR}/root-key.pem")):
            assert proc.poll() is None, f"the world exited before its CA existed:\n{errors.read_text()}"
            assert time.monotonic() < deadline, f"no CA key in {pattern} after 120 s:\n{errors.read_text()}"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    [directory] = Path(tempfile.gettempdir()).glob(pattern)
    assert (directory / workdir.CA_DIR / "root-key.pem").exists()
    left = [ns for ns in list_netns() if ns.startswith(prefix + "-")]
    assert left, "the killed world left no namespace: nothing to sweep"

    removed = sweep_abandoned_worlds()

    assert str(directory) in removed and set(left) <= set(removed)
    assert not directory.exists()
    assert not [ns for ns in list_netns() if ns.startswith(prefix + "-")]


def _pids_running(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (the world's private directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("world", LAYOUTS, indirect=True)
@pytest.mark.parametrize("source,target", [
    ("sleep", "productpage-ip"),  # scenario 2: the pod chain's own tunnel
    ("sleep", "details-vip"),  # same node: the 15088 redirect
    ("sleep", "details-ip"),  # same node, pod chain: the hairpin replies (rule 19999)
    ("httpbin", "productpage-ip"),  # scenario 5, same node: plaintext 15006
    ("httpbin", "sleep-ip"),  # scenario 5 across nodes
])
def test_explain_agrees_on_other_paths(world, source, target):
    name, kind = target.rsplit("-", 1)
    if kind == "ip":
        pod = world.spec.pod(name)
        host, port = pod.ip, pod.ports[0][1]
    else:
        svc = world.spec.service(name)
        host, port = svc.cluster_ip, svc.ports[0][1]
    result = world_demo.observe_and_explain(world, source, host, port)
    assert result.observation.trace.ok, result.observation.trace.error
    assert result.differences == {}, f"explain vs observed: {result.differences}"
    assert {"inbound_chain", "destination", "pod"} <= set(result.observation.facts)
    if source == "httpbin":
        assert result.observation.facts["dest_tproxy_port"] == "15006"

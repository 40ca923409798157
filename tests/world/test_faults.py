"""Faults in the live world (issue 11): real Envoys, real redirection, processes killed with SIGKILL
while traffic runs, and what the pods see meanwhile. Each test reports its figures (``figure``: in
the JUnit properties, the test's output and the run's summary); docs/operations.md quotes them.

The module has a world of its own, built with the kubelet's readiness probe of the ztunnels
(zpilot/world/kubelet.py), because faults are destructive: a test that fails half-way must not
leave the package's shared world broken for the scenarios. Each test starts from, and returns to,
the same healthy state (:func:`healthy`). The long variants are marked ``slow``.

The data path's limits under load (concurrency, idle timeout) go through the outbound layout's clusters
and proxies: they run in a world of each layout. The killed processes run in the default layout's only
(:data:`NODE_SIDE`): what they test is the control plane and the node's redirection, which the layout
does not change (the scenarios' control-plane restart runs with both).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from collections import Counter

import pytest

from zpilot.contract import DEFAULT_LAYOUT
from zpilot.translators.bootstrap import XDS_RETRY_MAX_MS
from zpilot.world import scenarios
from zpilot.world.builder import World, WorldOptions
from zpilot.world.kubelet import ProbeSettings
from zpilot.world.netns import run
from zpilot.world.cni_node import commands_logged
from zpilot.world.topology import opted_out, without_opt_out
from zpilot.world.traffic import Attempt, ConnectionChurn, HeldConnections, hold_concurrently

from ..layouts import DEFAULT_FIRST

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy]
#: A fault that does not depend on the outbound layout: its test runs in the default layout's world only.
NODE_SIDE = pytest.mark.parametrize("fault_world", [DEFAULT_LAYOUT], indirect=True)

SLEEP_IP = "10.4.4.19"
ZTUNNEL_A_IP = "10.4.4.18"


@pytest.fixture(scope="module", params=DEFAULT_FIRST)  # (NODE_SIDE's worlds are the default's)
def fault_world(request):
    with World(options=WorldOptions(kubelet=ProbeSettings(), cni_log_commands=True, layout=request.param)) as w:
        yield w
    assert w.leftovers() == [], "the world left something behind"


@pytest.fixture
def world(fault_world):
    """The fault world, checked healthy before the test and put back healthy after it."""
    healthy(fault_world)
    yield fault_world
    healthy(fault_world)


def healthy(w: World) -> None:
    """Every ztunnel Ready and ACKing its config, every node redirecting and in sync."""
    w.wait_until(lambda: all(p.ready for p in w.spec.pods if p.is_ztunnel), timeout=30, what="ztunnels Ready")
    w.wait_until(lambda: w.synced_nodes() == {n.key for n in w.spec.nodes}, timeout=60,
                 what="every ztunnel synced with zpilot serve")
    for node in w.spec.nodes:
        w.wait_until(lambda: w.cni_in_sync(node.key), timeout=60, what=f"node {node.key} redirecting, in sync")


def summary(attempts: list[Attempt]) -> str:
    kinds = Counter("tunnelled" if a.ok and a.peer_ip == ZTUNNEL_A_IP else "plaintext" if a.ok else "failed"
                    for a in attempts)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"


# -- zpilot serve ------------------------------------------------------------------------------

#: How long after the restarted server is ready both ztunnels must be synced again. The issue asks
#: for 5 s "of the restart"; this asserts it from the moment the server listens, which is what the
#: data path controls: each ztunnel redials within XDS_RETRY_MAX_MS (2 s: the bootstrap's back-off
#: cap) and then needs one exchange of four responses. The bound is functional, not a speed target:
#: it holds with 3 s to spare for that exchange on a loaded 2-core machine, and it fails when a
#: ztunnel waits on Envoy's default back-off (up to 30 s, which the long outage reaches) or when the
#: server does not answer a reconnecting ztunnel. The server's own start-up (a Python interpreter
#: and the first translation, 1.5-5 s here depending on load) is measured and reported beside it.
RESYNC_BOUND = 5.0


@pytest.mark.parametrize("outage", [
    pytest.param(1.0, id="1s-outage"),
    pytest.param(20.0, id="20s-outage", marks=pytest.mark.slow),
])
@NODE_SIDE
def test_serve_killed_and_restarted_under_traffic(world, figure, outage):
    """kill -9 of zpilot serve while sleep opens a connection every 20 ms and holds 20: the data path
    does not notice (0 failed connections: the ztunnels keep their config), and once the server is
    back both ztunnels are synced again, with the same config (nothing is drained or re-sent in
    vain: versions are content hashes)."""
    vip, port = scenarios.service_target(world, "productpage")
    sleep = world.pod_ns("sleep")
    versions_before = acked_versions(world)
    with HeldConnections(world.client, sleep, vip, port, count=20, period=0.5) as held, \
            ConnectionChurn(world.client, sleep, vip, port, interval=0.02) as churn:
        time.sleep(1.0)
        world.kill_server()
        time.sleep(outage)
        started = time.monotonic()
        world.start_server()  # returns once /healthz/ready answers 200
        ready = time.monotonic()
        world.wait_until(lambda: world.synced_nodes() == {"a", "b"}, timeout=90, what="both ztunnels synced")
        synced = time.monotonic()
        time.sleep(1.0)
    resync, total = synced - ready, synced - started
    figure(f"serve down {outage:.0f} s: {len(churn.attempts)} new connections ({summary(churn.attempts)}),"
           f" 20 held connections used {held.requests} times, {len(held.failures)} failed;"
           f" both ztunnels SYNCED {resync:.2f} s after the restarted serve was ready"
           f" ({total:.2f} s after it was started, {ready - started:.2f} s of which its start-up)")
    assert churn.failures == [], [a.error for a in churn.failures[:5]]
    assert held.failures == []
    assert all(a.peer_ip == ZTUNNEL_A_IP for a in churn.attempts), "a connection was not tunnelled"
    assert resync < RESYNC_BOUND, f"ztunnels synced {resync:.2f} s after the server was ready"
    assert XDS_RETRY_MAX_MS / 1000 < RESYNC_BOUND
    assert acked_versions(world) == versions_before


def acked_versions(world: World) -> dict[tuple[str, str], str]:
    """(node, type) -> ACKed version, for clusters, endpoints and listeners (secrets may legitimately
    change: a certificate's renewal window can pass between two reads)."""
    out = {}
    for conn in world.debug("/debug/syncz"):
        for status in conn["types"]:
            if status["type"] in ("CDS", "EDS", "LDS"):
                out[(conn["node"], status["type"])] = status["acked_version"]
    return out


# -- a ztunnel ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fail-open", "fail-closed"])
@NODE_SIDE
def test_ztunnel_killed_and_restarted(world, figure, mode):
    """kill -9 of node A's ztunnel Envoy. The kubelet's probe turns its pod NotReady, and the CNI
    agent does what its mode promises for sleep's new connections: fail-open, they run unmeshed
    (plaintext: productpage sees sleep's own address); fail-closed, they are dropped (nothing reaches
    productpage). Restarted, the ztunnel is Ready again and connections are tunnelled again."""
    closed = mode == "fail-closed"
    if closed:  # restart node A's agent in that mode (killed or stopped, an agent leaves its rules)
        world.kill_cni_agent("a")
        world.start_cni_agent("a", fail_closed=True)
    vip, port = scenarios.service_target(world, "productpage")
    cni = world.node_cni("a")
    try:
        with ConnectionChurn(world.client, world.pod_ns("sleep"), vip, port, interval=0.02, timeout=2.0) as churn:
            time.sleep(1.0)
            killed = time.monotonic()
            world.kill_ztunnel("a")
            world.wait_until(lambda: (s := cni.status()).mode == mode and s.in_sync, timeout=60,
                             what=f"node A's agent to {mode}")
            switched = time.monotonic()
            time.sleep(2.0)
            restarted = time.monotonic()
            ztunnel = world.start_ztunnel("a")
            world.wait_until(ztunnel.ready, timeout=60, what="the restarted ztunnel LIVE")
            live = time.monotonic()
            world.wait_until(lambda: world.cni_in_sync("a"), timeout=60, what="node A redirecting again")
            redirecting = time.monotonic()
            time.sleep(1.5)
            ended = time.monotonic()
    finally:
        if closed:
            world.kill_cni_agent("a")
            world.start_cni_agent("a", fail_closed=False)
    transitions = world.kubelet.transitions
    not_ready = world.kubelet.first_after(killed, "a", False)
    ready_again = world.kubelet.first_after(restarted, "a", True)
    assert not_ready is not None and ready_again is not None, transitions
    during, down, back = churn.between(killed, switched), churn.between(switched, restarted), churn.between(redirecting, ended)
    returning = churn.between(restarted, redirecting)
    first_plain = next((a.started for a in during + down if a.ok), None)
    figure(f"{mode}: NotReady {not_ready.at - killed:.2f} s after the kill;"
           f" from the kill until the agent's switch was confirmed ({switched - killed:.2f} s): {summary(during)}"
           f"{_errors(during)}"
           + (f", the first answered {first_plain - killed:.2f} s after the kill" if first_plain else "")
           + f"; while down: {summary(down)}; restarted: LIVE after {live - restarted:.2f} s, Ready after"
           f" {ready_again.at - restarted:.2f} s, redirecting confirmed after {redirecting - restarted:.2f} s"
           f" ({summary(returning)} meanwhile{_errors(returning)}); then {summary(back)}")
    assert down and back
    if closed:
        # Nothing got through while the node failed closed: the SYNs were dropped. A connection the
        # client was still retrying when the ztunnel came back may then succeed, tunnelled.
        through = [a for a in down if a.ok and (a.started + a.seconds < restarted or a.peer_ip != ZTUNNEL_A_IP)]
        assert through == [], [(a.started - restarted, a.seconds, a.seen) for a in through][:3]
    else:
        failing = [a for a in down if not (a.ok and a.peer_ip == SLEEP_IP)]
        # On a failure: when each failing attempt started after the switch, its source port, and node
        # A's conntrack entries of those ports. Such failures (1-7 of 100, in 1 of 3 full runs) were
        # stale entries of SYNs sent into the dead ztunnel, reused 5-tuples: the test below.
        assert not failing, ([(round(a.started - switched, 2), a.local, a.error, a.seen) for a in failing][:5],
                             _conntrack_of(world, "a", failing))
    assert all(a.ok and a.peer_ip == ZTUNNEL_A_IP for a in back), [(a.error, a.seen) for a in back
                                                                   if not (a.ok and a.peer_ip == ZTUNNEL_A_IP)][:3]


#: Source ports of sleep's connections in the test below: outside the ephemeral range (32768-60999),
#: so no other connection of the world takes them meanwhile.
TUNNELLED_PORT, UNANSWERED_PORT = 31001, 31002


@NODE_SIDE
def test_fail_open_on_a_source_port_the_redirect_used(world):
    """A connection after the switch to fail-open from a source port (hence a 5-tuple) that sleep
    used while node A redirected into its dead ztunnel: a SYN left unanswered there leaves a
    conntrack entry (SYN_SENT, 120 s) that skipped kube-proxy's DNAT; the new connection would
    match it and go to the VIP untranslated until it expired (node A has no route to it: "Network is
    unreachable", or a timeout once the node's ICMP errors are rate-limited). The deterministic
    form of the churn's rare failures in test_ztunnel_killed_and_restarted (its source ports wrap
    around after ~3,000 connections to one destination). The same for a connection tunnelled and
    closed before the fault. Both must reach productpage in plaintext, as a new port does."""
    vip, port = scenarios.service_target(world, "productpage")
    cni = world.node_cni("a")
    killed = False
    with world.kubelet.paused():  # the model says Ready until the test says otherwise
        try:
            tunnelled = _exchange_from(world, TUNNELLED_PORT, vip, port, timeout=10.0)
            assert tunnelled.get("peer", "").startswith(ZTUNNEL_A_IP + ":"), tunnelled
            world.kill_ztunnel("a")
            killed = True
            # node A still redirects: the SYN goes to the dead ztunnel and is dropped there
            unanswered = _exchange_from(world, UNANSWERED_PORT, vip, port, timeout=1.0)
            assert "error" in unanswered, unanswered
            stale = _conntrack_lines(world, "a", (UNANSWERED_PORT,))
            assert any("SYN_SENT" in line for line in stale), stale
            world.update_spec(_ztunnel_a(False))
            world.wait_until(lambda: (s := cni.status()).mode == "fail-open" and s.in_sync, timeout=60,
                             what="node A's agent to fail-open")
            seen = {p: _exchange_from(world, p, vip, port, timeout=5.0) for p in (UNANSWERED_PORT, TUNNELLED_PORT)}
            fresh = _exchange_from(world, 0, vip, port, timeout=5.0)
        finally:
            if killed:
                world.start_ztunnel("a")
            world.update_spec(_ztunnel_a(True))
    assert fresh.get("peer", "").startswith(SLEEP_IP + ":"), fresh
    failed = {p: answer for p, answer in seen.items() if not answer.get("peer", "").startswith(SLEEP_IP + ":")}
    assert not failed, (failed, stale, _conntrack_lines(world, "a", tuple(failed)))


def _exchange_from(world: World, source_port: int, host: str, port: int, *, timeout: float) -> dict:
    """One request from sleep, from ``source_port`` (0: the kernel's choice): the pod's answer (its
    ``peer``: who it saw), or ``{"error": ...}``."""
    sock = world.client.sockets.socket(world.pod_ns("sleep"))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((SLEEP_IP, source_port))
    sock.settimeout(timeout)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        sock.connect((host, port))
        conn.sock = sock
        conn.request("GET", "/", headers={"Connection": "close"})
        return json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()
        sock.close()


def _conntrack_lines(world: World, node: str, ports: tuple[int, ...]) -> list[str]:
    """The node's conntrack entries (marks included) of these source ports, at most 10."""
    table = run(["ip", "netns", "exec", world.node_ns(node), "cat", "/proc/net/nf_conntrack"], check=False)
    return [line for line in table.splitlines() if any(f"sport={port} " in line for port in ports)][:10]


def _conntrack_of(world: World, node: str, attempts: list[Attempt]) -> list[str]:
    """The node's conntrack entries (marks included) of these attempts' source ports, at most 10."""
    ports = tuple({int(a.local.rsplit(":", 1)[1]) for a in attempts if a.local})
    return _conntrack_lines(world, node, ports) if ports else ["no source port recorded"]


def _errors(attempts: list[Attempt]) -> str:
    errors = Counter(a.error.rsplit(": ", 1)[-1] for a in attempts if a.error)
    return "".join(f"; {n} x {error}" for error, n in errors.most_common(3))


# -- the CNI agent -----------------------------------------------------------------------------

def _ztunnel_a(ready: bool):
    return lambda spec: spec.with_pod_ready(spec.ztunnel_on("a").name, ready)


def _details(meshed: bool):
    def change(spec):
        labels = dict(spec.pod("details").labels)
        return spec.with_pod_labels("details", without_opt_out(labels) if meshed else opted_out(labels))
    return change


#: Model changes of node A and the state each leads to: everything removed (no ready ztunnel:
#: fail-open), set up again from nothing, one pod out of the mesh, back in.
TRANSITIONS = [
    ("ztunnel NotReady", _ztunnel_a(False), "fail-open"),
    ("ztunnel Ready", _ztunnel_a(True), "redirect"),
    ("details out", _details(False), "redirect"),
    ("details in", _details(True), "redirect"),
]


def _converged(world: World, mode: str) -> bool:
    status = world.node_cni("a").status()
    return status.mode == mode and status.in_sync


@pytest.mark.parametrize("points", [
    pytest.param(1, id="mid-way"),
    pytest.param(6, id="6-points", marks=pytest.mark.slow),
])
@NODE_SIDE
def test_cni_agent_killed_mid_reconcile(world, figure, points):
    """kill -9 of node A's agent (and of the tool it was running) in the middle of reconciling a
    change, then restarted: it converges, and the kernel holds exactly what an undisturbed reconcile
    of the same model leaves: no rule, set member, route or device lost or duplicated.

    The agents of this world log each command before they run it (``cni_log_commands``): the
    undisturbed reconcile of each change is counted first (n commands), then the same change is
    made again and the agent killed as soon as it has started its k-th command, k spread over n."""
    cni = world.node_cni("a")
    log = world.cni_agents["a"].stderr
    kills = []
    with world.kubelet.paused():  # the test sets ztunnel A's readiness itself
        reference, commands = {}, {}
        for name, change, mode in TRANSITIONS:  # each model's state and work, undisturbed
            offset = log.stat().st_size
            world.update_spec(change)
            world.wait_until(lambda: _converged(world, mode), timeout=60, what=f"{name}: reconciled")
            reference[name], commands[name] = cni.inventory(), commands_logged(log, offset)
        assert reference["details in"] == reference["ztunnel Ready"]
        assert reference["details out"] != reference["details in"]
        try:
            for point in range(points):
                for name, change, mode in TRANSITIONS:
                    n = len(commands[name])
                    k = max(1, (2 * point + 1) * n // (2 * points))  # spread over the work, never after it
                    offset = log.stat().st_size
                    world.update_spec(change)
                    world.wait_until(lambda: len(commands_logged(log, offset)) >= k, timeout=30,
                                     what=f"{name}: the agent's command {k} of {n}", interval=0.001)
                    world.kill_cni_agent("a")
                    ran = commands_logged(log, offset)
                    restarted = time.monotonic()
                    world.start_cni_agent("a", wait=False)
                    world.wait_until(lambda: _converged(world, mode), timeout=60, what=f"{name}: converged after the kill")
                    kills.append((name, len(ran), n, ran[-1], time.monotonic() - restarted))
                    after = cni.inventory()
                    lost, extra = reference[name] - after, after - reference[name]
                    assert not lost and not extra, (f"{name}, killed after command {len(ran)} ({ran[-1]}):"
                                                    f" lost {dict(lost)}, extra {dict(extra)}")
        finally:
            if "a" not in world.cni_agents:  # killed, and the test failed before restarting it
                world.start_cni_agent("a", wait=False)
            for _name, change, _mode in TRANSITIONS[1:2] + TRANSITIONS[3:]:  # ztunnel Ready, details in
                world.update_spec(change)
    slowest = max(seconds for *_, seconds in kills)
    figure(f"{len(kills)} kills mid-reconcile (change, after command k of n, that command: "
           + "; ".join(f"{name} {k}/{n} `{' '.join(command.split()[:3])}`" for name, k, n, command, _ in kills[:24])
           + f"); every restart converged (slowest {slowest:.2f} s from start to `cni status` in sync)"
           f" with nothing lost or duplicated ({sum(reference['ztunnel Ready'].values())} lines compared)")


# -- the data path's limits --------------------------------------------------------------------

CONCURRENT = 2000


def _tunnel_gauges(world: World) -> dict[str, int]:
    return world.ztunnels["a"].stats(r"outbound_tunnel_clus.*\.upstream_rq_active$")


def _overflows(world: World) -> Counter[str]:
    """Every overflow counter of both ztunnels (circuit breakers, pools, listeners' connection limits)."""
    out: Counter[str] = Counter()
    for key, ztunnel in world.ztunnels.items():
        for stat, value in ztunnel.stats(r"overflow$").items():
            out[f"{key}:{stat}"] = value
    return out


def _grown(before: Counter[str], after: Counter[str]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] > before[name]}


def test_2000_concurrent_connections_from_one_pod(world, figure):
    """2,000 connections from sleep to productpage's VIP, all open at once, each answered twice: the
    regression test of the circuit breakers Envoy defaults to (1,024 per cluster: 76 of 1,100
    connections were refused in the first landing, ``upstream_rq_active_overflow``)."""
    vip, port = scenarios.service_target(world, "productpage")
    gauges: dict[str, int] = {}
    before = _overflows(world)
    result = hold_concurrently(world.client, world.pod_ns("sleep"), vip, port, CONCURRENT,
                               while_open=lambda: gauges.update(_tunnel_gauges(world)))
    overflows = _grown(before, _overflows(world))
    figure(f"{CONCURRENT} concurrent: {result.answered} answered, {result.still_open} answered again on the same"
           f" connection while all were open, {len(result.errors)} failed, in {result.seconds:.1f} s;"
           f" CONNECT streams active on ztunnel A's tunnel cluster meanwhile: {sum(gauges.values())};"
           f" overflow counters: {overflows or 'all 0'}")
    assert result.errors == [], result.errors[:5]
    assert result.answered == result.still_open == CONCURRENT
    assert sum(gauges.values()) >= CONCURRENT, gauges  # they really were concurrent, through one tunnel cluster
    assert overflows == {}


@pytest.mark.slow
def test_2000_concurrent_connections_fail_with_envoys_default_limits(world, figure):
    """The same load with the circuit breakers set to Envoy's defaults (what the first landing sent):
    connections are refused. Shows the test above can fail, and why the limits are set."""
    defaults = ("--max-connections", "1024", "--max-pending-requests", "1024", "--max-requests", "1024")
    vip, port = scenarios.service_target(world, "productpage")
    world.stop_server()
    world.start_server(extra_args=defaults)
    try:
        world.wait_until(lambda: world.synced_nodes() == {"a", "b"}, timeout=60, what="the old limits ACKed")
        before = _overflows(world)
        result = hold_concurrently(world.client, world.pod_ns("sleep"), vip, port, CONCURRENT)
        overflows = _grown(before, _overflows(world))
    finally:
        world.stop_server()
        world.start_server()
    figure(f"{CONCURRENT} concurrent with Envoy's default limits (1,024): {len(result.errors)} failed;"
           f" overflow counters: {overflows}")
    assert result.errors and overflows


IDLE_TIMEOUT = 4.0


def test_idle_timeout_is_the_configured_one(world, figure):
    """``zpilot serve --idle-timeout 4``: a tunnelled connection (sleep -> productpage VIP) used every
    2.4 s lives on past three timeouts; one left idle is closed after the configured 4 s on its idle
    clock, not before and not at some other timer's value (the first landing's 5 minutes of
    ``stream_idle_timeout`` on the CONNECT terminator, or the 1 h default of the rest)."""
    vip, port = scenarios.service_target(world, "productpage")
    sleep = world.pod_ns("sleep")
    world.stop_server()
    world.start_server(extra_args=("--idle-timeout", f"{IDLE_TIMEOUT:g}"))
    try:
        world.wait_until(lambda: world.synced_nodes() == {"a", "b"}, timeout=60, what="the idle timeout ACKed")
        dump = world.debug(f"/debug/config_dump?node={world.spec.node('a').name}")
        assert '"idle_timeout": "4s"' in json.dumps(dump), "the timeout is not in node A's config"
        active, idle = (HttpOnSocket(world.client.connect(sleep, vip, port, timeout=10), vip, port) for _ in range(2))
        try:
            active.get()
            last_activity = idle.get()
            gap = 0.6 * IDLE_TIMEOUT
            closed_after = None
            next_use = time.monotonic() + gap
            while time.monotonic() - last_activity < 3 * IDLE_TIMEOUT:
                wait = max(0.0, next_use - time.monotonic())
                if closed_after is None and select.select([idle.sock], [], [], wait)[0]:
                    closed_after = time.monotonic() - last_activity
                    assert idle.closed_by_peer(), "the idle connection got data"
                elif closed_after is not None:
                    time.sleep(wait)
                if time.monotonic() >= next_use:
                    active.get()
                    next_use = time.monotonic() + gap
            active.get()
            lived = time.monotonic() - active.opened
        finally:
            active.close()
            idle.close()
    finally:
        world.stop_server()
        world.start_server()
    figure(f"idle timeout {IDLE_TIMEOUT:g} s: the idle connection was closed {closed_after:.2f} s after its last byte"
           if closed_after is not None else "the idle connection was never closed")
    figure(f"a connection used every {gap:.1f} s lived {lived:.1f} s (over {lived / IDLE_TIMEOUT:.1f} timeouts)")
    assert closed_after is not None, f"the idle connection was still open {3 * IDLE_TIMEOUT:g} s after its last use"
    # not before the timeout (less the last byte's way from the ztunnel to the client), and at this
    # timer, not another: the next multiple would mean the first firing was not the one configured
    assert IDLE_TIMEOUT - 0.5 <= closed_after < 2 * IDLE_TIMEOUT


class HttpOnSocket:
    """HTTP/1.1 keep-alive requests on one connected socket (from the pod's namespace)."""

    def __init__(self, sock, host: str, port: int) -> None:
        import http.client

        self.sock = sock
        self.opened = time.monotonic()
        self._conn = http.client.HTTPConnection(host, port, timeout=10)
        self._conn.sock = sock

    def get(self) -> float:
        """One request; returns when its answer was read (time.monotonic())."""
        self._conn.request("GET", "/")
        response = self._conn.getresponse()
        body = response.read()
        assert response.status == 200 and b'"pod"' in body, (response.status, body[:100])
        return time.monotonic()

    def closed_by_peer(self) -> bool:
        """After the socket turned readable: whether that was the other end closing (FIN or reset)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self._conn.close()

"""Issue 10's data-path points, tried as an attacker would, in the live world:

- holding sleep's certificate (a valid mesh certificate), a CONNECT to productpage's ztunnel may
  only lead to productpage itself: B's admin API, another node's pod, a pod outside the mesh, the
  ztunnel's own ports and the node are refused (403) and counted, and nothing is dialed; the
  plaintext port refuses the ztunnel's ports too; normal traffic still flows;
- an impostor at productpage's address holding a valid certificate of another service account
  cannot terminate sleep's tunnels (``ssl.fail_verify_san`` rises on ztunnel A), on the service
  and the pod-IP path alike; with productpage's identity it can.

Each runs with both outbound layouts.
"""

from __future__ import annotations

import json
import re
import socket
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from zpilot import contract
from zpilot.certs import CertificateAuthority
from zpilot.translators import inbound_guard, names
from zpilot.translators.envoy_common import SO_MARK
from zpilot.world import scenarios
from zpilot.world.builder import World
from zpilot.world.netns import in_netns

from ..hbone import HbonePeer, client_context, hbone_connect, server_context

LAYOUTS = ["article", "linear"]
pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow,
              pytest.mark.parametrize("world", LAYOUTS, indirect=True)]

TD = "cluster.local"
SLEEP_ID = f"spiffe://{TD}/ns/default/sa/sleep"
PRODUCTPAGE_ID = f"spiffe://{TD}/ns/default/sa/bookinfo-productpage"
DETAILS_ID = f"spiffe://{TD}/ns/default/sa/bookinfo-details"
PRODUCTPAGE_IP = "10.4.3.20"
GET = b"GET / HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n"
GUARD_DENIED = f"http.inbound_hcm.rbac.{inbound_guard.CONNECT_GUARD_STAT_PREFIX}denied"
GUARD_ALLOWED = f"http.inbound_hcm.rbac.{inbound_guard.CONNECT_GUARD_STAT_PREFIX}allowed"
PLAINTEXT_REFUSED = f"tcp.{inbound_guard.PLAINTEXT_GUARD_STAT_PREFIX}.downstream_cx_total"
VIRTUAL_INBOUND_CX = "cluster.virtual_inbound.upstream_cx_total"


def credentials(world: World, directory: Path, spiffe_id: str, stem: str) -> tuple[Path, Path, Path]:
    """A fresh certificate of ``spiffe_id`` from the world's own CA: (root, certificate, key)."""
    ca = CertificateAuthority.load_or_create(world.dir / "ca", TD)
    issued = ca.issue(spiffe_id, timedelta(minutes=10))
    root, cert, key = directory / "root.pem", directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    root.write_bytes(ca.trust_bundle_pem())
    cert.write_bytes(issued.cert_chain_pem)
    key.write_bytes(issued.private_key_pem)
    key.chmod(0o600)
    return root, cert, key


def stat(world: World, node: str, name: str) -> int:
    return world.ztunnels[node].stats(f"^{re.escape(name)}$").get(name, 0)


# -- 1. a CONNECT leads to the local pod, or nowhere -----------------------------------------------

REFUSED = {
    "ztunnel B's Envoy admin API": "127.0.0.1:15000",
    "a ztunnel port on productpage's IP": f"{PRODUCTPAGE_IP}:15000",
    "productpage's HBONE port (a loop)": f"{PRODUCTPAGE_IP}:15008",
    "the top of the reserved range": f"{PRODUCTPAGE_IP}:15090",
    "a pod of another node (sleep)": "10.4.4.19:80",
    "a pod outside the mesh (httpbin, node B)": "10.4.3.19:80",
    "ztunnel B's own address": "10.4.3.14:15001",
    "node B": "10.168.15.224:10250",
    "no port": PRODUCTPAGE_IP,
    "port 0": f"{PRODUCTPAGE_IP}:0",
    "a port past 65535": f"{PRODUCTPAGE_IP}:65536",
}


def test_a_connect_reaches_the_local_pod_and_nothing_else(world, tmp_path):
    """From ztunnel A's namespace (where a tunnel to productpage starts), holding sleep's
    certificate, straight to productpage's 15008: each CONNECT that names anything but
    productpage on one of its own ports is answered 403 by ztunnel B, counted, logged, and never
    dialed (virtual_inbound opens no connection); so is a CONNECT whose authority and
    x-envoy-original-dst-host disagree. The control, productpage:9080, gets the page."""
    root, cert, key = credentials(world, tmp_path, SLEEP_ID, "sleep")
    ctx = client_context(root, cert, key)
    source = world.ztunnels["a"].netns
    zt_b = world.ztunnels["b"]

    def connect(authority: str, original_dst: str | None = None):
        raw = world.client.connect(source, PRODUCTPAGE_IP, contract.PORT_HBONE, timeout=5)
        return hbone_connect(raw, ctx, authority, original_dst=original_dst, payload=GET)

    cases = {what: (target, None) for what, target in REFUSED.items()}
    cases["authority productpage, dialing B's admin API"] = (f"{PRODUCTPAGE_IP}:9080", "127.0.0.1:15000")
    cases["authority B's admin API, dialing productpage"] = ("127.0.0.1:15000", f"{PRODUCTPAGE_IP}:9080")
    denied_before, dialed_before = stat(world, "b", GUARD_DENIED), stat(world, "b", VIRTUAL_INBOUND_CX)
    offset = zt_b.access_log.mark()
    for what, (authority, original_dst) in cases.items():
        tunnel = connect(authority, original_dst)
        assert tunnel.server_sans == [PRODUCTPAGE_ID], (what, tunnel)
        assert tunnel.status == 403, (what, tunnel)
        assert tunnel.answer == b"RBAC: access denied", (what, tunnel)
    world.wait_until(lambda: stat(world, "b", GUARD_DENIED) == denied_before + len(cases), timeout=10,
                     what="ztunnel B to count every refused CONNECT")
    assert stat(world, "b", VIRTUAL_INBOUND_CX) == dialed_before, "ztunnel B dialed a refused destination"

    def refusals() -> list:  # (a line of an earlier test's traffic may still land here: it was not refused)
        return [e for e in zt_b.access_log.since(offset) if e.get("method") == "CONNECT" and e.get("response_code") == 403]

    world.wait_until(lambda: len(refusals()) == len(cases), timeout=10, what="ztunnel B's log lines")
    for entry in refusals():
        assert entry["filter_chain"] == f"inbound_{PRODUCTPAGE_IP}" and entry["peer_san"] == SLEEP_ID, entry
        assert entry["response_code"] == 403 and entry["upstream_host"] is None, entry
        assert entry["bytes_received"] == 0, entry  # (the route, pinned to the pod too, names no cluster for most)

    # the control: productpage itself, on the same kind of connection
    allowed_before = stat(world, "b", GUARD_ALLOWED)
    offset = zt_b.access_log.mark()
    tunnel = connect(f"{PRODUCTPAGE_IP}:9080")
    assert tunnel.status == 200 and tunnel.error is None, tunnel
    assert b" 200 OK" in tunnel.answer and b"productpage-v1" in tunnel.answer, tunnel.answer
    # (its log line, written once the tunnel closed, is read here: it must not land in the next test's window)
    world.wait_until(lambda: [e for e in zt_b.access_log.since(offset) if e.get("response_code") == 200],
                     timeout=10, what="ztunnel B's log line for the control CONNECT")
    assert stat(world, "b", VIRTUAL_INBOUND_CX) == dialed_before + 1
    assert stat(world, "b", GUARD_ALLOWED) == allowed_before + 1


def test_the_plaintext_port_refuses_the_ztunnels_own_ports(world):
    """httpbin (outside the mesh, node B) to productpage's IP arrives at ztunnel B's 15006: on a
    ztunnel port the connection is closed and counted, nothing dialed; on 9080 it is served."""
    httpbin = world.pod_ns("httpbin")
    ports = (15000, 15020, 15090)
    ports_suffixes = tuple(f":{p}" for p in ports)
    refused_before, dialed_before = stat(world, "b", PLAINTEXT_REFUSED), stat(world, "b", VIRTUAL_INBOUND_CX)
    offset = world.ztunnels["b"].access_log.mark()
    for port in ports:
        sock = world.client.connect(httpbin, PRODUCTPAGE_IP, port, timeout=5)
        with sock:
            sock.sendall(b"GET /quitquitquit HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = sock.recv(1024)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", (port, answer)
    world.wait_until(lambda: stat(world, "b", PLAINTEXT_REFUSED) == refused_before + len(ports), timeout=10,
                     what="ztunnel B to count the refused plaintext connections")
    assert stat(world, "b", VIRTUAL_INBOUND_CX) == dialed_before

    def refusals() -> list:
        return [e for e in world.ztunnels["b"].access_log.since(offset)
                if e["log"] == contract.INBOUND_PLAINTEXT_LISTENER and e["downstream_local"].endswith(ports_suffixes)]

    world.wait_until(lambda: len(refusals()) == len(ports), timeout=10, what="ztunnel B's log lines")
    assert sorted(e["downstream_local"] for e in refusals()) == [f"{PRODUCTPAGE_IP}:{p}" for p in ports]
    for entry in refusals():
        assert entry["filter_chain"] == inbound_guard.REFUSED_PLAINTEXT_CHAIN and entry["upstream_host"] is None, entry
    trace = scenarios.request(world, "httpbin", PRODUCTPAGE_IP, 9080, expect_logs={"b": 1})
    assert trace.ok, trace.error
    assert trace.one("b", log=contract.INBOUND_PLAINTEXT_LISTENER)["filter_chain"] == f"inbound_{PRODUCTPAGE_IP}"


# -- 2. the destination's identity is pinned -------------------------------------------------------


def impostor_answer(_request: bytes) -> bytes:
    body = json.dumps({"pod": "impostor"}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        len(body), body)


@contextmanager
def impostor_at(world: World, ip: str, port: int, peer: HbonePeer) -> Iterator[HbonePeer]:
    """ztunnel A's new connections to ``ip:port`` go to ``peer`` instead (a nat OUTPUT redirect
    in its namespace, the way its own 15088 hairpin works), and the ones it had are cut, so the
    next tunnel is a new handshake. Undone on exit, the impostor's connections cut as well."""
    netns = world.ztunnels["a"].netns
    rule = ["OUTPUT", "-p", "tcp", "-d", ip, "--dport", str(port), "-j", "REDIRECT", "--to-ports", str(peer.address[1])]

    def cut() -> None:
        in_netns(netns, ["ss", "-K", "-tn", "dst", ip, "dport", "=", f":{port}"], check=False)

    in_netns(netns, ["iptables", "-t", "nat", "-I", *rule[:1], "1", *rule[1:]])
    try:
        cut()
        wait_no_tunnels_to(world, f"{ip}:{port}")
        yield peer.start()
    finally:
        in_netns(netns, ["iptables", "-t", "nat", "-D", *rule])
        peer.close()
        cut()
        wait_no_tunnels_to(world, f"{ip}:{port}")


def wait_no_tunnels_to(world: World, address: str) -> None:
    """Until ztunnel A has no open connection to ``address`` in any cluster (Envoy has seen the
    cut ones close), so the next tunnel there is a new connection."""
    def none_open() -> bool:
        lines = world.ztunnels["a"].admin("/clusters").splitlines()
        return not any(f"::{address}::cx_active::" in line and not line.endswith("::0") for line in lines)

    world.wait_until(none_open, timeout=10, what=f"ztunnel A to drop its connections to {address}")


def test_an_impostor_with_another_identity_cannot_terminate_sleeps_tunnels(world, tmp_path):
    """An impostor takes productpage's address (for ztunnel A) with a valid certificate of
    bookinfo-details: sleep's connections to productpage's VIP and pod IP fail, each tunnel
    cluster's ``ssl.fail_verify_san`` rises, and the impostor receives no CONNECT. Presenting
    productpage's certificate, the same impostor is accepted: the identity is what was refused."""
    root, details_cert, details_key = credentials(world, tmp_path, DETAILS_ID, "details")
    _, pp_cert, pp_key = credentials(world, tmp_path, PRODUCTPAGE_ID, "productpage")
    listener = world.sockets.socket(world.ztunnels["a"].netns)
    # the inbound listener's socket mark: replies to a tunnel whose source ztunnel A spoofs (the pod
    # IP path keeps sleep's address) are delivered locally, as its 15088 hairpin's are
    listener.setsockopt(socket.SOL_SOCKET, SO_MARK, contract.INBOUND_SOCKET_MARK)
    listener.bind(("127.0.0.1", 0))
    peer = HbonePeer(listener, server_context(root, details_cert, details_key), impostor_answer, end_after_reply=True)
    linear = world.options.layout == "linear"  # (its pod-IP path goes through the internal listener too)
    paths = {
        "service VIP": (scenarios.service_target(world, "productpage"), names.tunnel_cluster(SLEEP_ID)),
        "pod IP": (scenarios.pod_target(world, "productpage"),
                   names.tunnel_cluster(SLEEP_ID) if linear else names.pod_tunnel_cluster(SLEEP_ID)),
    }

    def lines_at_a(what: str) -> int:
        """ztunnel A's log lines per request (waited for, so none lands in a later window): the
        outbound listener's, and the internal listener's on every path but the article's pod IP
        (the linear layout's pod IP also goes through its pod-select listener)."""
        if what == "pod IP":
            return 3 if linear else 1
        return 2

    def fail_verify_san(cluster: str) -> int:
        """The cluster's counter (Envoy's stat names spell ``spiffe://`` otherwise: match around it)."""
        kind, _, identity = cluster.partition("spiffe://")
        found = world.ztunnels["a"].stats(r"\.ssl\.fail_verify_san$")
        [value] = [v for k, v in found.items() if k.startswith(f"cluster.{kind}spiffe")
                   and k.endswith(f"{identity.partition('/')[2]}.ssl.fail_verify_san")] or [0]
        return value

    expected_failure = f"expected_SANs:_[{PRODUCTPAGE_ID}],_certificate_SANs:_[{DETAILS_ID}]"
    with impostor_at(world, PRODUCTPAGE_IP, contract.PORT_HBONE, peer):
        for what, ((host, port), cluster) in paths.items():
            before = fail_verify_san(cluster)
            trace = scenarios.request(world, "sleep", host, port, expect_logs={"a": lines_at_a(what)})
            assert not trace.ok and trace.seen_by_pod == {}, (what, trace.exchange)
            [tunnel] = [e for e in trace.at("a") if e["upstream_cluster"] == cluster]
            assert tunnel["upstream_host"] == f"{PRODUCTPAGE_IP}:15008", tunnel
            assert expected_failure in (tunnel["upstream_failure"] or ""), tunnel
            world.wait_until(lambda: fail_verify_san(cluster) == before + 1, timeout=10,
                             what=f"ztunnel A's {cluster} to count the refused identity ({what})")
        handshakes, failed, connects = peer.snapshot()
        assert connects == [], "a tunnel reached the impostor"
        assert failed >= len(paths) and handshakes == 0, peer.failed_handshakes

        peer.use(server_context(root, pp_cert, pp_key))
        for what, ((host, port), cluster) in paths.items():
            before = fail_verify_san(cluster)
            trace = scenarios.request(world, "sleep", host, port, expect_logs={"a": lines_at_a(what)})
            assert trace.ok and trace.seen_by_pod == {"pod": "impostor"}, (what, trace.error)
            assert fail_verify_san(cluster) == before
        assert peer.snapshot()[2] == [f"{PRODUCTPAGE_IP}:9080"] * 2
        assert all(sans == [SLEEP_ID] for sans in peer.handshakes), peer.handshakes

    # gone again: sleep reaches the real productpage
    for what, ((host, port), _cluster) in paths.items():
        trace = scenarios.request(world, "sleep", host, port, expect_logs={"a": lines_at_a(what), "b": 1})
        assert trace.ok and trace.seen_by_pod["pod"] == "productpage-v1-5586c4d4ff-qxz9f", (trace.error, trace.exchange)

"""A real Envoy holds each tunnel to the identity it was pinned to (identity_pinning.py), and never
hands a pooled connection verified for one identity a stream that expects another.

On loopback, from the translators' own building blocks: a peer (tests/hbone.py) terminates HBONE
presenting productpage's certificate. Tunnels pinned to productpage reach it, and share one TLS
connection; a tunnel pinned to details, sent through the same cluster to the same peer *while
productpage's connection is open*, must make a handshake of its own and fail it
(``ssl.fail_verify_san``), where a shared pool would have carried it to the wrong identity. The
service path pins the identity an endpoint's metadata names, and refuses an endpoint that names
none.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import json_format, wrappers_pb2

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2

from zpilot import contract
from zpilot.certs.ca import CertificateAuthority
from zpilot.certs.identity import IdentityCache
from zpilot.certs.secrets import build_secrets
from zpilot.envoy_binary import envoy_path, next_base_id
from zpilot.model.index import Endpoint
from zpilot.model.objects import NO_LOCALITY, Workload
from zpilot.translators import clusters, endpoints, identity_pinning, outbound_linear
from zpilot.translators.envoy_common import original_dst_filter, pack, socket_address
from zpilot.translators.filter_state import endpoint_destination_filter
from zpilot.translators.limits import DataPathLimits, idle_timeout
from zpilot.translators.resources import NodeResources
from zpilot.translators.static import static_bootstrap
from zpilot.translators.tcp_proxy import tcp_proxy

from ..hbone import HbonePeer, server_context

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

TD = "cluster.local"
SLEEP = f"spiffe://{TD}/ns/default/sa/sleep"
PRODUCTPAGE = f"spiffe://{TD}/ns/default/sa/bookinfo-productpage"
DETAILS = f"spiffe://{TD}/ns/default/sa/bookinfo-details"
SLEEP_SECRET = f"{SLEEP}~sleep~uid-sleep"
TUNNEL = "tunnel"
INTERNAL = "article_style_tunnel_lis"  # (the article layout's per-identity kind; the linear one is contract.LINEAR_TUNNEL_LISTENER)
LIMITS = DataPathLimits()


def _listener(name: str, filters: list) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name, address=socket_address("127.0.0.1", 0),
        filter_chains=[listener_components_pb2.FilterChain(filters=filters)],
    )


def _dial(address: str) -> listener_components_pb2.Filter:
    """Where the ORIGINAL_DST tunnel cluster dials, without TPROXY: Envoy's filter state override
    (on a ztunnel, the original destination the transparent listener restored)."""
    value = value_pb2.FilterStateValue(
        object_key="envoy.network.transport_socket.original_dst_address",
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=address)
        ),
    )
    return listener_components_pb2.Filter(
        name="envoy.filters.network.set_filter_state", typed_config=pack(set_filter_state_pb2.Config(on_new_connection=[value]))
    )


def _tunnel_proxy(target: str) -> listener_components_pb2.Filter:
    return tcp_proxy(TUNNEL, idle_timeout=idle_timeout(LIMITS), tunnel_target=target)


#: The linear layout's service path (listener, the identity its cluster names, the endpoint's pod,
#: the cluster identity the endpoint was written for): an endpoint names its pod's identity only
#: where its cluster does not name it already.
LINEAR_CASES = (
    ("lin_shared", PRODUCTPAGE, "productpage", PRODUCTPAGE),  # the cluster names it, the endpoint not
    ("lin_own", DETAILS, "productpage", DETAILS),  # the endpoint's own replaces the cluster's
    ("lin_own_wrong", PRODUCTPAGE, "details", PRODUCTPAGE),  # ... in both directions
    ("lin_stale", DETAILS, "productpage", PRODUCTPAGE),  # endpoints newer than their cluster: refused
    ("lin_none", None, "productpage", PRODUCTPAGE),  # no identity anywhere: refused
)


def _endpoint(peer_identity: str | None):
    """A mesh endpoint of the service path, as endpoints.py writes it (without an identity: None)."""
    pod = Workload("productpage", "default", "uid-pp", ("127.0.0.1",), "node-2", "bookinfo-productpage")
    metadata = endpoints.tunnel_metadata(Endpoint("127.0.0.1", 9080, True, workload=pod), peer_identity or "-", False)
    if peer_identity is None:
        del metadata.filter_metadata[contract.TUNNEL_METADATA].fields[contract.TUNNEL_IDENTITY]
    address = socket_address("0.0.0.0", 0)
    address.ClearField("socket_address")
    address.envoy_internal_address.server_listener_name = INTERNAL
    address.envoy_internal_address.endpoint_id = "127.0.0.1:9080"
    return endpoints.lb_endpoint(address, metadata)


def resources(peer_port: int) -> NodeResources:
    """Pod-IP style listeners pinning a literal identity, service style listeners going through an
    EDS-like cluster and an internal listener pinning the endpoint's, all into one tunnel cluster
    whose every connection goes to the peer."""
    out = NodeResources(node="loopback")
    out.clusters[TUNNEL] = clusters.hbone_tunnel(TUNNEL, SLEEP_SECRET, TD, LIMITS, port_override=peer_port)
    for name, identity in (("pod_productpage", PRODUCTPAGE), ("pod_details", DETAILS)):
        out.listeners[name] = _listener(
            name, [_dial(f"127.0.0.1:{peer_port}"), identity_pinning.pin(identity), _tunnel_proxy("%DOWNSTREAM_LOCAL_ADDRESS%")]
        )
    for name, identity in (("svc_productpage", PRODUCTPAGE), ("svc_details", DETAILS), ("svc_unnamed", None)):
        out.clusters[name] = clusters.service_port(name, LIMITS)
        out.endpoints[name] = endpoints.load_assignment(name, {NO_LOCALITY: [_endpoint(identity)]})
        out.listeners[name] = _listener(name, [tcp_proxy(name, idle_timeout=idle_timeout(LIMITS))])
    for name, cluster_identity, pod, written_for in LINEAR_CASES:
        workload = Workload(pod, "default", f"uid-{pod}", ("127.0.0.1",), "node-2", f"bookinfo-{pod}")
        endpoint = endpoints.linear_mesh_endpoint(Endpoint("127.0.0.1", 9080, True, workload=workload), TD, written_for)
        out.clusters[name] = outbound_linear.service_port_cluster(name, cluster_identity, LIMITS)
        out.endpoints[name] = endpoints.load_assignment(name, {NO_LOCALITY: [endpoint]})
        out.listeners[name] = _listener(name, [tcp_proxy(name, idle_timeout=idle_timeout(LIMITS))])
    for name, target, first in ((INTERNAL, "%DYNAMIC_METADATA(tunnel:destination)%", []),
                                (contract.LINEAR_TUNNEL_LISTENER, "%DOWNSTREAM_LOCAL_ADDRESS%", [endpoint_destination_filter()])):
        internal = listener_pb2.Listener(
            name=name, use_original_dst=wrappers_pb2.BoolValue(value=False), listener_filters=[*first, original_dst_filter()],
            filter_chains=[listener_components_pb2.FilterChain(filters=[identity_pinning.pin_from_endpoint(), _tunnel_proxy(target)])],
        )
        internal.internal_listener.SetInParent()
        out.listeners[name] = internal
    out.add_secret(SLEEP_SECRET, SLEEP)
    out.add_secret(contract.ROOT_CA_SECRET, None)
    return out


@dataclass
class Running:
    proc: subprocess.Popen
    admin: str
    ports: dict[str, int]
    log: Path

    def stat(self, name: str) -> int:
        with urllib.request.urlopen(f"{self.admin}/stats?filter=^{name}$&format=json", timeout=5) as r:
            stats = json.load(r)["stats"]
        return next((s["value"] for s in stats if s.get("name") == name), 0)


@pytest.fixture
def envoy(tmp_path):
    ca = CertificateAuthority.generate(TD)
    (tmp_path / "root.pem").write_bytes(ca.trust_bundle_pem())
    productpage = ca.issue(PRODUCTPAGE)
    (tmp_path / "pp.pem").write_bytes(productpage.cert_chain_pem)
    (tmp_path / "pp-key.pem").write_bytes(productpage.private_key_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    peer = HbonePeer(listener, server_context(tmp_path / "root.pem", tmp_path / "pp.pem", tmp_path / "pp-key.pem"))
    peer.start()
    node = resources(peer.address[1])
    secrets = build_secrets(node.secrets.values(), IdentityCache(ca))
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(json_format.MessageToDict(static_bootstrap(node, secrets, admin_port=0))))
    admin_file = tmp_path / "admin"
    log = tmp_path / "envoy.log"
    # one worker: connection pools are per worker thread, and the test counts what one pool shares
    with open(log, "wb") as out:
        proc = subprocess.Popen([envoy_path(), "-c", str(config), "--base-id", str(next_base_id()), "-l", "info",
                                 "--admin-address-path", str(admin_file), "--disable-hot-restart", "--concurrency", "1"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        running = _wait_live(proc, admin_file, log)
        yield running, peer
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(5)
        peer.close()


def _wait_live(proc: subprocess.Popen, admin_file: Path, log: Path) -> Running:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"envoy exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        if admin_file.exists() and admin_file.read_text().strip():
            admin = "http://" + admin_file.read_text().strip()
            try:
                with urllib.request.urlopen(f"{admin}/ready", timeout=1) as r:
                    if r.read().strip() == b"LIVE":
                        with urllib.request.urlopen(f"{admin}/listeners?format=json", timeout=5) as lr:
                            statuses = json.load(lr)["listener_statuses"]
                        ports = {s["name"]: s["local_address"]["socket_address"]["port_value"]
                                 for s in statuses if "socket_address" in s.get("local_address", {})}
                        return Running(proc, admin, ports, log)
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"envoy not LIVE:\n{log.read_text()[-3000:]}")


def through(running: Running, listener: str, payload: bytes = b"ping") -> tuple[socket.socket, bytes]:
    """Connect to ``listener``, send ``payload``; the connection (left open) and what came back
    (the peer echoes; b'' when the tunnel was refused)."""
    sock = socket.create_connection(("127.0.0.1", running.ports[listener]), timeout=5)
    sock.sendall(payload)
    try:
        return sock, sock.recv(len(payload))
    except (ConnectionError, TimeoutError):
        return sock, b""


def wait_for(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


FAIL_SAN = f"cluster.{TUNNEL}.ssl.fail_verify_san"
HANDSHAKES = f"cluster.{TUNNEL}.ssl.handshake"


def test_pooled_connections_are_never_shared_across_identities(envoy):
    running, peer = envoy
    first, answer = through(running, "pod_productpage")
    assert answer == b"ping"
    assert peer.snapshot()[:2] == (1, 0) and running.stat(HANDSHAKES) == 1

    # a second tunnel to the same identity of the same peer rides the same TLS connection ...
    second, answer = through(running, "pod_productpage", b"pong")
    assert answer == b"pong"
    assert peer.snapshot()[0] == 1 and running.stat(HANDSHAKES) == 1
    assert peer.snapshot()[2] == ["127.0.0.1:" + str(running.ports["pod_productpage"])] * 2

    # ... one pinned to details does not, though that connection to the same peer is open: it
    # makes its own handshake, sees productpage's certificate, and is refused
    wrong, answer = through(running, "pod_details")
    assert answer == b""
    wait_for(lambda: running.stat(FAIL_SAN) == 1, "ssl.fail_verify_san to count the refusal")
    assert len(peer.snapshot()[2]) == 2, "a stream pinned to details reached the productpage peer"
    for sock in (first, second, wrong):
        sock.close()


def test_service_endpoints_pin_the_identity_their_metadata_names(envoy):
    running, peer = envoy
    sock, answer = through(running, "svc_productpage")
    assert answer == b"ping"
    assert peer.snapshot()[2] == ["127.0.0.1:9080"]
    sock.close()
    for listener, refusals in (("svc_details", 1), ("svc_unnamed", 2)):  # unnamed: fails closed
        sock, answer = through(running, listener)
        assert answer == b"", listener
        wait_for(lambda: running.stat(FAIL_SAN) == refusals, f"the refusal of {listener} to be counted")
        sock.close()
    assert peer.snapshot()[2] == ["127.0.0.1:9080"], "a refused tunnel reached the peer"


def test_linear_service_endpoints_pin_their_own_or_their_clusters_identity(envoy):
    """The linear layout writes the identity all of a port's endpoints share in its cluster, and
    an endpoint's own only where it differs: the cluster's internal_upstream socket hands the
    cluster's ``tunnel`` on, and an endpoint's replaces it. Whichever is stale, nothing reaches a
    peer that is not the identity pinned: the tunnel is refused."""
    running, peer = envoy
    for listener in ("lin_shared", "lin_own"):
        sock, answer = through(running, listener)
        assert answer == b"ping", listener
        sock.close()
    assert peer.snapshot()[2] == ["127.0.0.1:9080"] * 2
    for refusals, listener in enumerate(("lin_own_wrong", "lin_stale", "lin_none"), start=1):
        sock, answer = through(running, listener)
        assert answer == b"", listener
        wait_for(lambda: running.stat(FAIL_SAN) == refusals, f"the refusal of {listener} to be counted")
        sock.close()
    assert peer.snapshot()[2] == ["127.0.0.1:9080"] * 2, "a refused tunnel reached the peer"

"""The issue's scenarios, with real packets through real ztunnels, each checked hop by hop from
the ztunnels' access logs (filter chain, cluster, upstream host, CONNECT authority, peer SAN)
and the destination pod's own view of the connection. Each runs with both outbound layouts,
the article's and the linear one (``Path`` holds the names that differ)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from zpilot import contract
from zpilot.translators import names
from zpilot.world import scenarios
from zpilot.world.topology import NODE_A, NODE_B, opted_out, without_opt_out

LAYOUTS = ["article", "linear"]
pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow,
              pytest.mark.parametrize("world", LAYOUTS, indirect=True)]

SLEEP_ID = "spiffe://cluster.local/ns/default/sa/sleep"
PRODUCTPAGE_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
DETAILS_ID = "spiffe://cluster.local/ns/default/sa/bookinfo-details"


@dataclass(frozen=True)
class Path:
    """Where sleep's connections go on ztunnel A, by layout: the names the access logs show."""

    layout: str

    @property
    def linear(self) -> bool:
        return self.layout == "linear"

    def service_chain(self, port_and_host: str) -> str:
        """``port_and_host``: e.g. ``http_productpage.default.svc.cluster.local``."""
        return port_and_host if self.linear else f"{SLEEP_ID}_to_{port_and_host}_outbound_internal"

    @property
    def tunnel_listener(self) -> str:
        return contract.LINEAR_TUNNEL_LISTENER if self.linear else contract.tunnel_listener(SLEEP_ID)

    def pod_chain(self, same_node: bool, peer: str) -> str:
        """sleep's chain to a pod IP of identity ``peer`` (in the linear layout: by the pod CIDR of its node)."""
        if self.linear:
            return names.pods_on_node(NODE_A if same_node else NODE_B)
        cluster = names.pod_local_tunnel_cluster(SLEEP_ID) if same_node else names.pod_tunnel_cluster(SLEEP_ID)
        return names.pod_chain(cluster, peer)

    @property
    def pod_logs(self) -> int:
        """Log lines ztunnel A writes for a pod-IP connection: the linear layout's goes through its
        pod-select and tunnel internal listeners."""
        return 3 if self.linear else 1


@pytest.fixture
def path(world) -> Path:
    return Path(world.options.layout)


SLEEP_TO_PRODUCTPAGE = "http_productpage.default.svc.cluster.local"


def test_1_service_vip_across_nodes(world, path):
    """sleep -> productpage VIP:9080 on the other node: the article's path."""
    vip, port = scenarios.service_target(world, "productpage")
    stats_before = world.ztunnels["b"].stats(r"^(tcp\.rbac\.allowed|cluster\.virtual_inbound\.upstream_cx_total)$")
    trace = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1})
    assert trace.ok, trace.error
    assert trace.seen_by_pod["pod"] == "productpage-v1-5586c4d4ff-qxz9f"
    stats_after = world.ztunnels["b"].stats(r"^(tcp\.rbac\.allowed|cluster\.virtual_inbound\.upstream_cx_total)$")
    # B's stats agree: one more connection to the pod through virtual_inbound (RBAC counts TLS
    # connections, which are reused, so it may or may not grow: it must not have denied anything)
    # (a cluster's traffic counters appear on its first connection: absent before is 0, zpilot bootstrap --cluster-stats)
    cx_total = "cluster.virtual_inbound.upstream_cx_total"
    assert stats_after[cx_total] == stats_before.get(cx_total, 0) + 1
    assert world.ztunnels["b"].stats(r"^tcp\.rbac\.denied$").get("tcp.rbac.denied", 0) == 0

    # ztunnel A: the VIP survived kube-proxy (the CNI's nat ACCEPT), the matcher picked the service chain
    out = trace.one("a", log=contract.OUTBOUND_LISTENER, downstream_remote=trace.client_local)
    assert out["downstream_local"] == "10.8.14.226:9080"
    assert out["filter_chain"] == path.service_chain(SLEEP_TO_PRODUCTPAGE)
    assert out["upstream_cluster"] == path.service_chain(SLEEP_TO_PRODUCTPAGE)
    # the service port's cluster on A counted the connection (its traffic counters, made by it) and has no
    # bookkeeping stats (zpilot bootstrap --service-stats traffic), under its stat name cluster.svc.<name>;
    # Envoy writes "://" in a stat name as "_"
    stat = "cluster." + names.service_cluster_stat_name(path.service_chain(SLEEP_TO_PRODUCTPAGE)).replace("://", "_")
    service_stats = world.ztunnels["a"].stats(f"^{re.escape(stat)}[.]")
    assert service_stats.get(f"{stat}.upstream_cx_total", 0) >= 1, service_stats
    assert not [n for n in service_stats if n.startswith((f"{stat}.membership_", f"{stat}.update_"))], service_stats
    assert out["upstream_host"] == f"envoy://{path.tunnel_listener}/10.4.3.20:9080"
    assert out["response_flags"] == "-", out
    # ... and the internal listener opened the HBONE tunnel to the endpoint's 15008
    tunnel = trace.one("a", log=path.tunnel_listener)
    assert tunnel["upstream_cluster"] == names.tunnel_cluster(SLEEP_ID)
    assert tunnel["upstream_host"] == "10.4.3.20:15008"
    assert tunnel["response_flags"] == "-", tunnel

    # ztunnel B: mTLS peer is sleep, CONNECT to the real destination, virtual_inbound dials the pod
    inbound = trace.one("b", log=contract.INBOUND_LISTENER, method="CONNECT")
    assert inbound["filter_chain"] == "inbound_10.4.3.20"
    assert inbound["authority"] == "10.4.3.20:9080"
    assert inbound["original_dst_host"] == "10.4.3.20:9080"
    assert inbound["peer_san"] == SLEEP_ID
    assert inbound["local_san"] == PRODUCTPAGE_ID
    assert inbound["upstream_cluster"] == names.VIRTUAL_INBOUND
    assert inbound["upstream_host"] == "10.4.3.20:9080"
    # the tunnel arrived from ztunnel A's own address, naming sleep as the client (x-forwarded-for, for
    # source.ip policies), and the pod saw B's connection for it
    assert inbound["downstream_direct_remote"] == tunnel["upstream_local"]
    assert inbound["downstream_remote"].rpartition(":")[0] == "10.4.4.19"
    assert inbound["upstream_local"] == trace.seen_by_pod["peer"]
    assert inbound["upstream_local"].split(":")[0] == tunnel["upstream_local"].split(":")[0] == "10.4.4.18"


def test_1_client_address_reaches_the_destination_ztunnel(world, path):
    """Both layouts keep the client pod's address past the internal listener (set_filter_state ->
    original_dst: the linear layout's listener filter, the article layout's service chain) and hand it
    to ztunnel B in x-forwarded-for, which B's HTTP connection manager takes as the stream's remote
    address (what source.ip policies are judged on); the tunnel itself still comes from ztunnel A."""
    vip, port = scenarios.service_target(world, "productpage")
    trace = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1})
    assert trace.ok, trace.error
    tunnel = trace.one("a", log=path.tunnel_listener)
    inbound = trace.one("b", log=contract.INBOUND_LISTENER, method="CONNECT")
    assert tunnel["downstream_remote"] == trace.client_local  # sleep's own address and port
    assert inbound["downstream_remote"] == trace.client_local.split(":")[0] + ":0"  # from x-forwarded-for
    assert inbound["downstream_direct_remote"] == tunnel["upstream_local"]  # the tunnel's peer: ztunnel A
    if path.linear:
        assert tunnel["downstream_local"] == "10.4.3.20:9080"  # the endpoint, from its metadata


def test_1_service_vip_is_reliable(world):
    """The same path, twenty times over: every response arrives whole (none cut by a reset)."""
    vip, port = scenarios.service_target(world, "productpage")
    failures = []
    for _ in range(20):
        # B's line too: ztunnel B logs the CONNECT when the stream closes, which could otherwise land
        # in the next request's (or the next test's) window and be counted there
        trace = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1}, settle=0)
        flags = {e["response_flags"] for e in trace.at("a", log=contract.OUTBOUND_LISTENER)}
        if not trace.ok or flags != {"-"}:
            failures.append((trace.error, flags))
    assert not failures, f"{len(failures)}/20 requests failed or were flagged: {failures[:3]}"


def assert_pod_selected(trace, node: str, ip: str, port: int, listener: str = contract.LINEAR_TUNNEL_LISTENER) -> dict:
    """The linear layout's pod-IP path on ztunnel A: the outbound chain of the node whose pod CIDR
    holds ``ip`` -> the pod-select listener, which took the destination from the PROXY header and
    picked, from that node's cluster, the endpoint ``listener`` names (the pod's, else passthrough);
    returns that listener's log line."""
    out = trace.one("a", log=contract.OUTBOUND_LISTENER, downstream_remote=trace.client_local)
    assert out["filter_chain"] == names.pods_on_node(node)
    assert out["upstream_cluster"] == names.POD_SELECT_CLUSTER
    assert out["response_flags"] == "-", out
    select = trace.one("a", log=names.POD_SELECT_LISTENER, downstream_remote=trace.client_local)
    assert select["downstream_local"] == f"{ip}:{port}"
    assert select["upstream_cluster"] == names.pods_on_node(node)
    endpoint = ip if listener == contract.LINEAR_TUNNEL_LISTENER else "passthrough"
    assert select["upstream_host"] == f"envoy://{listener}/{endpoint}", select
    assert select["response_flags"] == "-", select
    return trace.one("a", log=listener, downstream_remote=trace.client_local)


def test_2_pod_ip_across_nodes(world, path):
    """sleep -> productpage's pod IP: the article's pod chain tunnels straight from the outbound
    listener; the linear layout's finds the pod by node B's pod CIDR and picks its endpoint (the
    identity to pin) from node B's cluster, then tunnels from the internal listener like a service."""
    ip, port = scenarios.pod_target(world, "productpage")
    trace = scenarios.request(world, "sleep", ip, port, expect_logs={"a": path.pod_logs, "b": 1})
    assert trace.ok, trace.error
    out = trace.one("a", log=contract.OUTBOUND_LISTENER, downstream_remote=trace.client_local)
    assert out["filter_chain"] == path.pod_chain(same_node=False, peer=PRODUCTPAGE_ID)
    assert out["response_flags"] == "-", out
    if path.linear:
        out = assert_pod_selected(trace, NODE_B, ip, port)
        assert out["downstream_local"] == f"{ip}:{port}"  # the original destination, from the filter state
        assert out["filter_chain"] == names.linear_tunnel_chain(SLEEP_ID)
        assert out["upstream_cluster"] == names.tunnel_cluster(SLEEP_ID)
        # node B's pods cluster on A counted the connection (its traffic counters, made by it) and has no
        # bookkeeping stats (zpilot bootstrap --pod-cluster-stats traffic)
        stat = f"cluster.{names.pods_on_node(NODE_B)}"
        pod_stats = world.ztunnels["a"].stats(f"^{re.escape(stat)}[.]")
        assert pod_stats.get(f"{stat}.upstream_cx_total", 0) >= 1, pod_stats
        assert not [n for n in pod_stats if n.startswith((f"{stat}.membership_", f"{stat}.update_", f"{stat}.lb_"))], pod_stats
    else:
        assert out["upstream_cluster"] == names.pod_tunnel_cluster(SLEEP_ID)
    assert out["upstream_host"] == "10.4.3.20:15008"
    assert out["response_flags"] == "-", out
    inbound = trace.one("b", log=contract.INBOUND_LISTENER, method="CONNECT", authority="10.4.3.20:9080")
    assert inbound["filter_chain"] == "inbound_10.4.3.20"
    assert inbound["peer_san"] == SLEEP_ID
    assert inbound["upstream_cluster"] == names.VIRTUAL_INBOUND
    assert inbound["upstream_local"] == trace.seen_by_pod["peer"]
    # the client pod reaches ztunnel B in x-forwarded-for (through the pod-select listener's PROXY header too)
    assert inbound["downstream_remote"] == trace.client_local.split(":")[0] + ":0"


def test_3_same_node_service_vip(world, path):
    """sleep -> details VIP: same node, so the tunnel goes to details' IP on 15088 and the
    ztunnel's own nat OUTPUT redirect hands it to its 15008 listener."""
    vip, port = scenarios.service_target(world, "details")
    trace = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 3})
    out = trace.one("a", log=contract.OUTBOUND_LISTENER, downstream_remote=trace.client_local)
    assert out["response_flags"] == "-", out
    assert trace.ok, trace.error
    assert trace.seen_by_pod["pod"] == "details-v1-6997d94bb9-4jssp"
    tunnel = trace.one("a", log=path.tunnel_listener)
    assert tunnel["upstream_host"] == "10.4.4.7:15088"
    inbound = trace.one("a", log=contract.INBOUND_LISTENER, method="CONNECT")
    assert inbound["filter_chain"] == "inbound_10.4.4.7"
    assert inbound["authority"] == "10.4.4.7:9080"
    assert inbound["peer_san"] == SLEEP_ID
    assert inbound["local_san"] == DETAILS_ID
    assert trace.at("b") == [], "node B's ztunnel saw same-node traffic"


def test_3_same_node_pod_ip(world, path):
    """sleep -> details' pod IP: the article's pod-local chain (outbound_pod_local_tunnel_clus_,
    port 15088); in the linear layout, the internal listener's chain for a destination on this node."""
    ip, port = scenarios.pod_target(world, "details")
    trace = scenarios.request(world, "sleep", ip, port, expect_logs={"a": 1 + path.pod_logs})
    out = trace.one("a", log=contract.OUTBOUND_LISTENER, downstream_remote=trace.client_local)
    assert out["filter_chain"] == path.pod_chain(same_node=True, peer=DETAILS_ID)
    if path.linear:
        out = assert_pod_selected(trace, NODE_A, ip, port)
        assert out["downstream_local"] == f"{ip}:{port}"
        assert out["filter_chain"] == names.linear_local_tunnel_chain(SLEEP_ID)
        assert out["upstream_cluster"] == names.tunnel_cluster(SLEEP_ID)  # the same as to another node, on 15088
    assert out["upstream_host"] == "10.4.4.7:15088"
    assert out["response_flags"] == "-", f"the same-node tunnel failed: {out}"
    assert trace.ok, trace.error
    inbound = trace.one("a", log=contract.INBOUND_LISTENER, method="CONNECT", authority="10.4.4.7:9080")
    assert inbound["filter_chain"] == "inbound_10.4.4.7"
    assert inbound["peer_san"] == SLEEP_ID


def _tunnel_hosts(ztunnel, cluster: str) -> dict[str, dict[str, int]]:
    """Each host of ``cluster`` (admin /clusters): its counters by name (``cx_total``, ``rq_total``...)."""
    hosts: dict[str, dict[str, int]] = {}
    for line in ztunnel.admin("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[3].isdigit():
            hosts.setdefault(parts[1], {})[parts[2]] = int(parts[3])
    return hosts


def test_3_one_tunnel_cluster_keeps_each_side_s_hosts_apart(world, path):
    """The linear layout's one tunnel cluster per identity carries sleep's tunnels to node B
    (productpage's IP on 15008) and to its own node (details' IP on 15088), each chain giving it the
    address: a host each, each with its own pooled HTTP/2 connection, which the next tunnel to the
    same pod reuses (one Envoy worker in the world: one pool per host)."""
    if not path.linear:
        pytest.skip("the article's layout has a cluster per port")
    cluster = names.tunnel_cluster(SLEEP_ID)
    targets = {"productpage": ("10.4.3.20:15008", {"a": path.pod_logs, "b": 1}),
               "details": ("10.4.4.7:15088", {"a": 1 + path.pod_logs})}
    before = _tunnel_hosts(world.ztunnels["a"], cluster)
    for _ in range(2):
        for pod, (host, logs) in targets.items():
            ip, port = scenarios.pod_target(world, pod)
            trace = scenarios.request(world, "sleep", ip, port, expect_logs=logs)
            assert trace.ok, (pod, trace.error)
            tunnel = trace.one("a", log=contract.LINEAR_TUNNEL_LISTENER, downstream_remote=trace.client_local)
            assert (tunnel["upstream_cluster"], tunnel["upstream_host"]) == (cluster, host), tunnel
    after = _tunnel_hosts(world.ztunnels["a"], cluster)
    for host, _ in targets.values():
        counted = {name: after[host][name] - before.get(host, {}).get(name, 0) for name in ("rq_total", "cx_total")}
        assert counted["rq_total"] == 2, (host, after[host])  # two CONNECT streams
        assert counted["cx_total"] <= 1, (host, after[host])  # on one connection (none new if one was open)
        assert after[host]["cx_active"] == 1, (host, after[host])


def test_4_meshed_pod_to_pod_outside_mesh_passes_through(world, path):
    """sleep -> httpbin's pod IP (namespace legacy, not enrolled): PassthroughFilterChain, no tunnel;
    original_src keeps sleep's IP as the source, and node B does not redirect it."""
    ip, port = scenarios.pod_target(world, "httpbin")
    trace = scenarios.request(world, "sleep", ip, port, expect_logs={"a": 3 if path.linear else 1})
    assert trace.ok, trace.error
    if path.linear:  # inside node B's pod CIDR: node B's cluster has no endpoint for it, so passthrough
        out = assert_pod_selected(trace, NODE_B, ip, port, listener=names.MESH_PASSTHROUGH_LISTENER)
        assert out["downstream_local"] == f"{ip}:{port}"
    else:
        out = trace.one("a", log=contract.OUTBOUND_LISTENER, downstream_remote=trace.client_local)
    assert out["filter_chain"] == names.PASSTHROUGH_CHAIN
    assert out["upstream_cluster"] == names.PASSTHROUGH_CLUSTER
    assert out["upstream_host"] == "10.4.3.19:80"
    assert out["upstream_local"] == trace.seen_by_pod["peer"]
    assert trace.seen_by_pod["peer"].startswith("10.4.4.19:"), "original_src did not keep the pod's IP"
    assert trace.at("b") == [], "node B's ztunnel took traffic for a pod outside the mesh"


def test_4_meshed_pod_to_service_outside_mesh(world, path):
    """sleep -> httpbin's VIP: the service chain, whose endpoint is plain TCP (no tunnel metadata)."""
    vip, port = scenarios.service_target(world, "httpbin")
    trace = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 1})
    assert trace.ok, trace.error
    out = trace.one("a", log=contract.OUTBOUND_LISTENER, downstream_remote=trace.client_local)
    assert out["filter_chain"] == path.service_chain("http_httpbin.legacy.svc.cluster.local")
    assert out["upstream_host"] == "10.4.3.19:80"
    assert trace.at("a", log=path.tunnel_listener) == []
    assert trace.at("b") == []


@pytest.mark.parametrize("source,target,node", [("httpbin", "productpage", "b"), ("httpbin", "sleep", "a")])
def test_5_pod_outside_mesh_to_meshed_pod_is_plaintext_inbound(world, source, target, node):
    """The article-era design: the destination node routes traffic for a meshed pod (table 100)
    into istioin, and the ztunnel's TPROXY sends non-15008 TCP to ztunnel_inbound_plaintext (15006)."""
    ip, port = scenarios.pod_target(world, target)
    trace = scenarios.request(world, source, ip, port, expect_logs={node: 1})
    assert trace.ok, trace.error
    inbound = trace.one(node, log=contract.INBOUND_PLAINTEXT_LISTENER, downstream_remote=trace.client_local)
    assert inbound["filter_chain"] == f"inbound_{ip}"
    assert inbound["downstream_local"] == f"{ip}:{port}"
    assert inbound["upstream_cluster"] == names.VIRTUAL_INBOUND
    assert inbound["upstream_host"] == f"{ip}:{port}"
    assert inbound["peer_san"] is None  # no mTLS on this path
    assert trace.seen_by_pod["peer"].split(":")[0] == "10.4.3.19"  # original_src: the real client
    other = "a" if node == "b" else "b"
    assert trace.at(other) == []


@pytest.mark.parametrize("source,target,node", [
    ("sleep", "10.4.3.20", "a"),  # a meshed pod, to 15001 of any address: captured, then blackholed
    ("httpbin", "10.4.3.14", "b"),  # a pod outside the mesh, straight at a ztunnel's own 15001
])
def test_6_connection_to_15001_is_blackholed(world, source, target, node):
    """Port 15001 is the outbound listener's: a connection addressed to it is never proxied anywhere."""
    trace = scenarios.request(world, source, target, 15001, expect_logs={node: 1})
    assert not trace.ok and trace.exchange is None, "a connection to 15001 got an answer"
    out = trace.one(node, log=contract.OUTBOUND_LISTENER, downstream_local=f"{target}:15001")
    assert out["filter_chain"] == names.BLACKHOLE_CHAIN
    assert out["upstream_cluster"] == names.BLACKHOLE_CLUSTER
    assert out["response_flags"] == "UH"
    assert out["bytes_sent"] == 0
    other = "b" if node == "a" else "a"
    assert trace.at(other) == []


def test_7_pod_taken_out_of_the_mesh_and_back(world, path):
    """Label sleep istio.io/dataplane-mode=none: once node A's CNI agent (zpilot cni run) has
    reconciled and the ztunnel ACKed its new config, sleep's traffic is not intercepted (ztunnel A
    stays silent, B sees it as plaintext from sleep itself); put back, it is again."""
    ip, port = scenarios.pod_target(world, "productpage")
    sleep = world.spec.pod("sleep")
    original = dict(sleep.labels)
    try:
        world.relabel("sleep", opted_out(original))
        assert sleep.ip not in world.meshed_ips("a")
        trace = scenarios.request(world, "sleep", ip, port, expect_logs={"b": 1})
        assert trace.ok, trace.error
        # (not `trace.at("a") == []`: the config change drains ztunnel A's old listeners, which
        # closes earlier tunnels' TLS connections and logs them now, on ztunnel_inbound)
        intercepted = [e for e in trace.entries.get("a", []) if e["log"] == contract.OUTBOUND_LISTENER
                       or e["log"].startswith(contract.LINEAR_TUNNEL_LISTENER) or e.get("method") == "CONNECT"]
        assert intercepted == [], "ztunnel A still intercepts a pod that left the mesh"
        inbound = trace.one("b", log=contract.INBOUND_PLAINTEXT_LISTENER, downstream_remote=trace.client_local)
        assert inbound["filter_chain"] == "inbound_10.4.3.20"
    finally:
        world.relabel("sleep", without_opt_out(original))
    assert sleep.ip in world.meshed_ips("a")
    trace = scenarios.request(world, "sleep", ip, port, expect_logs={"a": path.pod_logs, "b": 1})
    assert trace.ok, trace.error
    out = trace.one("a", log=contract.OUTBOUND_LISTENER, downstream_remote=trace.client_local)
    assert out["filter_chain"] == path.pod_chain(same_node=False, peer=PRODUCTPAGE_ID)
    assert trace.one("b", log=contract.INBOUND_LISTENER, method="CONNECT", authority="10.4.3.20:9080")["peer_san"] == SLEEP_ID


def test_hbone_port_refuses_a_client_without_a_mesh_certificate(world):
    """Beyond the issue's list: httpbin (no identity) speaking plain HTTP to productpage's 15008
    is routed into ztunnel B's HBONE listener like a tunnel, and refused at the TLS handshake:
    nothing reaches the pod."""
    before = world.ztunnels["b"].stats(r"ssl\.connection_error$")
    trace = scenarios.request(world, "httpbin", "10.4.3.20", 15008, expect_logs={"b": 1})
    assert trace.exchange is None, "the HBONE port answered a client without a certificate"
    entry = trace.one("b", log=contract.INBOUND_LISTENER, downstream_remote=trace.client_local)
    assert entry["filter_chain"] == "inbound_10.4.3.20"
    assert entry["peer_san"] is None and entry["upstream_host"] is None and entry["method"] is None
    after = world.ztunnels["b"].stats(r"ssl\.connection_error$")
    assert sum(after.values()) > sum(before.values()), (before, after)


def test_open_connections_survive_a_config_push(world):
    """Beyond the list: a keep-alive connection sleep -> productpage VIP stays up while node A's
    ztunnel gets new config (details taken out of the mesh and put back): Envoy updates the
    listener's filter chains in place instead of draining every connection on each pod change."""
    import http.client

    vip, port = scenarios.service_target(world, "productpage")
    sock = world.client.connect(world.pod_ns("sleep"), vip, port, timeout=10)
    local = "%s:%d" % sock.getsockname()[:2]
    conn = http.client.HTTPConnection(vip, port, timeout=10)
    conn.sock = sock
    offset = world.ztunnels["a"].access_log.mark()
    details = world.spec.pod("details")
    original = dict(details.labels)
    try:
        statuses = []
        for step in ("before", "out", "back"):
            if step == "out":
                world.relabel("details", opted_out(original))
            elif step == "back":
                world.relabel("details", without_opt_out(original))
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        assert statuses == [200, 200, 200]
        closed = [e for e in world.ztunnels["a"].access_log.since(offset) if e.get("downstream_remote") == local]
        assert closed == [], f"the connection was closed during the pushes: {closed}"
    finally:
        conn.close()
        if world.spec.pod("details").labels != original:
            world.relabel("details", original)


def test_traffic_survives_a_control_plane_restart(world):
    """Beyond the list: with zpilot serve down the ztunnels keep their last config and the mesh keeps
    working; once it is back they reconnect and take changes again."""
    vip, port = scenarios.service_target(world, "productpage")
    world.stop_server()
    try:
        down = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1})
        assert down.ok, down.error
        assert down.one("b", log=contract.INBOUND_LISTENER, method="CONNECT")["peer_san"] == SLEEP_ID
    finally:
        world.start_server()
    world.wait_ztunnels_connected()
    up = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1})
    assert up.ok, up.error
    assert up.one("b", log=contract.INBOUND_LISTENER, method="CONNECT")["peer_san"] == SLEEP_ID


def test_the_mesh_runs_on_authenticated_ads_and_survives_a_credential_rotation(world):
    """Beyond the list (issue 10): every ztunnel's ADS stream is mutual TLS with its node's credential;
    ztunnel A restarted after `zpilot bootstrap --renew` rotated that credential reconnects with the new
    one, and traffic through it still flows."""
    from cryptography import x509

    from zpilot.certs.x509_helpers import serial_hex

    def serial(node_key: str) -> str:
        cert = (world.credential_dir(node_key) / contract.CREDENTIAL_CERT_FILE).read_bytes()
        return serial_hex(x509.load_pem_x509_certificate(cert).serial_number)

    log = world.server.stderr
    text = log.read_text(errors="replace")
    assert "(TLS, node client certificates required)" in text
    for node in world.spec.nodes:
        assert f"opened by node={node.name} " in text and f"(certificate of node {node.name}, serial " in text
    node_a = world.spec.node("a").name
    before, offset = serial("a"), log.stat().st_size
    assert "asked to (--force)" in world.renew_credential("a")
    after = serial("a")
    assert after != before
    world.restart_ztunnel("a")
    world.wait_ztunnels_connected()
    world.wait_until(lambda: f"(certificate of node {node_a}, serial {after})" in
                     log.read_bytes()[offset:].decode(errors="replace"),
                     timeout=10, what="ztunnel A's stream to open with its new credential")
    vip, port = scenarios.service_target(world, "productpage")
    trace = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1})
    assert trace.ok, trace.error
    assert trace.one("b", log=contract.INBOUND_LISTENER, method="CONNECT")["peer_san"] == SLEEP_ID

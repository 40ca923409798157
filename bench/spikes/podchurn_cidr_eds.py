"""Spike (issue 13, pod churn): pod-IP destinations by node pod CIDR + one ClusterLoadAssignment per node.

Question: can a pod added on node B change only a small resource on the other nodes (not every
node's outbound listener, which in the ``linear`` layout lists every meshed pod IP), on stock Envoy
1.40, with the destination pod's SPIFFE identity still pinned per connection?

The layout tried here (ztunnel A; L1 and L3 as today, L2 new):

    L1 outbound :15001 (original_dst; records the addresses ONCE, as zpilot's does)
        destination in node B's pod CIDR 10.1.0.0/24 -> chain "pods_on_nodeB":
            tcp_proxy -> static cluster "pod_select" (internal listener L2), whose transport socket
            (upstream_proxy_protocol around internal_upstream) sends a PROXY v2 header with the
            client and destination addresses and tcp_proxy.proxy_protocol_tlvs (format strings):
            0xE0 = envoy://outbound_tunnel_lis/%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% (the address
            of the destination pod's endpoint), 0xE1 = "pods_on_nodeB" (the cluster to pick from)
        anything else -> PassthroughCluster
    L2 internal "pod_select_lis"
        listener filter proxy_protocol: restores both addresses; TLV 0xE0 -> dynamic metadata
            zpilot_select:host, TLV 0xE1 -> zpilot_select:cluster (no stock filter can put a
            formatted value into dynamic metadata on L1 itself, and both LB policies read only that)
        set_filter_state: envoy.tcp_proxy.cluster from zpilot_select:cluster; the two addresses
            for L3's original_dst again (shared ONCE)
        tcp_proxy -> EDS cluster "pods_on_nodeB", load balancing policy override_host (the host
            whose address is zpilot_select:host), falling back to a subset policy whose default
            subset is the one passthrough endpoint (an unmeshed pod in the CIDR passes through)
    EDS "pods_on_nodeB" (THE ONLY RESOURCE A POD ADD ON NODE B CHANGES ON OTHER NODES)
        one endpoint per meshed pod of node B: internal address (L3, endpoint_id = pod IP),
        metadata tunnel {identity}; plus the passthrough endpoint (envoy.lb {passthrough})
    L3 internal "outbound_tunnel_lis" (as today): original_dst from the shared addresses, pins
        %DYNAMIC_METADATA(tunnel:identity)% as envoy.network.upstream_subject_alt_names, HTTP/2
        CONNECT to podIP:port with x-forwarded-for = client pod, ORIGINAL_DST cluster on 15008.

``--lb subset`` selects the endpoint with the subset load balancer instead (envoy.lb {ip} on each
endpoint, merged by tcp_proxy from the connection's envoy.lb metadata): it works too, but holds one
subset per pod (see the Envoy memory figures this prints).

Ztunnel B is a static Envoy on :15008 presenting, per destination pod IP, that pod's identity
certificate, terminating CONNECT and dialling x-envoy-original-dst-host; its access log shows
what arrived. A's EDS comes from a watched file (no xDS server needed); the pod add rewrites it.
Everything runs in a network namespace of its own (loopback only), created and deleted here.
Run as root from the repository root: ``PYTHONPATH=. python3 bench/spikes/podchurn_cidr_eds.py``
(zpilot's CA issues the certificates). Prints each check, then the bytes at issue 13's R (node-0
translated by zpilot's linear layout today, against this layout's pieces) and an Envoy's RSS
holding R's per-node clusters. Exit status 1 if a check failed.

The linear layout has since adopted this design (zpilot/translators/pod_select.py): its outbound
listener no longer lists in-CIDR pod IPs, so the "today" counts of the figures at R are now of the
strays alone (none in the synthetic cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

TD = "cluster.local"
CLIENT_POD = "10.0.0.9"  # a meshed pod on node A (the node this ztunnel serves)
NODE_B_CIDR = ("10.1.0.0", 24)
OUTSIDE = "10.2.0.7"  # not in any node's pod CIDR
UNMESHED = "10.1.0.77"  # in node B's pod CIDR, not meshed
APP_PORT = 8080
ADMIN_A, ADMIN_B = 19000, 19001
TLS13 = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}
TLV_IP, TLV_CLUSTER = 0xE0, 0xE1
INTERNAL_LISTENER = "outbound_tunnel_lis"


def spiffe(sa: str) -> str:
    return f"spiffe://{TD}/ns/default/sa/{sa}"


# Pods of node B and the identity each really has (B presents it); the CLA may say otherwise.
B_PODS = {"10.1.0.5": "alpha", "10.1.0.6": "beta", "10.1.0.8": "delta"}


# ---------------------------------------------------------------- config

def fmt(text: str) -> dict:
    return {"text_format_source": {"inline_string": text}}


def tcp_proxy(stat: str, cluster: str, **extra) -> dict:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                         "stat_prefix": stat, "cluster": cluster, **extra},
    }


def set_filter_state(values: list[tuple[str, str, str]]) -> dict:
    return {
        "name": "envoy.filters.network.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
            "on_new_connection": [
                {"object_key": key, "format_string": fmt(value), "shared_with_upstream": shared}
                for key, value, shared in values
            ],
        },
    }


def original_dst() -> dict:
    return {"name": "envoy.filters.listener.original_dst", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}


def internal_upstream(passthrough: list[str] = (), inner: dict | None = None) -> dict:
    return {"name": "envoy.transport_sockets.internal_upstream", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
        "passthrough_metadata": [{"kind": {"host": {}}, "name": n} for n in passthrough],
        "transport_socket": inner or {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}},
    }}


def internal_cluster(name: str, listener: str, transport: dict) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s", "transport_socket": transport,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"envoy_internal_address": {"server_listener_name": listener}}}}]}]},
    }


def access_log(path: Path, text: str) -> list[dict]:
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(path), "log_format": fmt(text + "\n")}}]


def pod_endpoint(ip: str, sa: str, lb: str) -> dict:
    """One meshed pod of node B as the per-node CLA lists it (what a pod add adds). override_host
    finds it by its address (envoy://<listener>/<endpoint_id>); the subset LB by envoy.lb metadata."""
    metadata = {"tunnel": {"identity": spiffe(sa)}}
    if lb == "subset":
        metadata["envoy.lb"] = {"ip": ip}
    return {
        "endpoint": {"address": {"envoy_internal_address": {"server_listener_name": INTERNAL_LISTENER,
                                                             "endpoint_id": ip}}},
        "metadata": {"filter_metadata": metadata},
    }


def cla(pods: dict[str, str], lb: str) -> dict:
    passthrough = {
        "endpoint": {"address": {"envoy_internal_address": {"server_listener_name": "mesh_passthrough_lis",
                                                             "endpoint_id": "passthrough"}}},
        "metadata": {"filter_metadata": {"envoy.lb": {"passthrough": "1"}}},
    }
    return {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "pods_on_nodeB",
            "endpoints": [{"lb_endpoints": [pod_endpoint(ip, sa, lb) for ip, sa in pods.items()] + [passthrough]}]}


def write_eds(eds_dir: Path, pods: dict[str, str], version: int, lb: str) -> int:
    """Atomically replace the file Envoy watches (a rename: what its watcher reacts to)."""
    resource = cla(pods, lb)
    body = json.dumps({"version_info": str(version), "resources": [resource]})
    tmp = eds_dir / ".tmp.json"
    tmp.write_text(body)
    os.rename(tmp, eds_dir / "pods_on_nodeB.json")
    return len(cla_proto(pods, lb).SerializeToString())


def cla_proto(pods: dict[str, str], lb: str):
    from google.protobuf import json_format
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
    resource = dict(cla(pods, lb))
    resource.pop("@type")
    return json_format.ParseDict(resource, ClusterLoadAssignment())


def tls_files(workdir: Path, name: str) -> dict:
    return {"certificate_chain": {"filename": str(workdir / f"{name}.crt")},
            "private_key": {"filename": str(workdir / f"{name}.key")}}


def lb_config(lb: str) -> dict:
    """How the per-node cluster picks the destination pod's endpoint; an unknown IP (an unmeshed pod
    in the CIDR) gets the passthrough endpoint, the only one in the default subset."""
    fallback = {"fallback_policy": "DEFAULT_SUBSET", "default_subset": {"passthrough": "1"}}
    if lb == "subset":
        return {"lb_subset_config": {**fallback, "subset_selectors": [{"keys": ["ip"]}]}}
    policy = lambda name, config: {"typed_extension_config": {"name": f"envoy.load_balancing_policies.{name}",  # noqa: E731
                                                              "typed_config": config}}
    subset = {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.subset.v3.Subset", **fallback,
              "subset_lb_policy": {"policies": [policy("round_robin", {
                  "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"})]}}
    return {"load_balancing_policy": {"policies": [policy("override_host", {
        "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
        "override_host_sources": [{"metadata": {"key": "zpilot_select", "path": [{"key": "host"}]}}],
        "fallback_policy": {"policies": [policy("subset", subset)]},
    })]}}


def ztunnel_a(workdir: Path, lb: str) -> dict:
    eds_dir = workdir / "eds"
    client_tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "tls_params": TLS13,
            "alpn_protocols": ["h2"],
            "tls_certificates": [tls_files(workdir, "client")],
            "validation_context": {"trusted_ca": {"filename": str(workdir / "root.crt")},
                                   "match_typed_subject_alt_names": [
                                       {"san_type": "URI", "matcher": {"prefix": f"spiffe://{TD}/"}}]},
        }}}
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    proxy_protocol_upstream = {"name": "envoy.transport_sockets.upstream_proxy_protocol", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
        "config": {"version": "V2", "pass_through_tlvs": {"match_type": "INCLUDE_ALL"}},
        "transport_socket": internal_upstream()}}
    l1 = {
        "name": "outbound", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
        # as zpilot's outbound listener: the addresses recorded for the internal listener the service
        # chains lead to (shared ONCE: here they reach L2, which records them again for L3)
        "listener_filters": [original_dst(), {"name": "envoy.filters.listener.set_filter_state", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.set_filter_state.v3.Config",
            "on_accept": [{"object_key": f"envoy.filters.listener.original_dst.{key}", "format_string": fmt(value),
                           "shared_with_upstream": "ONCE"}
                          for key, value in (("local_ip", "%DOWNSTREAM_LOCAL_ADDRESS%"),
                                             ("remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%"))]}}],
        "access_log": access_log(workdir / "a_outbound.log",
                                 "L1 %DOWNSTREAM_REMOTE_ADDRESS% -> %DOWNSTREAM_LOCAL_ADDRESS% "
                                 "chain=%FILTER_CHAIN_NAME% flags=%RESPONSE_FLAGS%"),
        "filter_chains": [{
            "name": "pods_on_nodeB",
            "filter_chain_match": {"prefix_ranges": [{"address_prefix": NODE_B_CIDR[0], "prefix_len": NODE_B_CIDR[1]}]},
            "filters": [tcp_proxy("pods_on_nodeB", "pod_select", proxy_protocol_tlvs=[
                {"type": TLV_IP, "format_string": fmt("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%" if lb == "subset" else
                                                       f"envoy://{INTERNAL_LISTENER}/%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%")},
                {"type": TLV_CLUSTER, "format_string": fmt("pods_on_nodeB")},
            ])],
        }],
        "default_filter_chain": {"name": "passthrough", "filters": [tcp_proxy("passthrough", "PassthroughCluster")]},
    }
    l2 = {
        "name": "pod_select_lis", "internal_listener": {},
        "listener_filters": [{"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
            "rules": [
                {"tlv_type": TLV_IP, "on_tlv_present": {"metadata_namespace": "envoy.lb", "key": "ip"} if lb == "subset"
                 else {"metadata_namespace": "zpilot_select", "key": "host"}},
                {"tlv_type": TLV_CLUSTER, "on_tlv_present": {"metadata_namespace": "zpilot_select", "key": "cluster"}},
            ]}}],
        "access_log": access_log(workdir / "a_select.log",
                                 "L2 %DOWNSTREAM_REMOTE_ADDRESS% -> %DOWNSTREAM_LOCAL_ADDRESS% "
                                 "pick=%DYNAMIC_METADATA(envoy.lb)%%DYNAMIC_METADATA(zpilot_select:host)% "
                                 "cluster=%UPSTREAM_CLUSTER% host=%UPSTREAM_HOST% flags=%RESPONSE_FLAGS%"),
        "filter_chains": [{"filters": [
            set_filter_state([
                ("envoy.tcp_proxy.cluster", "%DYNAMIC_METADATA(zpilot_select:cluster)%", "NONE"),
                ("envoy.filters.listener.original_dst.local_ip", "%DOWNSTREAM_LOCAL_ADDRESS%", "ONCE"),
                ("envoy.filters.listener.original_dst.remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%", "ONCE"),
            ]),
            tcp_proxy("pod_select", "BlackHoleCluster"),
        ]}],
    }
    l3 = {
        "name": INTERNAL_LISTENER, "internal_listener": {},
        "listener_filters": [original_dst()],
        "access_log": access_log(workdir / "a_tunnel.log",
                                 "L3 %DOWNSTREAM_REMOTE_ADDRESS% -> %DOWNSTREAM_LOCAL_ADDRESS% "
                                 "pin=%DYNAMIC_METADATA(tunnel:identity)% "
                                 "host=%UPSTREAM_HOST% flags=%RESPONSE_FLAGS% fail=%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
        "filter_chains": [{"filters": [
            set_filter_state([("envoy.network.upstream_subject_alt_names", "%DYNAMIC_METADATA(tunnel:identity)%", "NONE")]),
            tcp_proxy("tunnel", "tunnel_clus", tunneling_config={
                "hostname": "%DOWNSTREAM_LOCAL_ADDRESS%",
                "headers_to_add": [
                    {"header": {"key": "x-envoy-original-dst-host", "value": "%DOWNSTREAM_LOCAL_ADDRESS%"}},
                    {"header": {"key": "x-forwarded-for", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
                ]}),
        ]}],
    }
    mesh_passthrough = {
        "name": "mesh_passthrough_lis", "internal_listener": {},
        "listener_filters": [original_dst()],
        "filter_chains": [{"filters": [tcp_proxy("mesh_passthrough", "PassthroughCluster")]}],
    }
    clusters = [
        {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s"},
        {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"},
        internal_cluster("pod_select", "pod_select_lis", proxy_protocol_upstream),
        {
            "name": "pods_on_nodeB", "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"resource_api_version": "V3", "path_config_source": {
                "path": str(eds_dir / "pods_on_nodeB.json"), "watched_directory": {"path": str(eds_dir)}}}},
            **lb_config(lb),
            "transport_socket": internal_upstream(["tunnel"]),
        },
        {
            "name": "tunnel_clus", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "2s",
            "original_dst_lb_config": {"upstream_port_override": 15008},
            "typed_extension_protocol_options": h2, "transport_socket": client_tls,
        },
    ]
    return {
        "node": {"id": "ztunnel-a", "cluster": "ztunnel"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_A}}},
        "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
        "static_resources": {"listeners": [l1, l2, l3, mesh_passthrough], "clusters": clusters},
    }


def ztunnel_b(workdir: Path) -> dict:
    """B's HBONE side, reduced: per destination pod IP its identity's certificate; CONNECT terminated."""
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "hbone", "codec_type": "HTTP2",
        "http2_protocol_options": {"allow_connect": True},
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "access_log": access_log(workdir / "b_hbone.log",
                                 "B authority=%REQ(:AUTHORITY)% xff=%REQ(X-FORWARDED-FOR)% peer=%DOWNSTREAM_PEER_URI_SAN% "
                                 "served_as=%DOWNSTREAM_LOCAL_URI_SAN% code=%RESPONSE_CODE%"),
        "route_config": {"virtual_hosts": [{"name": "hbone", "domains": ["*"], "routes": [{
            "match": {"connect_matcher": {}},
            "route": {"cluster": "inbound_orig", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]},
        }]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }}
    chains = []
    for ip, sa in B_PODS.items():
        chains.append({
            "name": f"hbone_{ip}",
            "filter_chain_match": {"prefix_ranges": [{"address_prefix": ip, "prefix_len": 32}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": {
                    "tls_params": TLS13, "alpn_protocols": ["h2"],
                    "tls_certificates": [tls_files(workdir, sa)],
                    "validation_context": {"trusted_ca": {"filename": str(workdir / "root.crt")}},
                }}},
            "filters": [hcm],
        })
    return {
        "node": {"id": "ztunnel-b", "cluster": "ztunnel"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_B}}},
        "static_resources": {
            "listeners": [{"name": "hbone", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15008}},
                           "filter_chains": chains}],
            "clusters": [{"name": "inbound_orig", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                          "connect_timeout": "1s", "original_dst_lb_config": {"use_http_header": True}}],
        },
    }


def write_certs(workdir: Path) -> None:
    from zpilot.certs.ca import CertificateAuthority
    ca = CertificateAuthority.generate(TD)
    (workdir / "root.crt").write_bytes(ca.trust_bundle_pem())
    for sa in ["client", *B_PODS.values(), "gamma"]:
        issued = ca.issue(spiffe(sa))
        (workdir / f"{sa}.crt").write_bytes(issued.cert_chain_pem)
        (workdir / f"{sa}.key").write_bytes(issued.private_key_pem)


# ---------------------------------------------------------------- the world (inside our namespace)

def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def serve_apps() -> None:
    """Every pod's app on :8080 (one socket, all addresses): says which address it was reached on."""
    server = socket.create_server(("0.0.0.0", APP_PORT), reuse_port=True)

    def loop() -> None:
        while True:
            conn, peer = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(f"app at {conn.getsockname()[0]} (from {peer[0]})".encode())

    threading.Thread(target=loop, daemon=True).start()


def connect(dst: str) -> str:
    """A connection from the client pod's address, as the pod would make it (captured to :15001)."""
    s = socket.socket()
    s.settimeout(5)
    try:
        s.bind((CLIENT_POD, 0))
        s.connect((dst, APP_PORT))
        s.sendall(b"hello\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(200):
            data += chunk
        return data.decode() if data else "closed without an answer"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        s.close()


def stats(port: int, filt: str) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?filter={filt}", timeout=5) as resp:
        out = {}
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if value.isdigit():
                out[key] = int(value)
        return out


def wait_ready(port: int, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            sys.exit(f"envoy on admin {port} exited:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as resp:
                if resp.read().strip() == b"LIVE":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"envoy on admin {port} not LIVE:\n{log.read_text()[-4000:]}")


def tail(path: Path, n: int = 1) -> list[str]:
    return path.read_text().splitlines()[-n:] if path.exists() else []


def logged(path: Path, *needles: str, timeout: float = 3.0) -> list[str]:
    """The access log lines holding every needle (access logs are flushed once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [l for l in (path.read_text().splitlines() if path.exists() else []) if all(n in l for n in needles)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def inner(workdir: Path, lb: str) -> int:
    sh("ip", "link", "set", "lo", "up")
    for ip in [CLIENT_POD, *B_PODS, UNMESHED, OUTSIDE]:
        sh("ip", "addr", "add", f"{ip}/32", "dev", "lo")
    # the node's capture, reduced: the client pod's TCP goes to ztunnel A's outbound listener
    sh("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", CLIENT_POD, "-j", "REDIRECT", "--to-ports", "15001")
    write_certs(workdir)
    (workdir / "eds").mkdir()
    wrong = {"10.1.0.5": "alpha", "10.1.0.6": "gamma"}  # 10.1.0.6 really is beta: a wrong pin
    write_eds(workdir / "eds", wrong, 1, lb)
    procs = []
    failures = []

    def check(label: str, ok: bool, detail: str) -> None:
        print(f"[{'ok' if ok else 'FAIL'}] {label}: {detail}")
        if not ok:
            failures.append(label)

    try:
        for name, config, admin in (("a", ztunnel_a(workdir, lb), ADMIN_A), ("b", ztunnel_b(workdir), ADMIN_B)):
            path = workdir / f"{name}.json"
            path.write_text(json.dumps(config, indent=1))
            log = workdir / f"envoy_{name}.log"
            proc = subprocess.Popen(["envoy", "-c", str(path), "--base-id", str(os.getpid() % 1000 + (name == "b")),
                                     "--concurrency", "1", "-l", os.environ.get("SPIKE_ENVOY_LOG", "warning")],
                                    stdout=log.open("w"), stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_ready(admin, proc, log)
        serve_apps()

        answer = connect("10.1.0.5")
        b_log = logged(workdir / "b_hbone.log", "authority=10.1.0.5:8080", f"xff={CLIENT_POD}",
                       "peer=" + spiffe("client"), "served_as=" + spiffe("alpha"), "code=200")
        check("pod IP in node B's CIDR is tunnelled, alpha pinned", answer.startswith("app at 10.1.0.5") and bool(b_log),
              f"{answer!r}; B: {b_log}; A: {logged(workdir / 'a_tunnel.log', '10.1.0.5')}")

        handshakes = stats(ADMIN_B, "ssl.handshake").get("listener.0.0.0.0_15008.ssl.handshake", 0)
        answers = [connect("10.1.0.5") for _ in range(3)]
        after = stats(ADMIN_B, "ssl.handshake").get("listener.0.0.0.0_15008.ssl.handshake", 0)
        check("three more connections to alpha reuse the pooled HBONE connection", after == handshakes
              and all(a.startswith("app at 10.1.0.5") for a in answers), f"B's TLS handshakes {handshakes} -> {after}")

        before = stats(ADMIN_A, "tunnel_clus.ssl.fail_verify_san").get("cluster.tunnel_clus.ssl.fail_verify_san", 0)
        answer = connect("10.1.0.6")
        after = stats(ADMIN_A, "tunnel_clus.ssl.fail_verify_san").get("cluster.tunnel_clus.ssl.fail_verify_san", 0)
        check("wrong identity refused (CLA pins gamma, B presents beta)", not answer.startswith("app")
              and after == before + 1,
              f"{answer!r}; fail_verify_san {before} -> {after}; A: {logged(workdir / 'a_tunnel.log', '10.1.0.6')}")

        answer = connect(UNMESHED)
        fallback = stats(ADMIN_A, "pods_on_nodeB.lb_subsets_fallback").get("cluster.pods_on_nodeB.lb_subsets_fallback", 0)
        check("unmeshed IP in the CIDR passes through (default subset)", answer.startswith(f"app at {UNMESHED}")
              and fallback >= 1, f"{answer!r}; lb_subsets_fallback={fallback}")

        answer = connect(OUTSIDE)
        check("IP outside every pod CIDR passes through (L1 default chain)", answer.startswith(f"app at {OUTSIDE}"),
              repr(answer))

        answer = connect("10.1.0.8")
        check("before its pod add, 10.1.0.8 passes through", answer.startswith("app at 10.1.0.8")
              and not logged(workdir / "b_hbone.log", "10.1.0.8", timeout=1.5), repr(answer))

        # The pod add (and the fix of 10.1.0.6's identity): only the per-node CLA is rewritten.
        fixed = {"10.1.0.5": "alpha", "10.1.0.6": "beta"}
        added = {**fixed, "10.1.0.8": "delta"}
        updates = stats(ADMIN_A, "pods_on_nodeB.update_success").get("cluster.pods_on_nodeB.update_success", 0)
        size_before = len(cla_proto(fixed, lb).SerializeToString())
        size_after = write_eds(workdir / "eds", added, 2, lb)
        for _ in range(50):
            if stats(ADMIN_A, "pods_on_nodeB.update_success").get("cluster.pods_on_nodeB.update_success", 0) > updates:
                break
            time.sleep(0.1)
        listeners = stats(ADMIN_A, "listener_manager.listener_")
        answer8 = connect("10.1.0.8")
        b_log = logged(workdir / "b_hbone.log", "authority=10.1.0.8:8080", "served_as=" + spiffe("delta"), "code=200", timeout=15)
        answer6 = connect("10.1.0.6")
        b_log += logged(workdir / "b_hbone.log", "authority=10.1.0.6:8080", "served_as=" + spiffe("beta"), "code=200", timeout=15)
        check("after the CLA update 10.1.0.8 is tunnelled with delta pinned, 10.1.0.6 with beta",
              answer8.startswith("app at 10.1.0.8") and answer6.startswith("app at 10.1.0.6") and len(b_log) == 2,
              f"{answer8!r}, {answer6!r}; B: {b_log}")
        check("no listener changed", listeners.get("listener_manager.listener_modified", 0) == 0
              and listeners.get("listener_manager.listener_in_place_updated", 0) == 0, str(listeners))
        print(f"pod add: the CLA (3 pods -> with 10.1.0.8) {size_before} -> {size_after} bytes;"
              f" one pod endpoint {size_after - size_before} bytes")
        print("A's L2 log:", *tail(workdir / "a_select.log", 3), sep="\n  ")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    return 1 if failures else 0


def figures_at_r(lb: str) -> None:
    """At issue 13's R, node-0 as the linear layout makes it today, and what this layout would change.

    Today's bytes come from zpilot's own translation; this layout's pieces are built as above for
    the same pods (every pod of R is meshed): one CLA per node, one chain and one EDS cluster per
    node instead of one chain and one static cluster per identity and one leaf per pod IP."""
    from google.protobuf import json_format
    from envoy.config.cluster.v3.cluster_pb2 import Cluster
    from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2  # noqa: F401 (for Any)
    from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2  # noqa: F401
    from envoy.extensions.load_balancing_policies.subset.v3 import subset_pb2  # noqa: F401
    from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2  # noqa: F401
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
    from envoy.config.listener.v3.listener_components_pb2 import FilterChain
    from xds.type.matcher.v3 import ip_pb2, matcher_pb2
    from zpilot.model.index import MeshIndex
    from zpilot.synthetic import Shape, node_name, synthetic_cluster, synthetic_manifests
    from zpilot.translators import TranslateOptions, translate_node

    global spiffe
    shape = Shape.reference()
    docs = synthetic_manifests(shape)
    index = MeshIndex.build(synthetic_cluster(docs))
    node0 = translate_node(index, node_name(0), TranslateOptions(layout="linear"))
    outbound = node0.listeners["ztunnel_outbound"] if "ztunnel_outbound" in node0.listeners else max(
        node0.listeners.values(), key=lambda l: l.ByteSize())
    pods_by_node: dict[str, dict[str, str]] = {}
    for doc in docs:
        if doc["kind"] == "Pod":
            sa = f"{doc['metadata']['namespace']}/{doc['spec']['serviceAccountName']}"
            pods_by_node.setdefault(doc["spec"]["nodeName"], {})[doc["status"]["podIP"]] = sa
    pod_ips = {ip for pods in pods_by_node.values() for ip in pods}

    # today's pod-IP parts of node-0's outbound listener: the leaves and the per-identity chains
    def walk(m: matcher_pb2.Matcher) -> int:
        total = 0
        tree = m.matcher_tree
        if tree.HasField("exact_match_map"):
            for key, on_match in tree.exact_match_map.map.items():
                if key in pod_ips:  # a map entry: key, value, and their tags and lengths
                    total += len(key) + on_match.ByteSize() + 6
                elif on_match.HasField("matcher"):
                    total += walk(on_match.matcher)
        elif tree.HasField("custom_match") and tree.custom_match.typed_config.type_url.endswith("IPMatcher"):
            for r in ip_pb2.IPMatcher.FromString(tree.custom_match.typed_config.value).range_matchers:
                if r.on_match.HasField("matcher"):
                    total += walk(r.on_match.matcher)
                elif any(c.address_prefix in pod_ips for c in r.ranges):
                    total += r.ByteSize() + 3  # an identity's pod IPs as one range list (a repeated entry)
        for on_match in ([m.on_no_match] if m.HasField("on_no_match") else []):
            if on_match.HasField("matcher"):
                total += walk(on_match.matcher)
        return total

    leaves = walk(outbound.filter_chain_matcher)
    pod_chains = sum(c.ByteSize() + 3 for c in outbound.filter_chains if c.name.startswith("pod_direct_to_"))
    pod_clusters = sum(c.ByteSize() for n, c in node0.clusters.items() if n.startswith("outbound_pod_internal_to_"))

    # this layout's: a chain per node (the two TLVs), a CIDR range per node, an EDS cluster and a CLA per node
    real = spiffe
    spiffe = lambda sa: f"spiffe://{TD}/ns/{sa.split('/')[0]}/sa/{sa.split('/')[1]}"  # noqa: E731
    try:
        clas = {node: len(cla_proto(pods, lb).SerializeToString()) for node, pods in pods_by_node.items()}
    finally:
        spiffe = real
    a = ztunnel_a(Path("/nonexistent"), lb)
    chain = a["static_resources"]["listeners"][0]["filter_chains"][0]
    chain = {k: v for k, v in chain.items() if k != "filter_chain_match"}
    chain_bytes = len(json_format.ParseDict(chain, FilterChain()).SerializeToString())
    eds_cluster = dict(a["static_resources"]["clusters"][3])
    eds_cluster["eds_cluster_config"] = {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
    cluster_bytes = len(json_format.ParseDict(eds_cluster, Cluster()).SerializeToString())
    range_leaf = 40  # an IPMatcher range: CIDR, prefix length, on_match naming the chain (measured form: ~40 B)
    n = len(pods_by_node)
    print(f"at R, node-0 today: outbound listener {outbound.ByteSize():,} B, of it pod-IP leaves {leaves:,} B"
          f" and per-identity chains {pod_chains:,} B; per-identity clusters {pod_clusters:,} B (CDS)")
    print(f"at R, this layout: + {n} chains x {chain_bytes} B + {n} CIDR leaves x ~{range_leaf} B in LDS,"
          f" + {n} EDS clusters x {cluster_bytes} B in CDS, + {n} CLAs {sum(clas.values()):,} B in EDS"
          f" (one node's: {min(clas.values()):,}-{max(clas.values()):,} B)")
    lds = outbound.ByteSize() - leaves - pod_chains + n * (chain_bytes + range_leaf)
    print(f"at R, node-0 would be: outbound listener ~{lds:,} B, CDS {'+' if n * cluster_bytes > pod_clusters else ''}"
          f"{n * cluster_bytes - pod_clusters:,} B, EDS +{sum(clas.values()):,} B;"
          f" a pod add on node B changes on every other node only B's CLA: ~{max(clas.values()):,} B"
          f" (today: the outbound listener, {outbound.ByteSize():,} B, on every node)")


def envoy_memory(lb: str, nodes: int = 100, pods: int = 100) -> None:
    """An Envoy holding R's per-node clusters (``nodes`` x ``pods`` endpoints; static, so no xDS is
    needed): time to LIVE and RSS with this LB policy, against plain round robin and an empty Envoy."""
    def config(mode: str, admin: int) -> dict:
        clusters = []
        for n in range(nodes if mode != "empty" else 0):
            name = f"pods_on_node-{n}"
            assignment = cla({f"10.{n + 1}.{h // 250}.{h % 250 + 2}": f"sa-{(n * pods + h) % 200}" for h in range(pods)}, mode)
            assignment.pop("@type")
            clusters.append({"name": name, "type": "STATIC", "connect_timeout": "1s",
                             "transport_socket": internal_upstream(["tunnel"]),
                             "load_assignment": {**assignment, "cluster_name": name},
                             **(lb_config(mode) if mode in ("subset", "override_host") else {})})
        return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
                "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
                "static_resources": {"clusters": clusters}}

    with tempfile.TemporaryDirectory(dir="/tmp/podchurn-spike") as tmp:
        for i, mode in enumerate(["empty", "round_robin", lb]):
            admin = ADMIN_A + 100 + i
            path = Path(tmp) / f"{mode}.json"
            path.write_text(json.dumps(config(mode, admin)))
            log = Path(tmp) / f"{mode}.log"
            started = time.monotonic()
            proc = subprocess.Popen(["envoy", "-c", str(path), "--base-id", str(os.getpid() % 1000 + 10 + i),
                                     "--concurrency", "1", "-l", "error"], stdout=log.open("w"), stderr=subprocess.STDOUT)
            try:
                wait_ready(admin, proc, log)
                live = time.monotonic() - started
                time.sleep(1)
                rss = next(int(l.split()[1]) for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS"))
                held = "nothing" if mode == "empty" else f"{nodes} clusters x {pods} endpoints, {mode}"
                print(f"envoy holding {held}: LIVE {live:.2f} s, RSS {rss / 1024:.0f} MiB")
            finally:
                proc.terminate()
                proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--lb", choices=["override_host", "subset"], default="override_host",
                        help="how the per-node cluster picks the pod's endpoint (default: override_host)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (configs, logs)")
    parser.add_argument("--skip-r", action="store_true", help="skip the figures at R and the Envoy memory check")
    args = parser.parse_args()
    if args.inner:
        return inner(Path(args.inner), args.lb)
    if os.geteuid() != 0 or not shutil.which("envoy"):
        sys.exit("needs root (a network namespace) and envoy on PATH")
    base = Path("/tmp/podchurn-spike")
    base.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    netns = f"podchurn-spike-{os.getpid()}"
    sh("ip", "netns", "add", netns)
    try:
        code = subprocess.run(["ip", "netns", "exec", netns, sys.executable, __file__, "--inner", str(workdir),
                               "--lb", args.lb]).returncode
    finally:
        sh("ip", "netns", "delete", netns)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("kept", workdir)
    if not args.skip_r:
        figures_at_r(args.lb)
        envoy_memory(args.lb)
    return code


if __name__ == "__main__":
    sys.exit(main())

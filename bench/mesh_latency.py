#!/usr/bin/env python3
"""Latency and throughput through the mesh versus direct pod to pod, in the same world.

Run by hand, as root: ``python3 bench/mesh_latency.py [--requests 300] [--mbytes 256] [--layout article]``.
It builds the two-node world of ``zpilot demo`` and measures, from sleep (node A) to
productpage (node B):

* connect + one HTTP round trip on a fresh connection (what a short RPC pays), and
* bulk download throughput (one connection, ``--mbytes`` MiB),

three ways: through the mesh to the service VIP (internal listener + HBONE), through the mesh to
the pod IP (the article layout's pod chain + HBONE; the linear layout's goes through the internal
listener too), and direct (both pods labelled out of the mesh and reconciled,
so the same pods, veths and nodes carry plain TCP). It prints the figures and the mesh/direct
ratios. The pod servers are Python, so the direct bulk figure is bounded by Python as well.
Bulk downloads use keep-alive (the client closes): see :func:`throughput`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zpilot import contract  # noqa: E402
from zpilot.translators import known_layouts  # noqa: E402
from zpilot.world.builder import World, WorldOptions  # noqa: E402
from zpilot.world.prerequisites import missing_prerequisites  # noqa: E402
from zpilot.world.topology import opted_out  # noqa: E402


def latency(world: World, host: str, port: int, n: int) -> list[float]:
    ns = world.pod_ns("sleep")
    for _ in range(20):  # warm up: TLS session, HTTP/2 connection to the peer ztunnel, caches
        world.client.request(ns, host, port)
    samples = []
    for _ in range(n):
        ex = world.client.request(ns, host, port)
        if ex.status != 200:
            raise RuntimeError(f"HTTP {ex.status} from {host}:{port}")
        samples.append(ex.total_ms)
    return samples


def throughput(world: World, host: str, port: int, nbytes: int) -> float:
    """MiB/s for one download of ``nbytes``. Keep-alive: the client closes once it has every
    byte, because a server closing first can lose the tail in the tunnel (runtime finding 5 in
    docs/demo.md); a short read is an error here, never a figure."""
    sock = world.client.connect(world.pod_ns("sleep"), host, port, timeout=60)
    try:
        sock.sendall(f"GET /bytes?n={nbytes} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        head = b""
        while b"\r\n\r\n" not in head:
            got = sock.recv(4096)
            if not got:
                raise RuntimeError("connection closed before the headers")
            head += got
        received = len(head.split(b"\r\n\r\n", 1)[1])
        start = time.perf_counter()
        while received < nbytes:
            got = sock.recv_into(view)
            if not got:
                raise RuntimeError(f"connection closed after {received} of {nbytes} bytes")
            received += got
        elapsed = time.perf_counter() - start
    finally:
        sock.close()
    return nbytes / elapsed / (1 << 20)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy_version = subprocess.run(["envoy", "--version"], capture_output=True, text=True).stdout.strip().split()[-1]
    envoy = envoy_version.split("/")[1] if "/" in envoy_version else envoy_version
    import os

    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Envoy {envoy}, Python {platform.python_version()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300, help="round trips per path (300)")
    p.add_argument("--mbytes", type=int, default=256, help="MiB per bulk download (256)")
    p.add_argument("--repeat", type=int, default=3, help="bulk downloads per path; the best counts (3)")
    p.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads per ztunnel (1)")
    p.add_argument("--layout", choices=known_layouts(), default=contract.DEFAULT_LAYOUT,
                   help=f"the ztunnels' outbound layout ({contract.DEFAULT_LAYOUT})")
    args = p.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("needs: " + "; ".join(missing), file=sys.stderr)
        return 2
    nbytes = args.mbytes << 20
    print(f"machine: {machine()}")
    print(f"outbound layout: {args.layout}; envoy workers per ztunnel: {args.envoy_concurrency}; {args.requests} round trips and "
          f"{args.repeat} x {args.mbytes} MiB per path\n")
    results: dict[str, tuple[list[float], float]] = {}
    with World(options=WorldOptions(envoy_concurrency=args.envoy_concurrency, layout=args.layout)) as world:
        vip = world.spec.service("productpage")
        pod = world.spec.pod("productpage")
        paths = [("mesh, service VIP", vip.cluster_ip, vip.ports[0][1]), ("mesh, pod IP", pod.ip, pod.ports[0][1])]
        for name, host, port in paths:
            results[name] = (latency(world, host, port, args.requests),
                             max(throughput(world, host, port, nbytes) for _ in range(args.repeat)))
        for key in ("sleep", "productpage"):  # the same pods, out of the mesh: plain TCP across the nodes
            world.relabel(key, opted_out(world.spec.pod(key).labels))
        offsets = {k: z.access_log.mark() for k, z in world.ztunnels.items()}
        results["direct"] = (latency(world, pod.ip, pod.ports[0][1], args.requests),
                             max(throughput(world, pod.ip, pod.ports[0][1], nbytes) for _ in range(args.repeat)))
        for key, zt in world.ztunnels.items():
            if zt.access_log.since(offsets[key]):
                raise RuntimeError(f"the direct measurement went through ztunnel {key}: not direct")
    direct_lat, direct_tp = results["direct"]
    d50 = statistics.median(direct_lat)
    print(f"{'path':20} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'MiB/s':>9}  "
          f"{'latency x':>9} {'throughput x':>12}")
    for name, (lat, tp) in results.items():
        print(f"{name:20} {statistics.median(lat):8.3f} {pct(lat, 0.9):8.3f} {pct(lat, 0.99):8.3f} "
              f"{statistics.fmean(lat):8.3f} {tp:9.1f}  {statistics.median(lat) / d50:9.2f} {tp / direct_tp:12.2f}")
    print("\nlatency x: p50 over direct p50 (connect + one HTTP round trip on a new connection);"
          " throughput x: mesh MiB/s over direct MiB/s (one connection)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How often a bulk response through the mesh is cut short when the server closes first.

Run by hand, as root: ``python3 bench/mesh_truncation.py [--downloads 24] [--mbytes 128] [--layout article]``.
Runtime finding 5 (docs/demo.md): with ``Connection: close`` the pod's server closes right
after the body; the CONNECT-terminating ztunnel turns that half-close into a stream reset and
the tail still buffered in Envoy is lost, while the client sees a clean FIN. This counts it per
path (mesh VIP, mesh pod IP, and direct for reference), so a new Envoy or a config change can be
checked against it. It prints counts, not a verdict: the rate depends on timing and load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zpilot import contract  # noqa: E402
from zpilot.translators import known_layouts  # noqa: E402
from zpilot.world.builder import World, WorldOptions  # noqa: E402
from zpilot.world.prerequisites import missing_prerequisites  # noqa: E402
from zpilot.world.topology import opted_out  # noqa: E402


def download(world: World, host: str, port: int, nbytes: int) -> int:
    """Bytes of body received for one ``Connection: close`` download of ``nbytes``."""
    sock = world.client.connect(world.pod_ns("sleep"), host, port, timeout=60)
    try:
        sock.sendall(f"GET /bytes?n={nbytes} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                return 0
            data += got
        received = len(data.split(b"\r\n\r\n", 1)[1])
        buf = bytearray(1 << 20)
        while True:
            try:
                got = sock.recv_into(buf)
            except ConnectionResetError:
                break
            if not got:
                break
            received += got
        return received
    finally:
        sock.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--downloads", type=int, default=24)
    p.add_argument("--mbytes", type=int, default=128)
    p.add_argument("--layout", choices=known_layouts(), default=contract.DEFAULT_LAYOUT,
                   help=f"the ztunnels' outbound layout ({contract.DEFAULT_LAYOUT})")
    args = p.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("needs: " + "; ".join(missing), file=sys.stderr)
        return 2
    nbytes = args.mbytes << 20
    rows = []
    with World(options=WorldOptions(layout=args.layout)) as world:
        vip, pod = world.spec.service("productpage"), world.spec.pod("productpage")
        targets = [("mesh, service VIP", vip.cluster_ip, vip.ports[0][1]), ("mesh, pod IP", pod.ip, pod.ports[0][1])]
        for name, host, port in targets:
            sizes = [download(world, host, port, nbytes) for _ in range(args.downloads)]
            rows.append((name, sizes))
        for key in ("sleep", "productpage"):
            world.relabel(key, opted_out(world.spec.pod(key).labels))
        rows.append(("direct", [download(world, pod.ip, pod.ports[0][1], nbytes) for _ in range(args.downloads)]))
    print(f"{args.downloads} downloads of {args.mbytes} MiB per path, server closes first (Connection: close)\n")
    print(f"{'path':20} {'complete':>9} {'truncated':>10}  shortest")
    for name, sizes in rows:
        short = [s for s in sizes if s != nbytes]
        print(f"{name:20} {len(sizes) - len(short):9d} {len(short):10d}  "
              + (f"{min(short)} of {nbytes} bytes" if short else "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the xDS path: snapshot build, response assembly from cached bytes, push fan-out.

Not a test: it prints numbers and asserts nothing. Run with ``python3 bench/xds_push.py [--clusters N]
[--clients K]``. What it measures:

- ``build``: serializing + hashing one node's resources into a Snapshot (the producer's cost per node);
- ``assemble``: joining one CDS+EDS response from the cached bytes (the server's cost per push);
- ``push``: from ``ControlPlane.update()`` with one changed cluster to every one of K SotW clients (Python
  gRPC, one process) having received its CDS response;
- ``generate``: translating the example cluster's nodes with the real translators.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.xds.ads_client import AdsClient  # noqa: E402
from tests.xds.fake_world import FakeWorld, NodeSpec  # noqa: E402
from zpilot.xds import wire  # noqa: E402
from zpilot.runtime.control_plane import ControlPlane, DebugOptions  # noqa: E402
from zpilot.xds.order import CLUSTER_TYPE, ENDPOINT_TYPE  # noqa: E402
from zpilot.xds.security import XdsSecurity
from zpilot.xds.server import ServerOptions  # noqa: E402
from zpilot.xds.snapshot import Snapshot  # noqa: E402


def timed(fn, repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def spec(clusters: int) -> NodeSpec:
    return NodeSpec(clusters={f"svc-{i:05d}": [f"10.{i // 250 % 250}.{i % 250}.{j}" for j in range(4)]
                              for i in range(clusters)}, listeners={"l1": 10001})


async def push_fanout(clusters: int, clients: int, rounds: int) -> list[float]:
    world = FakeWorld(a=spec(clusters))
    plane = ControlPlane(xds_security=XdsSecurity.insecure(), server_options=ServerOptions(host="127.0.0.1", port=0),
                         debug_options=DebugOptions(port=0), translate=world.translate, secrets=world.secrets)
    await plane.update(world.index())
    await plane.start()
    conns = [AdsClient(plane.xds_port, options=[("grpc.max_receive_message_length", 256 << 20)])
             for _ in range(clients)]
    try:
        for c in conns:
            c.request(CLUSTER_TYPE, node_name="a")
        last = {}
        for c in conns:
            r = await c.recv(60)
            c.request(CLUSTER_TYPE, nonce=r.nonce, version=r.version_info)
        latencies, produce = [], []
        for i in range(rounds):
            world.nodes["a"].clusters[f"extra-{i}"] = []
            start = time.perf_counter()
            report = await plane.update(world.index())
            produce.append(report.seconds)
            for c in conns:
                r = await c.recv(60)
                last[c] = r
            latencies.append(time.perf_counter() - start)
            for c in conns:
                c.request(CLUSTER_TYPE, nonce=last[c].nonce, version=last[c].version_info)
        return latencies, produce
    finally:
        for c in conns:
            await c.close()
        await plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    world = FakeWorld(a=spec(args.clusters))
    resources = world.translate(world.index(), "a")
    messages = {CLUSTER_TYPE: resources.clusters, ENDPOINT_TYPE: resources.endpoints}
    build = timed(lambda: Snapshot.build("a", messages), 3)
    snap = Snapshot.build("a", messages)
    size = snap.resources(CLUSTER_TYPE).size + snap.resources(ENDPOINT_TYPE).size

    def assemble():  # what the server does per push: CDS in full (wildcard), EDS by name
        wire.discovery_response_from_entries(version_info="v", entries=snap.resources(CLUSTER_TYPE).all_entries,
                                             type_url=CLUSTER_TYPE, nonce="1")
        eds = snap.resources(ENDPOINT_TYPE)
        wire.discovery_response_from_entries(version_info="v", entries=b"".join(
            r.entry for r in eds.select(eds.items)), type_url=ENDPOINT_TYPE, nonce="2")

    asm = timed(assemble)
    print(f"node with {args.clusters} EDS clusters ({size / 1e6:.2f} MB CDS+EDS):")
    print(f"  build snapshot (serialize + hash): {build * 1000:.1f} ms")
    print(f"  assemble CDS+EDS responses from cached bytes: {asm * 1000:.2f} ms ({size / asm / 1e9:.2f} GB/s)")

    latencies, produce = asyncio.run(push_fanout(args.clusters, args.clients, args.rounds))
    print(f"  producer update (translate + build + cache): median {statistics.median(produce) * 1000:.0f} ms")
    print(f"  push to {args.clients} SotW clients (update -> all received and parsed CDS, clients in this"
          f" process): median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")

    from zpilot.kube.manifests import load_manifests
    from zpilot.model.index import MeshIndex
    from zpilot.translators import translate_node

    root = Path(__file__).resolve().parents[1] / "examples" / "article"
    manifests = load_manifests(root)
    index = MeshIndex.build(manifests.cluster, manifests.problems)
    gen = timed(lambda: [translate_node(index, n) for n in index.nodes])
    print(f"example cluster: translate {len(index.nodes)} nodes: {gen * 1000:.1f} ms; "
          f"load + index manifests: {timed(lambda: MeshIndex.build(load_manifests(root).cluster)) * 1000:.1f} ms")


if __name__ == "__main__":
    main()

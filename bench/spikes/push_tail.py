"""Spike (issue 13, delta at R): which stream is a pod change's last "sent", and the event loop's CPU until then.

The benchmark's set-up (``bench/scale.py``'s churn: a control plane at R, 100 simulated ztunnels over
real gRPC, ``bench/ztunnels.py``), then N pods added and deleted. For each change: the producer's time,
the sent time of each stream after the producer's handover (its last response of the change), and the
CPU of the event loop's thread (``thread_time``) from the handover to the last stream's send; the three
slowest streams and what they sent last; the loop CPU between two consecutive EDS sends of the other
streams (one stream's step: its response found, built and handed to gRPC). At the end (SUMMARY) every
stream's last send after the handover over all changes, p99 and p50 as the benchmark takes them (loop
CPU and wall), and the pod's own node's. CPU, unlike the wall time, hardly moves with the machine's load.

    python3 bench/spikes/push_tail.py delta|sotw [N]

Not a test and not the benchmark; docs/scale.md quotes what it found.
"""
import asyncio, sys, time, dataclasses, statistics
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import scale
from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.synthetic import extra_pod

mode = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 4

async def main():
    from zpilot.xds.observer import StreamObserver
    from zpilot.synthetic import Shape; shape = Shape.reference()
    cluster, index, _ = scale._model(shape)
    class Sent(StreamObserver):
        def __init__(self): self.records = []
        def response_sent(self, stream, response):
            self.records.append((time.monotonic(), time.thread_time(), stream.node, response.type_url.rsplit(".",1)[1], response.push_latency, response.bytes))
    params = {"layout": "linear", "shape": dataclasses.asdict(shape), "clients": 100, "xds": mode,
              "clients_nice": 19, "sync_timeout": 300}
    async with scale.serving(params, index) as served:  # (the benchmark's set-up: its clients' session and nice)
        sent = Sent(); served.plane.ads.observer.add(sent)
        await run(served, sent, shape, cluster, index)


async def run(served, sent, shape, cluster, index):
    from zpilot.model.index import MeshIndex
    plane, received = served.plane, served.records
    models = scale._Models(MeshIndex, index)
    tails = []; steps = []; all_cpu = []; all_wall = []; own_cpu = []
    for r in range(n):
        node = (r * 7 + 3) % shape.nodes
        pod = KIND_CONVERTERS["Pod"](extra_pod(shape, r, node))
        for kind, model in (("add", dataclasses.replace(cluster, workloads=cluster.workloads + (pod,))), ("del", cluster)):
            first = len(sent.records)
            t0 = time.monotonic()
            idx = await asyncio.to_thread(models.build, model)
            t1 = time.monotonic(); c1 = time.thread_time()
            await plane.update(idx, changed_at=t0)
            t2 = time.monotonic(); c2 = time.thread_time()
            await scale._quiet(served.sent, 1.0, received)
            recs = [x for x in sent.records[first:] if x[4] is not None]
            last = {}
            for t, c, nd, ty, lat, b in recs:
                if nd not in last or t > last[nd][0]: last[nd] = (t, c, ty)
            after = sorted(((t - t2) * 1000, (c - c2) * 1000, nd, ty) for nd, (t, c, ty) in last.items())
            worst = after[-3:]
            print(f"{kind} node-{node}: producer {1000*(t2-t1):.0f} ms ({1000*(c2-c1):.0f} cpu); after handover to last sent: p50 {after[len(after)//2][0]:.1f} max {after[-1][0]:.1f} ms wall, {after[-1][1]:.1f} ms cpu; worst {[(round(a,1), round(b,1), nd, ty) for a,b,nd,ty in worst]}")
            tails.append(after[-1][1])
            all_cpu.extend(c for w, c, nd, ty in after); all_wall.extend(w for w, c, nd, ty in after)
            own_cpu.extend(c for w, c, nd, ty in after if nd == f"node-{node}")
            cs = sorted(c for t, c, nd, ty, lat, b in recs if ty == "ClusterLoadAssignment" and nd != f"node-{node}")
            diffs = sorted(b - a for a, b in zip(cs, cs[1:]))
            steps.append(statistics.median(diffs))
            print(f"   the others' step cpu median {statistics.median(diffs)*1e6:.0f} us, p90 {diffs[int(len(diffs)*0.9)]*1e6:.0f} us; the others span cpu {(cs[-1]-cs[0])*1000:.1f} ms")
    p = lambda v, q: round(scale._pct(v, q), 1)
    print(f"SUMMARY p99 cpu {p(all_cpu, .99)} wall {p(all_wall, .99)}; p50 cpu {p(all_cpu, .5)} wall {p(all_wall, .5)}; own cpu median {p(own_cpu, .5)}")
    print("mean cpu handover->last sent", round(statistics.mean(tails), 1), "median step of the others us", round(statistics.median(steps)*1e6))
asyncio.run(main())

"""Spike (issue 13, delta at R): each ADS stream's serving CPU and what it sends, per change, in process.

The R cluster's 100 nodes, each served by one stream (``DeltaStream`` or ``SotwStream``) with no gRPC
in between: the stream's ``respond`` runs as its send loop would run it, its writes are kept, and
each response is handed to the benchmark's simulated ztunnel (``bench/ztunnels.py``), whose ACKs and
subscriptions go back into the stream. For each change the benchmark makes (pod added, deleted, made
unready, service added, policy changed): the serving thread's CPU (``thread_time``) of the push (the
first look of every stream) and of the clients' answers and what follows them, the bytes; with
``--show``, per type how many resources and removed names each response carried, for the stream that
got the most, and (delta) a text diff of every listener and cluster it was sent against the one before.

    python3 bench/spikes/delta_serving.py delta|sotw [ROUNDS] [--show]

Not a test and not the benchmark: no gRPC, no timing assertions; docs/scale.md quotes what it found.
"""
import asyncio, sys, os, time, dataclasses, gc, collections, statistics
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from zpilot.synthetic import Shape, synthetic_cluster, synthetic_manifests, extra_pod, extra_service, extra_policy, node_name
from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.model.index import MeshIndex
from zpilot.translators import IncrementalTranslator, TranslateOptions
from zpilot.xds.push import Producer
from zpilot.xds.snapshot_cache import SnapshotCache
from zpilot.xds.observer import StreamObserver
from zpilot.xds.stream import StreamOptions
from zpilot.xds.auth import Principal
from zpilot.xds.delta import DeltaStream
from zpilot.xds.sotw import SotwStream
import ztunnels as zt

async def _inline(f, *a, **k): return f(*a, **k)
asyncio.to_thread = _inline

mode = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
show = "--show" in sys.argv
shape = Shape.reference()
cluster = synthetic_cluster(synthetic_manifests(shape))
index = MeshIndex.build(cluster)
cache = SnapshotCache()
producer = Producer(cache, translate=IncrementalTranslator(TranslateOptions(layout="linear")))


class Ctx:
    def __init__(self):
        self.out = []
    async def write(self, data):
        self.out.append(data)


class Pair:
    def __init__(self, node):
        self.node = node
        cls = DeltaStream if mode == "delta" else SotwStream
        self.stream = cls(cache, StreamObserver(), StreamOptions(), principal=Principal(None, "bench"))
        self.ctx = Ctx()
        self.stream._context = self.ctx
        client_cls = zt.DeltaZtunnel if mode == "delta" else zt.SotwZtunnel
        self.client = client_cls(None, node)
        self.opened = False

    def feed(self):
        """The client's queued requests into the stream; CPU seconds."""
        t = time.thread_time()
        q = self.client.requests
        while not q.empty():
            raw = q.get_nowait().SerializeToString()
            req = self.stream.decode(raw)
            if not self.opened:
                self.stream._open(req)
                self.opened = True
            self.stream._handle(req)
        return time.thread_time() - t

    async def serve(self):
        """One pass of the send loop if woken; (cpu, responses raw)."""
        s = self.stream
        if not s._wake.is_set():
            return 0.0, []
        t = time.thread_time()
        s._wake.clear(); s._asked = False
        changed, s._snapshot_changed = s._snapshot_changed, False
        snap = s.snapshot()
        await s.respond(snap, changed)
        cpu = time.thread_time() - t
        out, self.ctx.out = self.ctx.out, []
        return cpu, out

    def client_takes(self, raws):
        carried = []
        for raw in raws:
            resp = self.client.response_type.FromString(raw)
            rec = {}
            self.client.handle(resp, rec)
            t = resp.type_url.rsplit(".", 1)[-1]
            removed = list(getattr(resp, "removed_resources", []))
            carried.append((t, len(raw), [r.name if mode == "delta" else "" for r in resp.resources], removed))
        return carried


async def settle(pairs, first_push=False):
    """Until quiet: push pass (first), then answers and what follows. Returns per-pair stats."""
    stats = {p.node: {"push_cpu": 0.0, "push_bytes": 0, "push": [], "after_cpu": 0.0, "after_bytes": 0, "after": []} for p in pairs}
    first = True
    while True:
        busy = False
        for p in pairs:
            cpu, raws = await p.serve()
            key = "push" if first else "after"
            st = stats[p.node]
            st[key + "_cpu"] += cpu
            if raws:
                busy = True
                st[key + "_bytes"] += sum(map(len, raws))
                st[key] += p.client_takes(raws)
        for p in pairs:
            st = stats[p.node]
            c = p.feed()
            st["after_cpu"] += c
        first = False
        if not busy and not any(p.stream._wake.is_set() for p in pairs):
            return stats


import difflib
from google.protobuf import text_format
from zpilot.xds.order import LISTENER_TYPE, CLUSTER_TYPE
def diffs(old, new, t, names):
    tu = LISTENER_TYPE if t == "Listener" else CLUSTER_TYPE
    o, _ = old.decode(); n, _ = new.decode()
    src_o = o.listeners if t == "Listener" else o.clusters
    src_n = n.listeners if t == "Listener" else n.clusters
    for name in names:
        a = text_format.MessageToString(src_o[name]).splitlines() if name in src_o else []
        b = text_format.MessageToString(src_n[name]).splitlines() if name in src_n else []
        d = [l for l in difflib.unified_diff(a, b, lineterm="", n=0) if not l.startswith(("---", "+++", "@@"))]
        print(f"     diff {t} {name}: {len(a)} -> {len(b)} lines, {len(d)} differing lines: {d[:12]}")

async def main():
    await producer.update(index)
    pairs = [Pair(node_name(i)) for i in range(shape.nodes)]
    for p in pairs:
        p.client.start()
        p.feed()
    t = time.perf_counter()
    st0 = await settle(pairs)
    srv = sum(s["push_cpu"] + s["after_cpu"] for s in st0.values())
    print(f"initial sync {time.perf_counter() - t:.1f}s wall (with clients), server cpu {srv*1000:.0f} ms")
    per = [ (s["push_cpu"] + s["after_cpu"]) * 1000 for s in st0.values()]
    print("   per stream ms: first", [round(x, 1) for x in per[:3]], "median", round(statistics.median(per), 2))
    last = index
    c = cluster
    res = collections.defaultdict(list)
    for r in range(rounds):
        node = (r * 7 + 3) % shape.nodes
        pod = KIND_CONVERTERS["Pod"](extra_pod(shape, r, node))
        service = KIND_CONVERTERS["Service"](extra_service(shape, r))
        policy = KIND_CONVERTERS["AuthorizationPolicy"](extra_policy(shape, r * 13 + 5))
        steps = [("pod add", dataclasses.replace(c, workloads=c.workloads + (pod,))), ("pod delete", c)]
        flipped = r * 37 % len(c.workloads)
        unready = dataclasses.replace(c.workloads[flipped], ready=False)
        steps += [("pod unready", dataclasses.replace(c, workloads=c.workloads[:flipped] + (unready,) + c.workloads[flipped + 1:])), (None, c)]
        c = dataclasses.replace(c, services=c.services + (service,))
        steps.append(("service add", c))
        c = dataclasses.replace(c, authorization_policies=c.authorization_policies + (policy,))
        steps.append(("policy change", c))
        for kind, model in steps:
            last = MeshIndex.build(model, previous=last)
            gc.collect()
            before = {p.node: cache.get_snapshot(p.node) for p in pairs}
            t0 = time.thread_time()
            await producer.update(last)
            prod = time.thread_time() - t0
            await asyncio.sleep(0)
            stats = await settle(pairs)
            if kind is None:
                continue
            pushed = [s for s in stats.values() if s["push"]]
            res[kind].append((prod, stats))
            if show and r == 0:
                print(f"== {kind}: {len(pushed)} streams pushed")
                ex = collections.Counter()
                for n, s in stats.items():
                    for t, size, names, removed in s["push"] + s["after"]:
                        ex[(t, len(names), len(removed))] += 1
                for k, v in sorted(ex.items()):
                    print("   type=%s resources=%d removed=%d : %d responses" % (*k, v))
                # one example stream
                n0 = max(stats, key=lambda n: len(stats[n]["push"]) + len(stats[n]["after"]))
                if n0:
                    for t, size, names, removed in stats[n0]["push"] + stats[n0]["after"]:
                        if t in ("Listener", "Cluster") and mode == "delta":
                            diffs(before[n0], cache.get_snapshot(n0), t, names)
                        print(f"   e.g. {n0} {t} {size}B names={names[:8]}{'...' if len(names)>8 else ''} removed={removed[:6]}")
    print(f"mode={mode} rounds={rounds}")
    print("change         producer cpu ms  push cpu ms sum(100 streams)  per pushed stream  after cpu ms sum  push MB  after MB")
    for kind, runs in res.items():
        prod = statistics.mean(p for p, _ in runs) * 1000
        push = statistics.mean(sum(s["push_cpu"] for s in st.values()) for _, st in runs) * 1000
        npushed = statistics.mean(sum(1 for s in st.values() if s["push"]) for _, st in runs)
        after = statistics.mean(sum(s["after_cpu"] for s in st.values()) for _, st in runs) * 1000
        pmb = statistics.mean(sum(s["push_bytes"] for s in st.values()) for _, st in runs) / 1e6
        amb = statistics.mean(sum(s["after_bytes"] for s in st.values()) for _, st in runs) / 1e6
        print(f"{kind:14} {prod:8.1f}        {push:8.1f}                {push/max(npushed,1):6.2f}            {after:8.1f}      {pmb:6.2f}  {amb:6.2f}")

asyncio.run(main())

"""Spike (issue 13, round nine): the serving loop's per-stream work at R, ours against gRPC's.

The benchmark's churn set-up (``bench/scale.py``: a control plane at R, 100 simulated ztunnels over
real gRPC, ``bench/ztunnels.py``), then N pods added and deleted. For each change, from the
producer's handover: every request the streams' readers received (when it arrived, its size, the
loop's CPU to decode and handle it, whether it arrived before the pod's own node's last send: then
its receipt was in that stream's way), and the loop CPU between two of the other streams' EDS
sends. With ``--profile``, a cProfile of the loop from each handover until 0.3 s after it, its
own time summed by where the code is (zpilot, grpc, asyncio, the rest).

    python3 bench/spikes/ack_cost.py sotw|delta [N] [--profile]

Not a test and not the benchmark.
"""
import asyncio, collections, dataclasses, statistics, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import scale
from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.synthetic import extra_pod
from zpilot.xds import stream as stream_mod

args = sys.argv[1:]
profile = None
if "--profile" in args:
    import cProfile, pstats
    args.remove("--profile"); profile = cProfile.Profile()
mode = args[0]; n = int(args[1]) if len(args) > 1 else 4
from zpilot.synthetic import Shape
shape = Shape.reference()

arrivals = []  # (monotonic at receipt, node, bytes, loop cpu of decode + handle in seconds)


async def _read(self, iterator):  # Stream._read, timed: the receipt, then decode and handle
    burst = self.options.push_burst
    try:
        while True:
            try:
                raw = await Timed(iterator.__anext__(), "grpc read (the request's receipt)")
            except StopAsyncIteration:
                break
            t = time.monotonic()
            if burst is not None and burst.active:
                await burst.over()
            c = time.thread_time()
            self._handle(self.decode(raw))
            arrivals.append((t, self.info.node if self.info else "", len(raw), time.thread_time() - c))
    except stream_mod.RequestError as exc:
        self._error = exc
    except asyncio.CancelledError:
        raise
    except Exception:
        pass
    finally:
        self._reader_done = True
        self._wake.set()
stream_mod.Stream._read = _read


steps_cpu = {"grpc read (the request's receipt)": [], "respond (ours, with grpc's write call)": [], "grpc context.write call": [], "ack handle": [], "ack decode": []}


class Timed:
    """Await ``coro``, adding the loop CPU of each of its synchronous steps to ``steps_cpu[key]``."""
    def __init__(self, coro, key): self.coro, self.key = coro, key
    def __await__(self):
        it, total = self.coro.__await__(), 0.0
        value, error = None, None
        while True:
            c = time.thread_time()
            try:
                y = it.throw(error) if error is not None else it.send(value)
            except StopIteration as e:
                steps_cpu[self.key].append(total + time.thread_time() - c); return e.value
            total += time.thread_time() - c
            error = value = None
            try:
                value = yield y
            except BaseException as exc:
                error = exc


from zpilot.xds import sotw as sotw_mod, delta as delta_mod
for cls in (sotw_mod.SotwStream, delta_mod.DeltaStream):
    def wrap(cls=cls, respond=cls.respond):
        async def timed(self, snapshot, changed):
            await Timed(respond(self, snapshot, changed), "respond (ours, with grpc's write call)")
        cls.respond = timed
        decode = cls.decode
        def timed_decode(self, raw, decode=decode):
            c = time.thread_time(); out = decode(self, raw); steps_cpu["ack decode"].append(time.thread_time() - c); return out
        cls.decode = timed_decode
        handle = cls.handle
        def timed_handle(self, request, handle=handle):
            c = time.thread_time(); out = handle(self, request); steps_cpu["ack handle"].append(time.thread_time() - c); return out
        cls.handle = timed_handle
    wrap()
_write = stream_mod.Stream.write
async def write(self, chunks):
    context = self._context
    class Ctx:
        def write(_, data): return Timed(context.write(data), "grpc context.write call")
    self._context = Ctx()
    try:
        await _write(self, chunks)
    finally:
        self._context = context
stream_mod.Stream.write = write


def where(filename: str) -> str:
    for key in ("zpilot", "grpc", "asyncio"):
        if f"/{key}/" in filename or f"{key}." in filename.rsplit("/", 1)[-1]:
            return key
    return "builtin" if filename == "~" else "other"


async def main():
    params = {"layout": "linear", "shape": dataclasses.asdict(shape), "clients": 100, "xds": mode, "clients_nice": 19,
              "sync_timeout": 300}
    cluster, index, _ = scale._model(shape)
    async with scale.serving(params, index) as served:
        await changes(served, cluster, index)


async def changes(served, cluster, index):
    from zpilot.model.index import MeshIndex
    from zpilot.xds.observer import StreamObserver
    plane, received, served_sent = served.plane, served.records, served.sent
    class Sent(StreamObserver):  # as the benchmark's, with the loop's CPU at each send
        def __init__(self): self.records = []
        def response_sent(self, stream, response):
            self.records.append((time.monotonic(), time.thread_time(), stream.node, response.type_url.rsplit(".", 1)[1],
                                 response.push_latency, response.bytes))
    sent = Sent()
    plane.ads.observer.add(sent)
    models = scale._Models(MeshIndex, index)
    for values in steps_cpu.values(): values.clear()
    handle_us, before_own, sizes, steps, spans, own_after = [], [], [], [], [], []
    for r in range(n):
        node = (r * 7 + 3) % shape.nodes; own = scale.node_name(node)
        pod = KIND_CONVERTERS["Pod"](extra_pod(shape, r, node))
        for kind, model in (("add", dataclasses.replace(cluster, workloads=cluster.workloads + (pod,))), ("del", cluster)):
            first, first_arrival = len(sent.records), len(arrivals)
            t0 = time.monotonic()
            end_pause = scale.pause()
            try:
                idx = await asyncio.to_thread(models.build, model)
                await plane.update(idx, changed_at=t0)
                t2 = time.monotonic()
                if profile: profile.enable()
            finally:
                end_pause()
            if profile:
                await asyncio.sleep(0.3); profile.disable()
            await scale._quiet(served_sent, 1.0, received)
            recs = [x for x in sent.records[first:] if x[4] is not None]
            last = {}
            for t, c, nd, ty, lat, _ in recs:
                if nd not in last or t > last[nd][0]: last[nd] = (t, c)
            own_t = last[own][0] if own in last else None
            acks = [a for a in arrivals[first_arrival:]]
            handle_us += [a[3] * 1e6 for a in acks]; sizes += [a[2] for a in acks]
            early = [a for a in acks if own_t is not None and a[0] < own_t]
            before_own.append(len(early))
            cs = sorted(c for t, c, nd, ty, lat, _ in recs if ty == "ClusterLoadAssignment" and nd != own)
            diffs = [b - a for a, b in zip(cs, cs[1:])]
            steps.append(statistics.median(diffs) * 1e6); spans.append((cs[-1] - cs[0]) * 1000)
            if own_t: own_after.append((own_t - t2) * 1000)
            wall = sorted((t - t2) * 1000 for t, c in last.values())
            print(f"{kind} {own}: requests {len(acks)} ({len(early)} before the own node's last send, at"
                  f" {sorted(round((a[0] - t2) * 1000, 1) for a in early)[:5]}...), own sent {own_after[-1] if own_t else None:.1f} ms"
                  f" after handover, all max {wall[-1]:.1f}; the others' step cpu median {steps[-1]:.0f} us, span cpu {spans[-1]:.1f} ms")
    med = lambda v: round(statistics.median(v), 1)
    print(f"SUMMARY requests per change {len(handle_us) / (2 * n):.0f}, bytes median {med(sizes)}, decode+handle loop cpu us"
          f" median {med(handle_us)} p90 {round(sorted(handle_us)[int(len(handle_us) * .9)], 1)} sum per change"
          f" {sum(handle_us) / (2 * n) / 1000:.2f} ms; arrived before the own node's last send: {before_own}")
    print(f"SUMMARY the others' EDS step loop cpu median of changes {med(steps)} us, span {med(spans)} ms; own sent after handover {[round(x, 1) for x in own_after]}")
    for key, values in steps_cpu.items():
        if values: print(f"SUMMARY {key}: n {len(values)} median {statistics.median(values)*1e6:.1f} us mean {statistics.mean(values)*1e6:.1f} us sum per change {sum(values)*1e3/(2*n):.2f} ms")
    if profile:
        stats = pstats.Stats(profile)
        by = collections.Counter()
        for (filename, line, fn), (cc, nc, tt, ct, callers) in stats.stats.items():
            by[where(filename)] += tt
        total = sum(by.values())
        print("SUMMARY profile own time by place, ms per change:", {k: round(v * 1000 / (2 * n), 2) for k, v in by.most_common()},
              f"total {total * 1000 / (2 * n):.2f}")
        stats.sort_stats("tottime").print_stats(40)
asyncio.run(main())

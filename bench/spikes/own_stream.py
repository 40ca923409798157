"""Spike (issue 13, round eight): the pod's own node's SotW stream, the p99 of a pod added or deleted at R.

The benchmark's set-up (``bench/scale.py``'s churn: a control plane at R, 100 simulated ztunnels over
real gRPC, ``bench/ztunnels.py``), then N pods added and deleted. For each change, from the end of
the debounce window (t0): the producer's handover, where the pod's own node's stream was in the
order the cache woke the streams, when it was woken, each response's write (type, bytes, start and
end: ``await context.write`` returns once gRPC took the message), and when its client received each;
the other streams' last "sent" (p50, max), and the event loop thread's CPU from the handover to
the last "sent".

    python3 bench/spikes/own_stream.py [N] [--wake-batch K] [--profile] [ztunnels.py options, e.g. --window 0]

Not a test and not the benchmark; docs/scale.md quotes what it found.
"""
import asyncio, sys, os, time, dataclasses, json, statistics
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import scale
from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.synthetic import extra_pod
from zpilot.xds import snapshot_cache, sotw, stream as stream_mod

n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
client_args = sys.argv[2:]
profile = None
wake_batch = 0  # --wake-batch K: wake K nodes per turn of the loop (tried in round eight, not kept); 0: all at once, as zpilot
if "--wake-batch" in client_args:
    at = client_args.index("--wake-batch"); wake_batch = int(client_args[at + 1]); del client_args[at:at + 2]
if "--profile" in client_args:  # cProfile of the event loop from each handover until quiet
    import cProfile, pstats
    client_args.remove("--profile"); profile = cProfile.Profile()

events = []  # (monotonic, thread_time, what, node, detail)

def note(what, node, detail=None):
    events.append((time.monotonic(), time.thread_time(), what, node, detail))

own_last = "--own-last" in client_args  # wake the streams with most changed types last, not first
if own_last: client_args.remove("--own-last")
_wake = snapshot_cache.SnapshotCache._wake
def wake(self):
    if own_last:
        self._to_wake = {node: -changed for node, changed in self._to_wake.items()}
    order = sorted(self._to_wake, key=self._to_wake.__getitem__, reverse=True)
    note("wake", None, order)
    if not wake_batch:
        return _wake(self)
    self._to_wake = {}
    def batch(start):
        for node in order[start:start + wake_batch]:
            self._notify(node)
        if start + wake_batch < len(order):
            asyncio.get_running_loop().call_soon(batch, start + wake_batch)
    batch(0)
snapshot_cache.SnapshotCache._wake = wake

_changed = stream_mod.Stream._snapshot_changed_now
def changed(self):
    note("woken", self.node)
    _changed(self)
stream_mod.Stream._snapshot_changed_now = changed

_respond = sotw.SotwStream.respond
async def respond(self, snapshot, snapshot_changed):
    note("respond", self.node, snapshot_changed)
    await Timed(_respond(self, snapshot, snapshot_changed), "respond first step")
sotw.SotwStream.respond = respond

_send = sotw.SotwStream._send
async def send(self, sub, type_url, version, send, pushed, entries=None):
    note("write", self.node, type_url.rsplit(".", 1)[1])
    await _send(self, sub, type_url, version, send, pushed, entries)
    note("written", self.node, type_url.rsplit(".", 1)[1])
sotw.SotwStream._send = send

steps = {"respond first step": [], "grpc write sync": []}  # thread CPU of synchronous parts, seconds

class Timed:
    """Await ``coro``, adding the thread CPU of its first step (until it first suspends) to ``steps[key]``."""
    def __init__(self, coro, key): self.coro, self.key = coro, key
    def __await__(self):
        it = self.coro.__await__(); c0 = time.thread_time()
        try:
            y = it.send(None)
        except StopIteration as e:
            steps[self.key].append(time.thread_time() - c0); return e.value
        steps[self.key].append(time.thread_time() - c0)
        while True:
            try:
                r = yield y
            except BaseException as exc:
                try: y = it.throw(exc)
                except StopIteration as e: return e.value
            else:
                try: y = it.send(r)
                except StopIteration as e: return e.value

_write = stream_mod.Stream.write
async def write(self, chunks):
    note("grpc write", self.node, sum(map(len, chunks)))
    context = self._context
    class Ctx:
        def write(_, data): return Timed(context.write(data), "grpc write sync")
    self._context = Ctx()
    try:
        await _write(self, chunks)
    finally:
        self._context = context
stream_mod.Stream.write = write

async def main():
    from zpilot.model.index import MeshIndex
    from zpilot.runtime.control_plane import ControlPlane, DebugOptions
    from zpilot.translators import IncrementalTranslator, TranslateOptions
    from zpilot.xds.observer import StreamObserver
    from zpilot.xds.security import XdsSecurity
    from zpilot.xds.server import ServerOptions
    from zpilot.synthetic import Shape; shape = Shape.reference()
    cluster, index, _ = scale._model(shape)
    class Sent(StreamObserver):
        def __init__(self): self.records = []
        def response_sent(self, stream, response):
            self.records.append((time.monotonic(), time.thread_time(), stream.node, response.type_url.rsplit(".",1)[1], response.push_latency, response.bytes))
    sent = Sent()
    plane = ControlPlane(xds_security=XdsSecurity.insecure(), server_options=ServerOptions(host="127.0.0.1", port=0),
                         debug_options=DebugOptions(host="127.0.0.1", port=0),
                         translate=IncrementalTranslator(TranslateOptions(layout="linear")), freeze_first_model=True)
    plane.ads.observer.add(sent)
    await plane.update(index); await plane.start()
    nodes = [scale.node_name(i) for i in range(100)]
    clients = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "bench" / "ztunnels.py"), "--xds", f"127.0.0.1:{plane.xds_port}",
        *client_args, *nodes, stdout=asyncio.subprocess.PIPE, limit=1 << 20, start_new_session=True)
    ready = set(); received = []
    async def read():
        async for line in clients.stdout:
            r = json.loads(line)
            if "ready" in r: ready.add(r["ready"])
            elif "holds" not in r: received.append(r)
    reader = asyncio.create_task(read())
    while len(ready) < 100: await asyncio.sleep(0.1)
    await scale._quiet(sent, 1.0, received)
    models = scale._Models(MeshIndex, index)
    if os.environ.get("OWN_STREAM_READY"):  # to attach a profiler (perf record -p) to the changes alone
        Path(os.environ["OWN_STREAM_READY"]).write_text(str(os.getpid())); await asyncio.sleep(3)
    own_sent, other_sent, cpu, own_after, others_after, own_cpu, others_cpu = [], [], [], [], [], [], []
    clients_cpu, all_cpu, all_wall, others_first_cpu, others_mid_cpu = [], [], [], [], []
    for r in range(n):
        node = (r * 7 + 3) % shape.nodes
        own = scale.node_name(node)
        pod = KIND_CONVERTERS["Pod"](extra_pod(shape, r, node))
        for kind, model in (("add", dataclasses.replace(cluster, workloads=cluster.workloads + (pod,))), ("del", cluster)):
            first, first_ev, first_rx = len(sent.records), len(events), len(received)
            clients_cpu0 = scale._cpu_seconds(clients.pid)
            for values in steps.values(): values.clear() if r == 0 and kind == "add" else None
            t0 = time.monotonic()
            end_pause = scale.pause()
            try:
                idx = await asyncio.to_thread(models.build, model)
                t1 = time.monotonic()
                await plane.update(idx, changed_at=t0)
                t2 = time.monotonic(); c2 = time.thread_time()
                if profile: profile.enable()
            finally:
                end_pause()
            if profile:
                await asyncio.sleep(0.3); profile.disable()
            await asyncio.sleep(0.3); clients_cpu.append((scale._cpu_seconds(clients.pid) - clients_cpu0) * 1000)
            await scale._quiet(sent, 1.0, received)
            ms = lambda t: round((t - t0) * 1000, 1)
            recs = [x for x in sent.records[first:] if x[4] is not None]
            last = {}
            for t, c, nd, ty, lat, b in recs:
                if nd not in last or t > last[nd][0]: last[nd] = (t, c)
            others = sorted(ms(t) for nd, (t, c) in last.items() if nd != own)
            evs = events[first_ev:]
            wake_order = next((e[4] for e in evs if e[2] == "wake"), [])
            pos = wake_order.index(own) if own in wake_order else None
            mine = [(e[2], e[4], ms(e[0]), round((e[1] - c2) * 1000, 2)) for e in evs if e[3] == own and e[2] != "woken"]
            woken = [ms(e[0]) for e in evs if e[3] == own and e[2] == "woken"]
            first_woken = min((ms(e[0]) for e in evs if e[2] == "woken"), default=None)
            rx = [(x["type"], x["bytes"], ms(x["t"])) for x in received[first_rx:] if x["node"] == own]
            own_t = last.get(own, (None,))[0]
            last_t, last_c = max(last.values())
            print(f"{kind} {own}: model {ms(t1)} handover {ms(t2)} first woken {first_woken} | own: wake position {pos}/{len(wake_order)} woken {woken} sent {ms(own_t) if own_t else None}"
                  f" | others sent p50 {others[len(others)//2] if others else None} max {others[-1] if others else None} | loop cpu handover->last sent {round((last_c - c2)*1000,1)} ms")
            print("   own events:", mine)
            print("   own received:", rx)
            if own_t: own_sent.append(ms(own_t)); own_after.append(round((own_t - t2) * 1000, 1))
            other_sent += others; cpu.append((last_c - c2) * 1000)
            all_cpu.extend((c - c2) * 1000 for t, c in last.values()); all_wall.extend((t - t2) * 1000 for t, c in last.values())
            others_c = sorted((c - c2) * 1000 for nd, (t, c) in last.items() if nd != own)
            others_first_cpu.append(round(others_c[0], 2)); others_mid_cpu.append(round(others_c[len(others_c) // 2], 2))
            own_cpu.append(round((last[own][1] - c2) * 1000, 1) if own in last else None)
            others_cpu.append(round((max(c for nd, (t, c) in last.items() if nd != own) - c2) * 1000, 1))
            others_after.append(sorted(round((t - t2) * 1000, 1) for nd, (t, c) in last.items() if nd != own))
    print("own sent:", sorted(own_sent), "others p50/p99:", sorted(other_sent)[len(other_sent)//2], sorted(other_sent)[int(len(other_sent)*0.99)], "cpu mean", round(statistics.mean(cpu), 1))
    print("after handover: own", own_after, "| others p50", [o[len(o)//2] for o in others_after], "| others max", [o[-1] for o in others_after])
    med = lambda v: round(statistics.median(v), 1)
    print(f"SUMMARY after handover (median of changes): own {med(own_after)} others p50 {med([o[len(o)//2] for o in others_after])}"
          f" others max {med([o[-1] for o in others_after])} all max {med([max(o[-1], a) for o, a in zip(others_after, own_after)])} loop cpu {med(cpu)}")
    print(f"SUMMARY loop cpu after handover at the sent (median of changes): own {med(own_cpu)} others' last {med(others_cpu)}; own {own_cpu} others' last {others_cpu}")
    print(f"SUMMARY the other streams' sent, loop cpu after the handover (median of changes): first {med(others_first_cpu)} p50 {med(others_mid_cpu)}")
    p99 = lambda v: round(scale._pct(v, 0.99), 1)
    print(f"SUMMARY every stream's last sent after the handover, p99 as the benchmark takes it: loop cpu {p99(all_cpu)} ms, wall {p99(all_wall)} ms; p50 {round(scale._pct(all_cpu, 0.5), 1)} / {round(scale._pct(all_wall, 0.5), 1)}")
    print(f"SUMMARY clients' process CPU in the 0.3 s after each handover, ms: {[round(c) for c in clients_cpu]}")
    for key, values in steps.items():
        if values: print(f"SUMMARY {key}: n {len(values)} median {statistics.median(values)*1e6:.0f} us mean {statistics.mean(values)*1e6:.0f} us")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats("zpilot|asyncio|grpc", 45)
    reader.cancel(); os.killpg(clients.pid, 9); await clients.wait(); await plane.stop()
asyncio.run(main())

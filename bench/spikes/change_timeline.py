"""Spike (issue 13, round eleven): the timeline of one change of bench/scale.py's churn, wall
against the CPU of the threads doing it, to find the wall time of "model ms" and "producer ms"
that is not their work.

Runs scale.py's churn phase in this process (same _one_change, same control plane and simulated
ztunnels), with probes around the model build (in its worker thread), the producer's worker step
(_plan_then_remake), its storing (loop thread) and the bench's own /proc readings: each probe
records the monotonic time, the thread's CPU (thread_time), minor page faults and involuntary
switches (RUSAGE_THREAD) and its wait for a core (schedstat run delay) on entry and exit; and every
thread of the process's CPU and wait for a core over the model step (t0..t1) and the producer's
(t1..t2), so that wall = CPU + waiting for a core + anything else (GIL, locks, hand-offs) shows.

    python3 bench/spikes/change_timeline.py NODES [ROUNDS] [--rt] [--callbacks] [--switch MS]

--rt makes this process's threads SCHED_FIFO (priority 1) during each change, as if no other
process wanted the cores (the host's steal still applies; the simulated clients are another
process, untouched; the kernel's RT throttling leaves others 5%): what a change costs when its
threads never wait for a core. --callbacks lists every event-loop callback run from the change's
start to the producer's, with its loop CPU. --switch sets sys.setswitchinterval. Pod adds and deletes printed.

Round eleven at R (100 nodes, load 9.5-10.5, 2 pod adds and 2 deletes each, figures ms):
without --rt, model step 7.5-26.4 of which the worker's build 2.1-4.1 CPU, the rest the worker
(2.6-7.4) or the loop (15) waiting for a core to be woken on; producer 27-72 with its worker
9-22 CPU and 16-36 waiting. With --rt, model step 3.4-3.7 (build 2.24-2.36 CPU = its wall; the
bench's /proc readings 0.6; hand-offs 0.2-0.5 each way), producer 11.9-14.6 (worker 8.6-11.4 CPU
= its wall, loop 1.7-2.0 of which storing 1.0), last stream sent 23.8-27.7. No thread of ours
waited on anything but a core: no GIL wait (worker wall = CPU), no collection, no freeing.
--callbacks at R: while the model is built the loop runs nothing but the hand-off's own 4 callbacks
(0.03-0.05 ms each) and, once, a 0.05 ms task woken by a timer; the hand-off back 0.1-0.2 ms.

Not a test and not the benchmark.
"""
import asyncio, json, os, resource, statistics, sys, threading, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import scale
from zpilot.synthetic import Shape
from zpilot.xds import push

if "--switch" in sys.argv:
    i = sys.argv.index("--switch"); sys.setswitchinterval(float(sys.argv[i + 1]) / 1000); del sys.argv[i:i + 2]
# --rt: this process's threads real-time (SCHED_FIFO 1) during each change (its quiet second included,
# not the set-up nor the checks between), as if the machine were quiet: the others' load no longer
# takes a core from them (the host's steal still can); the simulated clients are another process, untouched
rt = "--rt" in sys.argv
if rt: sys.argv.remove("--rt")
# --callbacks: each event-loop callback run from the change's start to the producer's, with its loop-thread CPU
callbacks = "--callbacks" in sys.argv
if callbacks: sys.argv.remove("--callbacks")
nodes = int(sys.argv[1]); rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
marks: list[tuple] = []  # (what, monotonic, thread cpu, thread minflt, thread, run delay ns, involuntary switches)


def mark(what: str) -> None:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    with open("/proc/thread-self/schedstat") as f:
        delay = int(f.read().split()[1])
    marks.append((what, time.monotonic(), time.thread_time(), r.ru_minflt, threading.current_thread().name, delay, r.ru_nivcsw))


def threads() -> dict:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            cpu, delay, _ = map(int, Path(f"/proc/self/task/{tid}/schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        out[f"{name}/{tid}"] = (cpu, delay)
    return out


snaps: dict = {}


def policy(which: int, priority: int) -> None:
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setscheduler(int(tid), which, os.sched_param(priority))
        except OSError:
            pass


def probe(owner, name, label):
    inner = getattr(owner, name)

    def wrapped(*a, **k):
        mark(label + "<")
        try:
            return inner(*a, **k)
        finally:
            mark(label + ">")
    setattr(owner, name, wrapped)


probe(scale._Models, "build", "model")
probe(scale, "_steal_ms", "steal")
probe(scale, "_runqueue_ms", "runqueue")
probe(scale, "pause", "pause")
probe(push.Producer, "_plan_then_remake", "plan+remake")
probe(push.Producer, "_store", "store")
from zpilot.runtime.control_plane import ControlPlane
inner_update = ControlPlane.update


async def update(self, index=None, **k):
    recording[0] = False
    snaps["t1"] = threads()
    mark("update<")
    try:
        return await inner_update(self, index, **k)
    finally:
        mark("update>")
        snaps["t2"] = threads()
ControlPlane.update = update
ran: list = []
recording = [False]
if callbacks:
    inner_run = asyncio.events.Handle._run

    def _run(self):
        if not recording[0]:
            return inner_run(self)
        c0, w0 = time.thread_time(), time.monotonic()
        try:
            return inner_run(self)
        finally:
            ran.append((w0, (time.thread_time() - c0) * 1e3, repr(self._callback)[:110]))
    asyncio.events.Handle._run = _run
inner_one = scale._one_change
changes = []


async def one_change(model, plane, sent, records, connected, models):
    if rt: policy(os.SCHED_FIFO, 1)
    del marks[:]
    snaps.clear()
    snaps["t0"] = threads()
    mark("t0")
    del ran[:]
    recording[0] = True
    try:
        result = await inner_one(model, plane, sent, records, connected, models)
    finally:
        if rt: policy(os.SCHED_OTHER, 0)
    changes.append((result, list(marks), dict(snaps), list(ran)))
    return result
scale._one_change = one_change

params = {"layout": "linear", "shape": scale.dataclasses.asdict(Shape.reference().scaled(nodes)), "clients": nodes,
          "rounds": rounds, "sync_timeout": 300, "live_timeout": 120, "xds": "sotw", "clients_nice": 19}
steal0 = scale._steal_ms(); load0 = os.getloadavg()
scale.child_churn(params)
print(f"load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}, steal {scale._steal_ms() - steal0} ms over the run")
kinds = ["pod add", "pod delete", "pod unready", None, "service add", "policy change"]
for i, (result, ms, sn, cbs) in enumerate(changes):
    kind = kinds[i % len(kinds)]
    if kind not in ("pod add", "pod delete"):
        continue
    t0 = ms[0][1]
    line = [f"{kind:10s} model {result['model_ms']:5.1f} prod {result['producer_ms']:5.1f} last sent {max(result['sent_ms'], default=0):5.1f} steal {result['steal_ms']} rq {result['runqueue_ms']}"]
    open_ = {}
    for what, t, cpu, flt, th, delay, nivcsw in ms:
        if what.endswith("<"):
            open_[what[:-1]] = (t, cpu, flt, delay, nivcsw)
        elif what.endswith(">"):
            s = open_.pop(what[:-1])
            line.append(f"  {what[:-1]:12s} [{(s[0]-t0)*1e3:6.2f} .. {(t-t0)*1e3:6.2f}] wall {(t-s[0])*1e3:6.2f} cpu {(cpu-s[1])*1e3:6.2f} flt {flt-s[2]:5d} waited {(delay-s[3])/1e6:6.2f} preempted {nivcsw-s[4]} ({th})")
    main = {w: (t, cpu, d) for w, t, cpu, _f, th, d, _n in ms if th == "MainThread"}
    for a, b in (("pause>", "update<"), ("update<", "update>")):
        if a in main and b in main:
            (ta, ca, da), (tb, cb, db) = main[a], main[b]
            line.append(f"  loop {a}..{b}: wall {(tb-ta)*1e3:6.2f} loop cpu {(cb-ca)*1e3:6.2f} loop waited {(db-da)/1e6:6.2f}")
    for a, b in (("t0", "t1"), ("t1", "t2")):
        if a in sn and b in sn:
            busy = [f"{k} cpu {(sn[b][k][0]-sn[a][k][0])/1e6:.2f} waited {(sn[b][k][1]-sn[a][k][1])/1e6:.2f}"
                    for k in sn[b] if k in sn[a] and sn[b][k] != sn[a][k]]
            line.append(f"  threads {a}..{b}: " + "; ".join(busy))
    line += [f"    callback at {(w - t0) * 1e3:6.2f} cpu {c:5.2f} {what}" for w, c, what in cbs]
    print("\n".join(line))

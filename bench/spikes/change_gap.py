"""Spike (issue 13, round nine): where one pod change's time goes at R, end to end, in-process.

The churn phase's set-up and changes (``bench/scale.py``'s ``serving`` and ``_one_change``: a
control plane at R, 100 simulated ztunnels over real gRPC), with probes on: for each pod added
and deleted, from the end of the debounce window (t0) to the last stream's "sent":

- phases: the model build and the producer's worker-thread call (wall, thread CPU, the hand-offs
  to and from the worker thread), the store, the cache's wake-up, each stream's sends;
- the event loop: every callback it ran (wall, thread CPU, how long after it was scheduled),
  the time it slept in epoll, the garbage collections (``gc.callbacks``);
- every thread of the process (``/proc/self/task/*/schedstat``): CPU, and time runnable but
  waiting for a core (the machine's other load); a thread's wall time that is neither is sleep:
  in epoll, on a lock, or waiting for the GIL.

    python3 bench/spikes/change_gap.py [ROUNDS] [--on-loop] [--switch MS] [--clients-own-session] [--sequence]

``--sequence``: the churn bench's own order of changes (``scale._events``: pod added, deleted, made
unready and ready, a service and a policy added, each followed by its EDS check), the pod changes
traced; each change's window also gives the host's steal time (``steal:-1``) and the threads' system
CPU and page faults.

Not a test and not the benchmark; docs/scale.md quotes what it found.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import scale  # noqa: E402
from zpilot.kube.convert_policy import KIND_CONVERTERS  # noqa: E402
from zpilot.synthetic import Shape, extra_pod  # noqa: E402
from zpilot.xds import push, snapshot_cache, stream as stream_mod  # noqa: E402

args = sys.argv[1:]
rounds = int(args[0]) if args and args[0].isdigit() else 3
mono, tcpu = time.monotonic, time.thread_time


class Probe:
    on = False

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.marks: list[tuple[float, str, object]] = []  # (monotonic, what, detail)
        self.handles: list[tuple[float, float, float, float | None, object]] = []  # start, end, cpu, lag, callback
        self.selects: list[tuple[float, float, int]] = []
        self.gcs: list[tuple[float, float, int]] = []
        self.created: dict = {}
        self.accounts: list[tuple[float, str, tuple[int, int, int, int]]] = []

    def mark(self, what: str, detail: object = None) -> None:
        if self.on:
            self.marks.append((mono(), what, detail))

    def loop_thread(self, what: str) -> None:
        """The loop thread's own account now: CPU, runqueue wait, voluntary and involuntary switches."""
        if self.on:
            self.accounts.append((mono(), what, (*loop_account(), *rusage())))


P = Probe()

# -- the event loop: callbacks, their lag, epoll --------------------------------------------------
_call_soon = asyncio.base_events.BaseEventLoop._call_soon


def call_soon(self, callback, args, context):
    handle = _call_soon(self, callback, args, context)
    if P.on:
        P.created[handle] = mono()
    return handle


asyncio.base_events.BaseEventLoop._call_soon = call_soon
_run = asyncio.events.Handle._run


def run(self):
    if not P.on:
        return _run(self)
    s, c = mono(), tcpu()
    _run(self)
    created = P.created.pop(self, None)
    P.handles.append((s, mono(), tcpu() - c, None if created is None else s - created, self._callback))


asyncio.events.Handle._run = run


def watch_selector(loop) -> None:
    selector = loop._selector
    select = selector.select

    def timed(timeout=None):
        s = mono()
        out = select(timeout)
        if P.on:
            P.selects.append((s, mono(), len(out)))
        return out

    selector.select = timed


_gc_started = [0.0]


def on_gc(phase, info) -> None:
    if phase == "start":
        _gc_started[0] = mono()
    elif P.on:
        P.gcs.append((_gc_started[0], mono(), info["generation"]))


gc.callbacks.append(on_gc)

# -- the phases -----------------------------------------------------------------------------------


OWN = [""]  # the pod's own node this change
STATS: dict[str, dict] = {}  # schedstat of every thread at: "call", "store", "call+100ms"


def wrap_thread_call(cls, name: str, label: str) -> None:
    original = getattr(cls, name)

    def wrapped(*a, **k):
        if label == "store" and P.on:
            STATS["store"] = schedstat()
        P.mark(label + " start", (threading.get_native_id(), tcpu(), rusage()))
        try:
            return original(*a, **k)
        finally:
            P.mark(label + " end", (threading.get_native_id(), tcpu(), rusage()))
            if label == "wake":
                P.loop_thread("wake end")
                if P.on:
                    STATS["wake end"] = schedstat()

    setattr(cls, name, wrapped)


wrap_thread_call(push.Producer, "_plan_then_remake", "plan")
wrap_thread_call(push.Producer, "_store", "store")
wrap_thread_call(snapshot_cache.SnapshotCache, "_wake", "wake")
wrap_thread_call(scale._Models, "build", "model")
_update = push.Producer.update


async def update(self, *a, **k):
    P.mark("update")
    return await _update(self, *a, **k)


push.Producer.update = update
_changed = stream_mod.Stream._snapshot_changed_now


def changed(self):
    P.mark("woken", self.node)
    _changed(self)


stream_mod.Stream._snapshot_changed_now = changed
_write = stream_mod.Stream.write


async def write(self, chunks):
    await _write(self, chunks)
    P.mark("written", self.node)
    if self.node == OWN[0]:
        P.loop_thread("own written")
        if P.on:
            STATS["own written"] = schedstat()


stream_mod.Stream.write = write


NAMES: dict[int, str] = {}
LOOP_TID = threading.get_native_id()


def rusage() -> tuple[float, float, int]:
    """This thread's user and system CPU seconds and minor page faults (system time is mostly the
    kernel faulting in memory the allocator had given back)."""
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def loop_account() -> tuple[int, int, int, int]:
    """The loop thread's CPU ns, ns runnable but waiting for a core, voluntary and involuntary switches."""
    cpu, wait, _ = map(int, Path(f"/proc/self/task/{LOOP_TID}/schedstat").read_text().split())
    status = Path(f"/proc/self/task/{LOOP_TID}/status").read_text()
    vol = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    invol = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
    return cpu, wait, vol, invol


if "--on-loop" in args:  # the producer's worker-thread calls made on the loop instead (an experiment)
    class _OnLoop:
        def __getattr__(self, name):
            return getattr(asyncio, name)

        @staticmethod
        async def to_thread(function, *a, **k):
            return function(*a, **k)

    push.asyncio = _OnLoop()


CLIENTS = [0]  # the simulated ztunnels' process


if "--clients-own-session" in args:  # the clients in a session of their own, as before round nine (A/B)
    _exec = asyncio.create_subprocess_exec

    async def own_session(*a, **k):
        k.pop("process_group", None)
        return await _exec(*a, start_new_session=True, **k)

    asyncio.create_subprocess_exec = own_session


def schedstat() -> dict[int, tuple[str, int, int]]:
    """Each thread of this process: name, CPU ns, ns runnable but waiting for a core (and the
    simulated ztunnels' process, all its threads as one, under tid 0)."""
    out = {}
    clients = [0, 0]
    if CLIENTS[0]:
        for tid in os.listdir(f"/proc/{CLIENTS[0]}/task"):
            try:
                cpu, wait, _ = map(int, Path(f"/proc/{CLIENTS[0]}/task/{tid}/schedstat").read_text().split())
            except OSError:
                continue
            clients[0] += cpu; clients[1] += wait
        out[0] = ("ztunnels", *clients)
    # the machine's steal time (a virtual machine's CPUs not run by the host), 10 ms ticks, under tid -1
    out[-1] = ("steal", (scale._steal_ms() or 0) * 1_000_000, 0)
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            cpu, wait, _ = map(int, Path(f"/proc/self/task/{tid}/schedstat").read_text().split())
            if tid not in NAMES:
                NAMES.update((t.native_id, t.name) for t in threading.enumerate())
                NAMES.setdefault(tid, Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        except OSError:
            continue
        out[tid] = (NAMES[tid], cpu, wait)
    return out


def thread_deltas(before, after) -> dict[str, tuple[float, float]]:
    """Threads that ran between two schedstat readings: (CPU ms, ms runnable but waiting for a core)."""
    out = {}
    for tid, (name, cpu, wait) in after.items():
        if tid in before:
            dcpu, dwait = (cpu - before[tid][1]) / 1e6, (wait - before[tid][2]) / 1e6
            if dcpu > 0.05 or dwait > 0.05:
                out[f"{name}:{tid}"] = (round(dcpu, 2), round(dwait, 2))
    return out


def label(callback) -> str:
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return "task " + getattr(coro, "__qualname__", type(coro).__name__)
    return getattr(callback, "__qualname__", type(callback).__name__)


def ms(x: float) -> float:
    return round(x * 1000, 2)


def first(marks, what):
    return next((m for m in marks if m[1] == what), None)


def analyse(kind: str, own: str, plane, sent, records_from: int, t_call: float) -> dict:
    recs = [r for r in sent.records[records_from:] if r[3] is not None]
    t0 = recs[0][0] - recs[0][3]  # the debounce window's end, as push latency counts it
    last: dict[str, float] = {}
    for t, node, *_ in recs:
        last[node] = max(last.get(node, 0.0), t)
    worst_node, t_end = max(last.items(), key=lambda kv: kv[1])
    order = sorted(last.values())
    marks = P.marks
    m_start, m_end = first(marks, "model start"), first(marks, "model end")
    p_start, p_end = first(marks, "plan start"), first(marks, "plan end")
    s_start, s_end = first(marks, "store start"), first(marks, "store end")
    w_start, w_end = first(marks, "wake start"), first(marks, "wake end")
    out = {"kind": kind, "own": own, "worst": worst_node, "last_sent": ms(t_end - t0),
           "own_sent": ms(last.get(own, t0) - t0), "p50_sent": ms(order[len(order) // 2] - t0),
           "to_thread_model_start": ms(m_start[0] - t0), "model_wall": ms(m_end[0] - m_start[0]),
           "model_cpu": ms(m_end[2][1] - m_start[2][1]),
           "model_end_to_plan_start": ms(p_start[0] - m_end[0]),
           "model_end_to_update": ms(first(marks, "update")[0] - m_end[0]),
           "plan_wall": ms(p_end[0] - p_start[0]), "plan_cpu": ms(p_end[2][1] - p_start[2][1]),
           "plan_sys": ms(p_end[2][2][1] - p_start[2][2][1]), "plan_minflt": p_end[2][2][2] - p_start[2][2][2],
           "model_sys": ms(m_end[2][2][1] - m_start[2][2][1]), "model_minflt": m_end[2][2][2] - m_start[2][2][2],
           "plan_end_to_store": ms(s_start[0] - p_end[0]), "store": ms(s_end[0] - s_start[0]),
           "store_to_wake": ms(w_start[0] - s_end[0]), "wake": ms(w_end[0] - w_start[0]),
           "wake_end_to_last_sent": ms(t_end - w_end[0])}
    # the loop from the producer's result back on the loop (store start) to the last sent
    window = (s_start[0], t_end)
    hs = [h for h in P.handles if h[0] >= window[0] and h[1] <= window[1]]
    sel = [s for s in P.selects if s[0] >= window[0] and s[1] <= window[1]]
    out["loop_handles"] = len(hs)
    out["loop_wall_in_callbacks"] = ms(sum(h[1] - h[0] for h in hs))
    out["loop_cpu_in_callbacks"] = ms(sum(h[2] for h in hs))
    out["loop_epoll_sleep"] = ms(sum(s[1] - s[0] for s in sel))
    out["loop_epoll_calls"] = len(sel)
    span = window[1] - window[0]
    out["loop_span"] = ms(span)
    out["loop_other"] = ms(span - sum(h[1] - h[0] for h in hs) - sum(s[1] - s[0] for s in sel))
    lags = sorted(h[3] for h in hs if h[3] is not None)
    out["lag_p50_max"] = (ms(lags[len(lags) // 2]) if lags else None, ms(lags[-1]) if lags else None)
    # the loop while the worker thread ran (model, plan)
    busy = [h for h in P.handles if h[0] >= m_start[0] and h[1] <= p_end[0]]
    out["loop_during_threads_cpu"] = ms(sum(h[2] for h in busy))
    out["loop_during_threads_n"] = len(busy)
    out["gc"] = [(ms(a - t0), ms(b - a), g) for a, b, g in P.gcs if t0 <= a <= t_end]
    # the worst stream's own chain
    mine = [(w, ms(t - t0)) for t, w, d in marks if d == worst_node and w in ("woken", "written")]
    out["worst_chain"] = mine + [("sent", ms(t - t0)) for t, nd, *_ in recs if nd == worst_node]
    # the slowest callbacks in the window
    slow = sorted(hs, key=lambda h: h[1] - h[0], reverse=True)[:4]
    out["slowest_callbacks"] = [(label(h[4]), ms(h[1] - h[0]), ms(h[2])) for h in slow]
    acc = [a for a in P.accounts if a[1] == "wake end"][:1] + [a for a in P.accounts if a[1] == "own written"][-1:]
    if len(acc) == 2:
        (ta, _, a), (tb, _, b) = acc
        sleeping = sum(min(e, tb) - max(s_, ta) for s_, e, _n in P.selects if e > ta and s_ < tb)
        cpu, rq = (b[0] - a[0]) / 1e6, (b[1] - a[1]) / 1e6
        out["own_window"] = {"wall": ms(tb - ta), "cpu": round(cpu, 2), "runqueue": round(rq, 2),
                             "epoll": ms(sleeping), "other_sleep": round((tb - ta) * 1000 - cpu - rq - sleeping * 1000, 2),
                             "vol_switches": b[2] - a[2], "invol_switches": b[3] - a[3],
                             "sys": ms(b[5] - a[5]), "minflt": b[6] - a[6]}
    out["threads_to_store"] = thread_deltas(STATS["call"], STATS["store"])
    if "own written" in STATS:
        out["threads_send_window"] = thread_deltas(STATS["wake end"], STATS["own written"])
    out["threads_store_to_100ms"] = thread_deltas(STATS["store"], STATS["call+100ms"])
    out["t_call_to_t0"] = ms(t0 - t_call)
    return out


async def bench_sequence(params, shape, cluster, served, models, results) -> None:
    """``rounds`` rounds of the churn bench's changes (pod add, delete, unready, ready again, service
    add, policy change, each followed by its EDS check), as ``scale._events`` makes them, each traced."""
    order = iter([k for _ in range(rounds) for k in ("add", "delete", "unready", "ready", "service", "policy")])
    one_change = scale._one_change

    async def traced(model, plane, sent, records, connected, models_):
        kind = next(order)
        P.clear()
        STATS.clear()
        STATS["call"] = schedstat()
        asyncio.get_running_loop().call_later(0.1, lambda: STATS.__setitem__("call+100ms", schedstat()))
        OWN[0] = scale.node_name((len(results) // 6 * 7 + 3) % shape.nodes)
        start = len(sent.records)
        P.on = True
        t_call = mono()
        out = await one_change(model, plane, sent, records, connected, models_)
        P.on = False
        try:
            result = analyse(kind, OWN[0], plane, sent, start, t_call)
        except Exception as exc:  # (a change whose own-node marks are missing: a service added)
            result = {"kind": kind, "error": repr(exc)}
        result["model_ms"], result["producer_ms"] = round(out["model_ms"], 2), round(out["producer_ms"], 2)
        results.append(result)
        if kind in ("add", "delete"):
            print(result, flush=True)
        return out

    scale._one_change = traced
    try:
        plane, sent, records, clients, nodes = served.plane, served.sent, served.records, served.clients, served.nodes

        async def check() -> int:
            return await scale._eds_as_served(plane, clients, records, nodes)

        params = {**params, "rounds": rounds}
        await scale._events(params, shape, cluster, plane, sent, records, set(nodes), KIND_CONVERTERS, models, check)
    finally:
        scale._one_change = one_change


async def main() -> None:
    from zpilot.model.index import MeshIndex

    if "--switch" in args:
        sys.setswitchinterval(float(args[args.index("--switch") + 1]) / 1000)
    shape = Shape.reference()
    cluster, index, _ = scale._model(shape)
    params = {"layout": "linear", "shape": dataclasses.asdict(shape), "clients": shape.nodes, "xds": "sotw",
              "clients_nice": 19, "sync_timeout": 300}
    watch_selector(asyncio.get_running_loop())
    async with scale.serving(params, index) as served:
        plane, sent, records = served.plane, served.sent, served.records
        CLIENTS[0] = served.clients.pid

        models = scale._Models(MeshIndex, index)
        results = []
        if "--sequence" in args:  # the bench's own sequence of changes (scale._events), each traced
            await bench_sequence(params, shape, cluster, served, models, results)
            rounds_ = 0
        else:
            rounds_ = rounds
        for r in range(rounds_):
            node = (r * 7 + 3) % shape.nodes
            own = scale.node_name(node)
            pod = KIND_CONVERTERS["Pod"](extra_pod(shape, r, node))
            for kind, model in (("add", dataclasses.replace(cluster, workloads=cluster.workloads + (pod,))),
                                ("delete", cluster)):
                P.clear()
                start = len(sent.records)
                STATS.clear()
                STATS["call"] = schedstat()
                asyncio.get_running_loop().call_later(0.1, lambda: STATS.__setitem__("call+100ms", schedstat()))
                OWN[0] = own
                P.on = True
                t_call = mono()
                await scale._one_change(model, plane, sent, records, set(served.nodes), models)
                P.on = False
                result = analyse(kind, own, plane, sent, start, t_call)
                results.append(result)
                print(result, flush=True)
        results = [x for x in results if x["kind"] in ("add", "delete")]
        keys = [k for k, v in results[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for kind in ("add", "delete"):
            rs = [x for x in results if x["kind"] == kind]
            print(f"SUMMARY {kind} (median of {len(rs)}):",
                  {k: round(statistics.median(x[k] for x in rs), 2) for k in keys})


asyncio.run(main())

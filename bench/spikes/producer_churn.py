"""Spike (issue 13 at R): the CPU of the model build and of the producer for one pod added and deleted, in process.

``bench/scale.py``'s set-up (its ``_model`` and ``_Models``; the same pods on the same nodes as its
churn), a producer and a snapshot cache without a server or clients: the cold generation, then what
the producer pays ahead while idle, then N pods added and deleted. Each change's model build and
producer update are timed in CPU (``process_time``): the producer's worker-thread calls are run in
the calling thread here, so nothing else runs while it is measured and cProfile sees all of it.

    python3 bench/spikes/producer_churn.py [N]               # CPU ms per change, median and each
    python3 bench/spikes/producer_churn.py N --profile add   # cProfile over every round's pod add (or: delete, model)

CPU time on these shared cores moves by 40% from run to run with the others' load; instructions do
not. Each change's model build and update counted by callgrind, a file per call (the set-up runs
uninstrumented; ``--counted-call zpilot.xds.push:Producer.build`` counts that function's calls instead):

    valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no --toggle-collect=_operator_call \
        --dump-after=_operator_call "$(python3 -c 'import sys; print(sys.executable)')" \
        bench/spikes/producer_churn.py 3 --counted      # then: grep summary: callgrind.out.*.<n>

(valgrind lacks the SHA extensions: SHA-256 counts several times what it costs natively.)

Not a test and not the benchmark: run by hand, it asserts nothing; docs/scale.md quotes what it found.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import operator
import os
import pstats
import subprocess
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402

from zpilot.gcpause import pause  # noqa: E402
from zpilot.kube.convert_policy import KIND_CONVERTERS  # noqa: E402
from zpilot.synthetic import Shape, extra_pod  # noqa: E402


async def _in_this_thread(function, /, *args, **kwargs):
    """``asyncio.to_thread``, run in the calling thread: its CPU is this thread's, profiled whole."""
    return function(*args, **kwargs)


def _run(coroutine):
    """A coroutine that never waits (the worker-thread calls are this thread's), run to its end here."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the update waited for something")


def _count_calls_of(target: str) -> None:
    """Have every call of ``target`` ("module:Class.function") run inside operator.call."""
    import functools
    import importlib

    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    function = getattr(owner, name)

    @functools.wraps(function)
    def counted(*args, **kwargs):
        first = args[1] if path and len(args) > 1 else args[0] if args else None
        label = first if isinstance(first, str) else getattr(first, "name", None) or type(first).__name__  # never a whole input's repr
        print("COUNTED", qualname, label, flush=True)  # which call each file is
        return operator.call(function, *args, **kwargs)

    setattr(owner, name, counted)


def _low(values) -> float:
    """The mean of the lowest quarter: CPU time on a shared machine only ever grows with the load."""
    ordered = sorted(values)
    low = ordered[: max(1, len(ordered) // 4)]
    return sum(low) / len(low)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rounds", nargs="?", type=int, default=5)
    parser.add_argument("--profile", choices=("add", "delete", "model"))
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--counted", action="store_true",
                        help="run each change's model build and update inside operator.call, for valgrind --tool=callgrind"
                             " --instr-atstart=no --collect-atstart=no --toggle-collect=_operator_call"
                             " --dump-after=_operator_call: instructions, not time, in a file per call")
    parser.add_argument("--counted-call", metavar="MODULE:QUALNAME", action="append",
                        help="with --counted: count this function's calls instead (each its own file), e.g."
                             " zpilot.xds.push:Producer.build (the changes themselves run as usual); may be given"
                             " several times (functions that do not call each other: each call is one file)")
    parser.add_argument("--callers", help="with --profile: print the callers of the functions matching this")
    args = parser.parse_args()

    from zpilot.model.index import MeshIndex
    from zpilot.translators import IncrementalTranslator, TranslateOptions
    from zpilot.xds.push import Producer
    from zpilot.xds.snapshot_cache import SnapshotCache

    shape = Shape.reference()
    cluster, index, _ = scale._model(shape)
    producer = Producer(SnapshotCache(), translate=IncrementalTranslator(TranslateOptions(layout="linear")),
                        freeze_first_model=True)  # as zpilot serve and the benchmark
    asyncio.to_thread = _in_this_thread  # type: ignore[assignment]
    await producer.update(index)
    await producer.prepare_pending()
    models = scale._Models(MeshIndex, index)
    counted_whole = args.counted and not args.counted_call
    for target in args.counted_call or ():
        _count_calls_of(target)
    if args.counted:  # under valgrind --instr-atstart=no: instrumented from here on (the set-up runs 10x faster)
        subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=False, capture_output=True)
    times: dict[str, list[tuple[float, float]]] = {"add": [], "delete": []}
    profiles = {"add": cProfile.Profile(), "delete": cProfile.Profile()}
    for r in range(args.rounds):
        node = (r * 7 + 3) % shape.nodes
        pod = KIND_CONVERTERS["Pod"](extra_pod(shape, r, node))
        for kind, model in (("add", dataclasses.replace(cluster, workloads=cluster.workloads + (pod,))),
                            ("delete", cluster)):
            gc.collect()
            profile = profiles.get(kind if args.profile != "model" else "add") if args.profile else None
            end_pause = pause()  # as the benchmark: no collection from the build on
            try:
                c0 = time.process_time()
                if profile is not None and args.profile == "model":
                    profile.enable()
                built = operator.call(models.build, model) if counted_whole else models.build(model)
                if profile is not None:
                    profile.disable()
                c1 = time.process_time()
                if profile is not None and args.profile == kind:
                    profile.enable()
                update = producer.update(built, changed_at=time.monotonic())
                report = operator.call(_run, update) if counted_whole else await update
                if profile is not None:
                    profile.disable()
                c2 = time.process_time()
            finally:
                end_pause()
            await producer.prepare_pending()  # what the benchmark's idle second between changes lets it pay ahead
            times[kind].append(((c1 - c0) * 1000, (c2 - c1) * 1000))
            print(f"{kind:<6} node-{node}: model {(c1 - c0) * 1000:5.1f} ms cpu, producer {(c2 - c1) * 1000:5.1f} ms cpu"
                  f" (translated {report.translated}, endpoints only {len(report.endpoints_only)})", flush=True)
    if args.profile:
        profile = profiles["delete" if args.profile == "delete" else "add"]
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
        if args.callers:
            pstats.Stats(profile).print_callers(args.callers)
    for kind, values in times.items():
        print(f"SUMMARY {kind}: model median {statistics.median(v[0] for v in values):.2f} ms,"
              f" producer median {statistics.median(v[1] for v in values):.2f} ms cpu"
              f" (min {min(v[1] for v in values):.2f}, lowest quarter's mean {_low(v[1] for v in values):.2f};"
              f" model's {_low(v[0] for v in values):.2f}) over {len(values)}")


if __name__ == "__main__":
    asyncio.run(main())

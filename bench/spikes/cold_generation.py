"""The cold generation of every node at R (``bench/scale.py``'s ``child_cold``), in process: its CPU, a
cProfile of it, or its instructions under callgrind.

    python3 bench/spikes/cold_generation.py [--nodes N] [--rounds K]   # CPU-s of each cold generation
    python3 bench/spikes/cold_generation.py --profile [--top 50]       # cProfile of one

CPU time on these shared cores moves by 20-40% from run to run with the others' load; instructions do
not. The cold generation alone counted by callgrind (the model's build runs uninstrumented):

    valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no --toggle-collect=_operator_call \
        "$(python3 -c 'import sys; print(sys.executable)')" bench/spikes/cold_generation.py --counted

(4-7 minutes at R on this shared host; ``--nodes 20`` is about a fifth of the work, 2-4 minutes).
Each round is a fresh producer and translator on the same model, as ``zpilot serve``'s first model; the
worker-thread calls run in the calling thread so that their CPU is counted and profiled whole.

Not a test and not the benchmark: run by hand, it asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import operator
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402

from zpilot.synthetic import Shape  # noqa: E402
from producer_churn import _in_this_thread, _run  # noqa: E402  (the producer's update run inline, as there)


def _cold(index, layout: str):
    from zpilot.translators import IncrementalTranslator, TranslateOptions
    from zpilot.xds.push import Producer
    from zpilot.xds.snapshot_cache import SnapshotCache

    cache = SnapshotCache()
    producer = Producer(cache, translate=IncrementalTranslator(TranslateOptions(layout=layout)))
    report = _run(producer.update(index))
    return cache, producer, report


def main() -> None:
    import asyncio

    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--layout", default="linear")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=50)
    parser.add_argument("--callers", help="with --profile: print the callers of the functions matching this")
    parser.add_argument("--counted", action="store_true",
                        help="run the cold generation inside operator.call, instrumented from its start (callgrind)")
    args = parser.parse_args()

    asyncio.to_thread = _in_this_thread  # type: ignore[assignment]
    import zpilot.translators  # noqa: F401  (what child_cold imports before it starts timing)
    import zpilot.xds.push  # noqa: F401
    import zpilot.xds.snapshot_cache  # noqa: F401
    shape = Shape.reference().scaled(args.nodes)
    _, index, _ = scale._model(shape)
    for r in range(args.rounds):
        gc.collect()
        if args.counted:
            subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=False, capture_output=True)
            cache, producer, report = operator.call(_cold, index, args.layout)
            subprocess.run(["callgrind_control", "--instr=off", str(os.getpid())], check=False, capture_output=True)
        elif args.profile:
            profile = cProfile.Profile()
            profile.enable()
            cache, producer, report = _cold(index, args.layout)
            profile.disable()
        else:
            c0 = time.process_time()
            cache, producer, report = _cold(index, args.layout)
            print(f"cold {r}: {time.process_time() - c0:.3f} CPU-s, {len(cache.nodes())} nodes, "
                  f"{len(report.failed)} failed", flush=True)
        del cache, producer, report
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
        if args.callers:
            pstats.Stats(profile).print_callers(args.callers)


if __name__ == "__main__":
    main()

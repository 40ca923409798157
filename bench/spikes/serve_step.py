"""Spike (issue 13, round nine): the serving loop's own work per stream for a pod change at R, without gRPC.

The benchmark's model at R (``bench/scale.py``), its control plane's cache and observers (metrics,
sync status), and 100 real ``SotwStream``/``DeltaStream`` objects driven by ``bench/ztunnels.py``'s
client logic, in this process: each stream writes to a context that only keeps the bytes, and each
client's requests (its ACKs) are fed back to its stream as gRPC would. So what is measured is ours
alone: the loop CPU (``thread_time``) of every stream's ``respond`` for the change (finding what is
due, building the response, booking it, reporting it), and of decoding and handling the ACKs that
answer it. gRPC's own write and read paths are not in it (``bench/spikes/ack_cost.py`` measures
those, over real gRPC).

    python3 bench/spikes/serve_step.py sotw|delta [N changes, default 10] [--profile]

Not a test and not the benchmark.
"""
import asyncio, dataclasses, statistics, sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import scale
import ztunnels
from zpilot.kube.convert_policy import KIND_CONVERTERS
from zpilot.synthetic import extra_pod

args = sys.argv[1:]
profile = None
if "--profile" in args:
    import cProfile, pstats
    args.remove("--profile"); profile = cProfile.Profile()
profile_acks = "--profile-sends" not in args  # profile the sending alone
if not profile_acks: args.remove("--profile-sends")
own_only = "--profile-own" in args  # profile the pod's own node's stream alone
if own_only: args.remove("--profile-own"); profile_acks = False
mode = args[0]; n = int(args[1]) if len(args) > 1 else 10


class Context:
    """What a stream writes to: the bytes, kept for its client."""
    def __init__(self): self.out = []
    async def write(self, data): self.out.append(data)


async def main():
    from zpilot.model.index import MeshIndex
    from zpilot.xds.auth import Principal
    from zpilot.xds.delta import DeltaStream
    from zpilot.xds.sotw import SotwStream
    from zpilot.synthetic import Shape; shape = Shape.reference()
    cluster, index, _ = scale._model(shape)
    plane = scale.churn_plane("linear")
    await plane.update(index)
    ads = plane.ads
    stream_class, client_class = (DeltaStream, ztunnels.DeltaZtunnel) if mode == "delta" else (SotwStream, ztunnels.SotwZtunnel)
    pairs = []
    for i in range(100):
        stream = stream_class(plane.cache, ads.observer, ads._stream_options, "bench", principal=Principal(None, "bench"))
        stream._context = Context()
        client = client_class(None, scale.node_name(i))
        client.start()
        pairs.append((stream, client))

    def deliver(stream, client):
        """The client's queued requests to its stream; True when one needs an answer."""
        asked = False
        while not client.requests.empty():
            raw = client.requests.get_nowait().SerializeToString()
            request = stream.decode(raw)
            if stream.info is None:
                stream._open(request)
            asked |= stream.handle(request)
        return asked

    def receive(stream, client):
        for raw in stream._context.out:
            client.handle(client.response_type.FromString(raw), {})
        stream._context.out.clear()

    async def settle():
        """Until no stream has anything to send: the first sync, and each change's answers."""
        busy = True
        while busy:
            busy = False
            for stream, client in pairs:
                deliver(stream, client)
                await stream.respond(stream.snapshot(), stream._snapshot_changed)
                stream._snapshot_changed = False
                if stream._context.out:
                    busy = True
                    receive(stream, client)
            ads.push_burst._due.clear(); ads.push_burst._finish()
    await settle()
    models = scale._Models(MeshIndex, index)
    send_ms, ack_ms, responses, acks, per_stream, per_ack, own_stream, own_kind = [], [], [], [], [], [], [], []
    for r in range(n):
        node = (r * 7 + 3) % shape.nodes
        pod = KIND_CONVERTERS["Pod"](extra_pod(shape, r, node))
        for kind, model in (("add", dataclasses.replace(cluster, workloads=cluster.workloads + (pod,))), ("del", cluster)):
            await plane.update(await asyncio.to_thread(models.build, model))
            woken = [(s, c) for s, c in pairs if s._snapshot_changed]
            if profile and not own_only: profile.enable()
            c0 = time.thread_time()
            for stream, client in woken:  # as the send loop: each woken stream sends what is due
                own = client.node == scale.node_name(node)
                if profile and own_only and own: profile.enable()
                s0 = time.thread_time()
                stream._snapshot_changed = False
                await stream.respond(stream.snapshot(), True)
                ads.push_burst.end(stream)
                if own:
                    own_stream.append((time.thread_time() - s0) * 1e6); own_kind.append(kind)
                else:
                    per_stream.append((time.thread_time() - s0) * 1e6)
                if profile and own_only and own: profile.disable()
            c1 = time.thread_time()
            if profile and not own_only: profile.disable()
            count = 0
            for stream, client in woken:
                count += len(stream._context.out)
                receive(stream, client)
            queued = [(s, c, [q.SerializeToString() for q in c.requests._queue]) for s, c in woken]
            for s, c in woken: c.requests._queue.clear()
            if profile and profile_acks: profile.enable()
            c2 = time.thread_time()
            asked = 0
            for stream, client, raws in queued:  # the ACKs, as each stream's reader
                for raw in raws:
                    a0 = time.thread_time()
                    asked += stream.handle(stream.decode(raw))
                    per_ack.append((time.thread_time() - a0) * 1e6)
            c3 = time.thread_time()
            if profile: profile.disable()
            assert not asked, "an ACK asked for an answer"
            send_ms.append((c1 - c0) * 1000); ack_ms.append((c3 - c2) * 1000)
            responses.append(count); acks.append(sum(len(raws) for *_, raws in queued))
            await settle()
    med = lambda v: round(statistics.median(v), 2)
    print(f"SUMMARY {mode}: per change {med(responses)} responses, {med(acks)} ACKs; loop CPU of ours, median of"
          f" {len(send_ms)} changes (min): sending {med(send_ms)} ms ({round(min(send_ms), 2)}),"
          f" ACKs {med(ack_ms)} ms ({round(min(ack_ms), 2)})")
    print(f"SUMMARY {mode}: the pod's own node's respond (CDS, EDS, LDS), median {med(own_stream)} us;"
          f" pod added {[round(x) for x, k in zip(own_stream, own_kind) if k == 'add']}, deleted {[round(x) for x, k in zip(own_stream, own_kind) if k == 'del']}")
    print(f"SUMMARY {mode}: one other stream's respond, median {med(per_stream)} us (p90 {round(sorted(per_stream)[len(per_stream) * 9 // 10], 1)});"
          f" one ACK decoded and handled, median {med(per_ack)} us (p90 {round(sorted(per_ack)[len(per_ack) * 9 // 10], 1)})")
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        if own_only: pstats.Stats(profile).print_callees("respond|_send")
asyncio.run(main())

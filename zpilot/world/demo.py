"""What ``zpilot demo`` prints: scenario 1 (sleep -> productpage's VIP, across nodes) in a live
world, hop by hop with the values observed, and whether ``zpilot explain`` agrees."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .. import contract
from ..explain import FACT_KEYS, explain, load_mesh
from .builder import World
from .observe import Observation, observe_request

#: (title, fact keys) per hop, in the order the article walks them; titles are formatted with the
#: source and destination node and the HBONE port.
HOPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("node {src_node}: the meshed pod's TCP is marked and policy-routed into the outbound tunnel",
     ("mark", "ip_rule", "route_table", "tunnel_device")),
    ("ztunnel {src_node}: TPROXY hands it to Envoy", ("tproxy_port",)),
    ("ztunnel {src_node}: listener, matcher, filter chain, cluster, endpoint",
     ("listener", "matcher_path", "filter_chain", "cluster", "endpoint", "response_flags")),
    ("ztunnel {src_node}: internal listener opens the HBONE tunnel (HTTP/2 CONNECT over mTLS)",
     ("internal_listener", "tunnel_cluster", "tunnel_dial")),
    ("node {dst_node}: the tunnel to the pod's {hbone} is routed into the inbound tunnel",
     ("dest_ip_rule", "dest_route_table", "dest_tunnel_device")),
    ("ztunnel {dst_node}: TPROXY to {hbone}", ("dest_tproxy_port",)),
    ("ztunnel {dst_node}: mTLS peer, CONNECT, inbound chain, virtual_inbound",
     ("inbound_listener", "inbound_chain", "peer_identity", "server_identity", "connect_authority",
      "inbound_cluster", "destination")),
    ("pod: the request arrives", ("pod",)),
)


@dataclass
class DemoResult:
    observation: Observation
    explained: dict[str, str]
    differences: dict[str, tuple[str | None, str | None]]  # key -> (explain, observed)

    @property
    def ok(self) -> bool:
        return self.observation.trace.ok and not self.differences


def compare(explained: dict[str, str], observed: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    return {k: (explained.get(k), observed.get(k)) for k in FACT_KEYS if explained.get(k) != observed.get(k)}


def run_scenario_1(world: World, source: str = "sleep", service: str = "productpage") -> DemoResult:
    svc = world.spec.service(service)
    return observe_and_explain(world, source, svc.cluster_ip, svc.ports[0][1])


def observe_and_explain(world: World, source: str, host: str, port: int) -> DemoResult:
    """Observe one request hop by hop and compute its path with explain, for comparison."""
    obs = observe_request(world, source, host, port)
    out = obs.outbound
    if out:  # the matcher's inputs, as the listener saw them: destination port, source IP, destination IP
        dst_ip, _, dst_port = out.get("downstream_local", "").rpartition(":")
        src_ip = out.get("downstream_remote", "").rpartition(":")[0]
        obs.facts["matcher_path"] = (f"dport={dst_port} ({contract.PORT_OUTBOUND}? no) -> src={src_ip}"
                                     f" -> dst={dst_ip} -> dport={dst_port}")
        obs.evidence["matcher_path"] = "the listener's downstream addresses in the access log"
    paths = explain(load_mesh(world.manifests, trust_domain=world.spec.trust_domain, layout=world.options.layout),
                    source, host, port)
    explained = paths[0].facts if len(paths) == 1 else {}
    return DemoResult(obs, explained, compare(explained, obs.facts))


def render(world: World, result: DemoResult, emit: Callable[[str], None] = print) -> None:
    trace = result.observation.trace
    src = world.spec.pod(trace.source)
    dest = world.spec.pod(result.observation.facts.get("pod", "productpage")) if result.observation.facts.get("pod") else None
    emit(f"Scenario 1: {src.name} ({src.ip}, node {src.node}) -> {trace.target}")
    if trace.ok and trace.exchange is not None:
        seen = trace.seen_by_pod
        emit(f"  HTTP GET -> {trace.exchange.status} from {seen.get('pod')} in {trace.exchange.total_ms:.1f} ms;"
             f" the client connected from {trace.client_local}, the pod saw peer {seen.get('peer')}")
    else:
        emit(f"  the request FAILED: {trace.error}")
    emit("")
    facts, evidence = result.observation.facts, result.observation.evidence
    dst_node = dest.node.upper() if dest else "?"
    for n, (title, keys) in enumerate(HOPS, 1):
        emit(f"  {n}. " + title.format(src_node=src.node.upper(), dst_node=dst_node, hbone=contract.PORT_HBONE))
        for key in keys:
            value = facts.get(key, "(not observed)")
            emit(f"       {key:18} {value}")
            if key in evidence and evidence[key] not in ("ztunnel a access log", "ztunnel b access log"):
                emit(f"       {'':18} ^ {evidence[key]}")
    emit("")
    if not result.explained:
        emit("zpilot explain: no single path to compare with")
    elif result.differences:
        emit(f"zpilot explain DISAGREES on {len(result.differences)} of {len(FACT_KEYS)} facts:")
        for key, (want, got) in result.differences.items():
            emit(f"  {key}: explain {want!r}, observed {got!r}")
    else:
        emit(f"zpilot explain (config + CNI plan, no traffic) agrees on all {len(FACT_KEYS)} facts.")


def demo(emit: Callable[[str], None] = print, *, keep_workdir: bool = False, layout: str = contract.DEFAULT_LAYOUT,
         scenario: Callable[[World, Callable[[str], None]], bool] | None = None) -> int:
    """Build the world (its ztunnels on the outbound ``layout``), run scenario 1 (or ``scenario``, which
    prints itself and says whether all went as expected: the policy scenario of
    :mod:`zpilot.world.demo_policy`), tear everything down. Exit status 0 on success."""
    from .builder import WorldOptions

    emit("zpilot demo: building the world (2 nodes, their pods and ztunnels, in network namespaces) ...")
    started = time.monotonic()
    with World(options=WorldOptions(keep_workdir=keep_workdir, layout=layout)) as world:
        emit(f"  built in {time.monotonic() - started:.1f} s: namespaces {world.prefix}-*, "
             f"zpilot serve in {world.cp_ns}, Envoy ztunnels in {', '.join(z.netns for z in world.ztunnels.values())}"
             " (ADS over mutual TLS, each with its node's certificate),"
             f" rules by zpilot cni run (one agent per node); logs in {world.dir}" + ("" if keep_workdir else " (removed at exit)"))
        emit("")
        if scenario is not None:
            ok = scenario(world, emit)
        else:
            result = run_scenario_1(world)
            render(world, result, emit)
            ok = result.ok
        emit("")
        emit("tearing the world down ...")
    left = world.leftovers()
    if left:
        emit("teardown left behind: " + ", ".join(left))
        return 1
    if keep_workdir:
        emit("done: none of the world's namespaces (and so none of its rules, routes, sets or devices) or"
             f" processes is left; its logs and manifests are kept in {world.dir}, its private keys are not.")
    else:
        emit("done: none of the world's namespaces (and so none of its rules, routes, sets or devices),"
             " processes or files is left.")
    return 0 if ok else 1

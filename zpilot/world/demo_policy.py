"""``zpilot demo --scenario policy``: istio/istio#41204's policy (ALLOW sleep to productpage's port 9080)
applied to a live world, then two requests through the service VIP: sleep's, which passes, and
details', which ztunnel B refuses. Each is printed hop by hop as observed, with B's verdict (its access
log names the policy, its RBAC counters count it) beside what ``zpilot explain`` computes from config."""

from __future__ import annotations

import re
from typing import Callable

from .. import contract
from ..explain import FACT_KEYS
from ..logs import counted
from .builder import World
from .demo import HOPS, DemoResult, observe_and_explain

POLICY_FILE = "demo-policy"
POLICY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "productpage-from-sleep", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "productpage"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                   "to": [{"operation": {"ports": ["9080"]}}]}],
    },
}
#: The stat B counts a stream no ALLOW policy matched under.
DENIED_STAT = "http.inbound_hcm.rbac.allow.denied"
#: What a refused request leaves unobserved (no upstream connection, no pod): not compared.
NOT_REACHED = ("inbound_cluster", "destination", "pod")
_MATCHED = re.compile(r"^rbac_access_denied_matched_policy\[(.*)\]$")


def observed_verdict(result: DemoResult) -> tuple[str, str | None, str]:
    """(allowed/denied, the DENY policy that matched if any, evidence) from B's CONNECT log line."""
    trace = result.observation.trace
    entries = [e for node in trace.entries for e in trace.at(node, log=contract.INBOUND_LISTENER, method="CONNECT")]
    if not entries:
        return "(not observed)", None, "no CONNECT reached a destination ztunnel"
    details = entries[0].get("response_code_details") or ""
    m = _MATCHED.match(details)
    if m is None:
        return "allowed", None, f"response_code_details {details}"
    return "denied", None if m.group(1) == "none" else m.group(1), f"response_code_details {details}"


def compare(result: DemoResult, verdict: str) -> dict[str, tuple[str | None, str | None]]:
    keys = [k for k in FACT_KEYS if not (verdict == "denied" and k in NOT_REACHED)]
    diff = {k: (result.explained.get(k), result.observation.facts.get(k)) for k in keys
            if result.explained.get(k) != result.observation.facts.get(k)}
    if result.explained.get("verdict") != verdict:
        diff["verdict"] = (result.explained.get("verdict"), verdict)
    return diff


def render_request(world: World, title: str, result: DemoResult, emit: Callable[[str], None]) -> bool:
    trace, facts = result.observation.trace, result.observation.facts
    src = world.spec.pod(trace.source)
    verdict, policy, evidence = observed_verdict(result)
    emit(f"{title}: {src.name} ({src.ip}, node {src.node}) -> {trace.target}")
    if trace.ok and trace.exchange is not None:
        emit(f"  HTTP GET -> {trace.exchange.status} from {trace.seen_by_pod.get('pod')}")
    else:
        emit(f"  the request failed: {trace.error}")
    dst_node = "B"
    for n, (hop_title, keys) in enumerate(HOPS, 1):
        shown = [k for k in keys if not (verdict == "denied" and k in NOT_REACHED)]
        if not shown:
            continue
        emit(f"  {n}. " + hop_title.format(src_node=src.node.upper(), dst_node=dst_node, hbone=contract.PORT_HBONE))
        for key in shown:
            emit(f"       {key:18} {facts.get(key, '(not observed)')}")
    emit(f"  => ztunnel B: {verdict}" + (f" by {policy}" if policy else "") + f"   ({evidence})")
    emit(f"     zpilot explain: {result.explained.get('verdict', '?')}"
         + (f" by {result.explained['policy']}" if result.explained.get("policy") else ""))
    differences = compare(result, verdict)
    if differences:
        emit(f"  zpilot explain DISAGREES on {counted(len(differences), 'fact')}:")
        for key, (want, got) in differences.items():
            emit(f"    {key}: explain {want!r}, observed {got!r}")
    else:
        emit("  zpilot explain agrees on every fact observed, and on the verdict.")
    emit("")
    return not differences


def run_policy_scenario(world: World, emit: Callable[[str], None] = print) -> bool:
    """Apply the policy, show an allowed and a refused request, remove the policy. True if all agreed."""
    svc = world.spec.service("productpage")
    vip, port = svc.cluster_ip, svc.ports[0][1]
    b = world.spec.pod("productpage").node
    emit("Applying istio/istio#41204's policy: ALLOW cluster.local/ns/default/sa/sleep to productpage's port 9080")
    world.write_manifest(POLICY_FILE, [POLICY], push_to=(b,))
    try:
        emit("  zpilot serve pushed it to node B only (productpage's node); B ACKed and drained the old chain.")
        emit("")
        allowed = observe_and_explain(world, "sleep", vip, port)
        ok = render_request(world, "Allowed", allowed, emit) and allowed.observation.trace.ok
        before = world.ztunnels[b].stats(f"^{re.escape(DENIED_STAT)}$").get(DENIED_STAT, 0)
        denied = observe_and_explain(world, "details", vip, port)
        ok &= render_request(world, "Refused", denied, emit) and not denied.observation.trace.ok
        after = world.ztunnels[b].stats(f"^{re.escape(DENIED_STAT)}$").get(DENIED_STAT, 0)
        emit(f"ztunnel B's counter {DENIED_STAT}: {before} -> {after}")
        ok &= after == before + 1
    finally:
        world.write_manifest(POLICY_FILE, None, push_to=(b,))
    return ok

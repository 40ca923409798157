"""L4 policy with real traffic (issue 14): AuthorizationPolicy and PeerAuthentication written into the
world's manifest directory, pushed by ``zpilot serve`` and enforced by the ztunnels' Envoys; each
verdict checked from the client's side, in the receiving ztunnel's access log and in its RBAC counters.

Every test removes what it applied (``policy`` fixture), so the rest of the package sees the world
without policies."""

from __future__ import annotations

import re
import time
from typing import Any, Iterator

import pytest

from zpilot import contract as names
from zpilot.world import scenarios

#: The receiving side is the same for both outbound layouts; what differs is how each tunnels (and how
#: it carries the client's address), so every scenario runs with both.
pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.envoy, pytest.mark.slow,
              pytest.mark.parametrize("world", ["article", "linear"], indirect=True)]

SLEEP_PRINCIPAL = "cluster.local/ns/default/sa/sleep"
PRODUCTPAGE_IP = "10.4.3.20"
DETAILS_IP = "10.4.4.7"
ALLOW_DENIED = "http.inbound_hcm.rbac.allow.denied"


def authorization_policy(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def peer_authentication(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


#: istio/istio#41204's policy: ALLOW sleep to port 9080 of productpage (the port inside the tunnel).
ALLOW_SLEEP_TO_9080 = authorization_policy("productpage-from-sleep", {
    "selector": {"matchLabels": {"app": "productpage"}},
    "action": "ALLOW",
    "rules": [{"from": [{"source": {"principals": [SLEEP_PRINCIPAL]}}], "to": [{"operation": {"ports": ["9080"]}}]}],
})


@pytest.fixture
def policy(world) -> Iterator:
    """``policy(name, docs, push_to)``: apply; every file applied is deleted again afterwards."""
    applied: dict[str, tuple[str, ...]] = {}

    def apply(name: str, docs: list[dict] | None, push_to: tuple[str, ...] = ("b",)) -> None:
        world.write_manifest(name, docs, push_to=push_to)
        if docs is not None:
            applied[name] = push_to
        else:
            applied.pop(name, None)

    yield apply
    for name, push_to in applied.items():
        world.write_manifest(name, None, push_to=push_to)


def counter(world, node: str, name: str) -> int:
    return world.ztunnels[node].stats(f"^{re.escape(name)}$").get(name, 0)


def test_allow_sleep_to_9080_istio_41204(world, policy) -> None:
    """sleep -> productpage:9080 passes; another identity (details) to 9080 and sleep to another port are
    refused per CONNECT stream, by B, on the port inside the tunnel; B's denied counter rises each time."""
    vip, port = scenarios.service_target(world, "productpage")
    policy("allow-sleep", [ALLOW_SLEEP_TO_9080])

    ok = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1})
    assert ok.ok, ok.error
    allowed = ok.one("b", log=names.INBOUND_LISTENER, method="CONNECT")
    assert allowed["authority"] == f"{PRODUCTPAGE_IP}:9080" and allowed["response_flags"] == "-"
    rule = "ns[default]-policy[productpage-from-sleep]-rule[0]"
    assert counter(world, "b", f"http.inbound_hcm.rbac.allow.policy.{rule}.allowed") >= 1

    before = counter(world, "b", ALLOW_DENIED)
    other = scenarios.request(world, "details", vip, port, expect_logs={"a": 2, "b": 1})
    assert not other.ok, "details (another identity) reached productpage:9080"
    refused = other.one("b", log=names.INBOUND_LISTENER, method="CONNECT")
    assert refused["peer_san"] == "spiffe://cluster.local/ns/default/sa/bookinfo-details"
    assert refused["response_code_details"] == "rbac_access_denied_matched_policy[none]", refused
    assert refused["upstream_host"] is None, "the refused stream was proxied to the pod"
    assert counter(world, "b", ALLOW_DENIED) == before + 1

    wrong_port = scenarios.request(world, "sleep", PRODUCTPAGE_IP, 9081, expect_logs={"a": 1, "b": 1})
    assert not wrong_port.ok
    refused = wrong_port.one("b", log=names.INBOUND_LISTENER, method="CONNECT")
    assert refused["authority"] == f"{PRODUCTPAGE_IP}:9081", refused
    assert refused["response_code_details"] == "rbac_access_denied_matched_policy[none]", refused
    assert counter(world, "b", ALLOW_DENIED) == before + 2

    # the pod-IP path is judged the same way (the 2022 design saw port 15008 here and refused 9080 too)
    direct = scenarios.request(world, "sleep", PRODUCTPAGE_IP, 9080, expect_logs={"a": 1, "b": 1})
    assert direct.ok, direct.error


def test_namespace_deny_overrides_allow(world, policy) -> None:
    """A namespace-wide DENY of sleep wins over the ALLOW of sleep: DENY is evaluated first."""
    vip, port = scenarios.service_target(world, "productpage")
    deny = authorization_policy("deny-sleep", {
        "action": "DENY", "rules": [{"from": [{"source": {"principals": [SLEEP_PRINCIPAL]}}]}],
    })
    # the namespace policy selects pods on both nodes: both are pushed
    policy("deny-before-allow", [ALLOW_SLEEP_TO_9080, deny], push_to=("a", "b"))
    denied_name = "http.inbound_hcm.rbac.deny.default.deny-sleep.denied"
    before = counter(world, "b", denied_name)
    trace = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1})
    assert not trace.ok
    refused = trace.one("b", log=names.INBOUND_LISTENER, method="CONNECT")
    assert refused["response_code_details"] == \
        "rbac_access_denied_matched_policy[ns[default]-policy[deny-sleep]-rule[0]]", refused
    assert counter(world, "b", denied_name) == before + 1


def test_no_policy_everything_flows(world, policy) -> None:
    """Apply the ALLOW and take it away: details reaches productpage again, with no restart."""
    vip, port = scenarios.service_target(world, "productpage")
    policy("allow-sleep", [ALLOW_SLEEP_TO_9080])
    assert not scenarios.request(world, "details", vip, port, expect_logs={"a": 2, "b": 1}).ok
    policy("allow-sleep", None)
    after = scenarios.request(world, "details", vip, port, expect_logs={"a": 2, "b": 1})
    assert after.ok, after.error


def test_apply_and_remove_take_effect_on_new_connections(world, policy) -> None:
    """Applying and removing a policy changes what the next new connection gets, as soon as the
    destination's ztunnel has the config; the time from the file's change to the first refused
    connection is printed (the debounce is 0.1 s: the issue asks for under the debounce plus a second)."""
    vip, port = scenarios.service_target(world, "productpage")
    deny_all = authorization_policy("deny-all", {"selector": {"matchLabels": {"app": "productpage"}},
                                                 "action": "DENY", "rules": [{}]})
    assert scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1}).ok
    started = time.monotonic()
    policy("deny-all", [deny_all])
    pushed = time.monotonic() - started
    assert not scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1}, settle=0).ok
    started = time.monotonic()
    policy("deny-all", None)
    removed = time.monotonic() - started
    assert scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1}, settle=0).ok
    print(f"policy applied -> in force at ztunnel B after {pushed:.2f} s; removed after {removed:.2f} s")


def test_a_policy_change_pushes_only_the_nodes_it_selects(world, policy) -> None:
    """productpage lives on node B: node A's config is not even re-sent."""
    a_before = world.config_version("a")
    policy("allow-sleep", [ALLOW_SLEEP_TO_9080], push_to=("b",))
    assert world.config_version("a") == a_before
    status = world.debug(f"/debug/syncz?node={world.spec.node('a').name}")
    assert status, "node A's ztunnel is connected"


def test_source_ip_is_the_client_pod_on_every_path(world, policy) -> None:
    """ipBlocks at the destination see the client pod's address, also through a service VIP (whose tunnel
    comes from ztunnel A's own address) and on the same node (15088): the source ztunnel names the client
    in x-forwarded-for."""
    sleep_ip = world.spec.pod("sleep").ip
    only_sleep = {"rules": [{"from": [{"source": {"ipBlocks": [f"{sleep_ip}/32"]}}]}]}
    policy("from-sleep-ip", [
        authorization_policy("productpage-from-sleep-ip", {"selector": {"matchLabels": {"app": "productpage"}}, **only_sleep}),
        authorization_policy("details-from-sleep-ip", {"selector": {"matchLabels": {"app": "details"}}, **only_sleep}),
    ], push_to=("a", "b"))
    vip, port = scenarios.service_target(world, "productpage")
    trace = scenarios.request(world, "sleep", vip, port, expect_logs={"a": 2, "b": 1})
    assert trace.ok, trace.error
    inbound = trace.one("b", log=names.INBOUND_LISTENER, method="CONNECT")
    assert inbound["downstream_remote"].rpartition(":")[0] == sleep_ip
    assert inbound["downstream_direct_remote"].rpartition(":")[0] == world.spec.ztunnel_on("a").ip  # the tunnel's peer
    assert not scenarios.request(world, "details", vip, port, expect_logs={"a": 2, "b": 1}).ok
    # same node: sleep and details on A, the tunnel redirected into A's own 15008
    dvip, dport = scenarios.service_target(world, "details")
    same = scenarios.request(world, "sleep", dvip, dport, expect_logs={"a": 3})
    assert same.ok, same.error
    assert same.one("a", log=names.INBOUND_LISTENER, method="CONNECT")["downstream_remote"].rpartition(":")[0] == sleep_ip


def test_strict_refuses_plaintext_and_a_port_exception_reopens_only_its_port(world, policy) -> None:
    """PeerAuthentication STRICT on productpage: httpbin (outside the mesh) is refused at 15006 while
    sleep through the tunnel still gets through; portLevelMtls PERMISSIVE on 9080 reopens 9080 only."""
    ip, port = scenarios.pod_target(world, "productpage")
    strict = peer_authentication("productpage-strict", {"selector": {"matchLabels": {"app": "productpage"}},
                                                        "mtls": {"mode": "STRICT"}})
    refused_name = "inbound_plaintext.strict.default.productpage-strict.rbac.denied"
    policy("strict", [strict])
    before = counter(world, "b", refused_name)
    plain = scenarios.request(world, "httpbin", ip, port, expect_logs={"b": 1})
    assert not plain.ok, "plaintext reached productpage under STRICT"
    entry = plain.one("b", log=names.INBOUND_PLAINTEXT_LISTENER, downstream_remote=plain.client_local)
    assert entry["upstream_host"] is None, "the refused connection was proxied to the pod"
    assert entry["termination_details"] == "rbac_access_denied_matched_policy[plaintext-refused]", entry
    assert counter(world, "b", refused_name) == before + 1
    meshed = scenarios.request(world, "sleep", ip, port, expect_logs={"a": 1, "b": 1})
    assert meshed.ok, meshed.error

    strict["spec"]["portLevelMtls"] = {"9080": {"mode": "PERMISSIVE"}}
    policy("strict", [strict])
    reopened = scenarios.request(world, "httpbin", ip, port, expect_logs={"b": 1})
    assert reopened.ok, reopened.error
    before = counter(world, "b", refused_name)
    other_port = scenarios.request(world, "httpbin", ip, 9081, expect_logs={"b": 1})
    assert not other_port.ok
    assert counter(world, "b", refused_name) == before + 1, "port 9081 was not refused by STRICT"


def test_demo_policy_scenario_agrees_with_explain(world) -> None:
    """``zpilot demo --scenario policy``: the allowed and the refused request, observed hop by hop, agree
    with ``zpilot explain`` on every fact and on the verdict; B counted the refusal; the policy is removed."""
    from zpilot.world.demo_policy import run_policy_scenario

    lines: list[str] = []
    assert run_policy_scenario(world, lines.append), "\n".join(lines)
    text = "\n".join(lines)
    assert "=> ztunnel B: denied   (response_code_details rbac_access_denied_matched_policy[none])" in text
    assert not (world.manifests / "demo-policy.yaml").exists()

"""security.istio.io objects -> model: both API versions, every L4 field, the L7 ones recorded by name,
and what Istio's validation refuses refused with the field named (the object is then skipped)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from zpilot.kube.convert import InvalidObject
from zpilot.kube.convert_policy import authorization_policy_from, peer_authentication_from
from zpilot.kube.manifests import load_manifests
from zpilot.model.policy import Action, MtlsMode


def policy(spec: Any, version: str = "security.istio.io/v1", **meta: str) -> dict[str, Any]:
    return {"apiVersion": version, "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "mesh", **meta}, "spec": spec}


@pytest.mark.parametrize("version", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_every_l4_field(version: str) -> None:
    p = authorization_policy_from(policy({
        "selector": {"matchLabels": {"app": "web"}},
        "action": "DENY",
        "rules": [{
            "from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"], "notPrincipals": ["*/sa/x"],
                                 "namespaces": ["a"], "notNamespaces": ["b*"], "ipBlocks": ["10.0.0.0/8"],
                                 "notIpBlocks": ["10.1.2.3"], "requestPrincipals": ["*"]}},
                     {"source": {"serviceAccounts": ["b", "c/d"], "notServiceAccounts": ["e"]}}],
            "to": [{"operation": {"ports": ["80", 8080], "notPorts": ["22"], "methods": ["GET"]}}],
            "when": [{"key": "source.ip", "values": ["10.0.0.1"]}, {"key": "request.auth.claims[iss]", "values": ["x"]}],
        }],
    }, version, creationTimestamp="2024-01-01T00:00:00Z"))
    assert p.action is Action.DENY and dict(p.selector) == {"app": "web"} and p.created == "2024-01-01T00:00:00Z"
    rule = p.rules[0]
    first, second = rule.sources
    assert first.principals == ("cluster.local/ns/a/sa/b",) and first.not_namespaces == ("b*",)
    assert first.ip_blocks == ("10.0.0.0/8",) and first.not_ip_blocks == ("10.1.2.3",) and first.l7 == ("requestPrincipals",)
    assert second.service_accounts == ("b", "c/d") and second.not_service_accounts == ("e",)
    assert rule.operations[0].ports == (80, 8080) and rule.operations[0].not_ports == (22,)
    assert rule.l7_fields == ("requestPrincipals", "methods", "when request.auth.claims[iss]")


def test_defaults_spec_empty_and_empty_rule() -> None:
    nothing = authorization_policy_from(policy({}))
    assert nothing.action is Action.ALLOW and nothing.selector is None and nothing.rules == ()
    everything = authorization_policy_from(policy({"rules": [{}]}))
    assert len(everything.rules) == 1 and everything.rules[0].sources == () and not everything.rules[0].l7_fields
    # an empty matchLabels selects the whole namespace, like no selector
    assert authorization_policy_from(policy({"selector": {"matchLabels": {}}})).selector is None


def test_unsupported_but_valid_is_kept_for_the_index_to_report() -> None:
    assert authorization_policy_from(policy({"action": "AUDIT", "rules": [{}]})).action is Action.AUDIT
    assert authorization_policy_from(policy({"action": "CUSTOM", "provider": {"name": "x"}})).action is Action.CUSTOM
    refs = authorization_policy_from(policy({"targetRefs": [{"kind": "Gateway", "name": "wp"}]})).target_refs
    assert refs == ("Gateway/wp",)
    assert authorization_policy_from(policy({"targetRef": {"kind": "Service", "name": "web"}})).target_refs == ("Service/web",)


@pytest.mark.parametrize(
    "spec,reason",
    [
        ({"action": "REJECT"}, "spec.action 'REJECT' is not one of ALLOW, DENY, AUDIT, CUSTOM"),
        ({"action": "CUSTOM"}, "spec.provider goes with action CUSTOM"),
        ({"provider": {"name": "x"}}, "spec.provider goes with action CUSTOM"),
        ({"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"kind": "Service", "name": "x"}]}, "cannot both be set"),
        ({"selector": {"matchExpressions": []}}, "Istio selects by matchLabels only"),
        ({"rules": [{"from": [{"source": {}}]}]}, "spec.rules[0].from[0].source must not be empty"),
        ({"rules": [{"to": [{"operation": {}}]}]}, "spec.rules[0].to[0].operation must not be empty"),
        ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, "spec.rules[0].to[0].operation.ports 'http' is not a port"),
        ({"rules": [{"to": [{"operation": {"ports": ["70000"]}}]}]}, "is not a port number"),
        ({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}, "is neither an IP address nor a CIDR"),
        ({"rules": [{"from": [{"source": {"principals": [""]}}]}]}, "must hold non-empty strings"),
        ({"rules": [{"from": [{"source": {"principals": "a"}}]}]}, "must be a list"),
        ({"rules": [{"from": [{"source": {"serviceAccounts": ["a"], "principals": ["b"]}}]}]}, "serviceAccounts cannot be set with"),
        ({"rules": [{"from": [{"source": {"ipBlock": ["1.2.3.4"]}}]}]}, "has unknown fields ['ipBlock']"),
        ({"rules": [{"when": [{"key": "source.ip"}]}]}, "has neither values nor notValues"),
        ({"rules": [{"when": [{"key": "destination.port", "values": ["x"]}]}]}, "(destination.port) 'x' is not a port"),
        ({"rules": [{"when": [{"values": ["x"]}]}]}, "spec.rules[0].when[0].key is missing"),
        ({"rules": [{"form": []}]}, "spec.rules[0] has unknown fields ['form']"),
        ({"rules": [{}] * 257}, "spec.rules has 257 entries (at most 256)"),
        ({"rules": [{"from": [{"source": {"principals": ["x" * 1025]}}]}]}, "longer than 1024 characters"),
    ],
)
def test_what_istio_refuses_is_refused(spec: dict, reason: str) -> None:
    with pytest.raises(InvalidObject, match=None) as exc:
        authorization_policy_from(policy(spec))
    assert reason in str(exc.value)


def test_api_version_is_checked() -> None:
    with pytest.raises(InvalidObject, match="apiVersion 'security.istio.io/v1alpha1' is not one of"):
        authorization_policy_from(policy({}, "security.istio.io/v1alpha1"))


def peer(spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
            "metadata": {"name": "pa", "namespace": "mesh"}, "spec": spec}


def test_peer_authentication() -> None:
    pa = peer_authentication_from(peer({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"},
                                        "portLevelMtls": {"5432": {"mode": "PERMISSIVE"}, 9000: {}}}))
    assert pa.mode is MtlsMode.STRICT and dict(pa.port_modes) == {5432: MtlsMode.PERMISSIVE, 9000: MtlsMode.UNSET}
    assert peer_authentication_from(peer({})).mode is MtlsMode.UNSET
    with pytest.raises(InvalidObject, match="portLevelMtls needs a spec.selector"):
        peer_authentication_from(peer({"portLevelMtls": {"80": {"mode": "STRICT"}}}))
    with pytest.raises(InvalidObject, match="spec.mtls.mode 'OFF' is not one of"):
        peer_authentication_from(peer({"mtls": {"mode": "OFF"}}))


def test_manifest_source_reads_them_and_names_bad_ones(tmp_path) -> None:
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump_all([
        policy({"rules": [{}]}),
        {**policy({"action": "NOPE"}), "metadata": {"name": "bad", "namespace": "mesh"}},
        peer({"mtls": {"mode": "STRICT"}}),
    ]))
    loaded = load_manifests(tmp_path)
    assert [p.name for p in loaded.cluster.authorization_policies] == ["p"]
    assert [p.name for p in loaded.cluster.peer_authentications] == ["pa"]
    problems = [str(p) for p in loaded.problems]
    assert any("(AuthorizationPolicy mesh/bad): spec.action 'NOPE'" in p and "skipped" in p for p in problems), problems


def test_the_source_builds_the_model_with_the_root_namespace_it_is_given() -> None:
    from zpilot.kube.source import OriginContent, build_model
    from zpilot.model.objects import Namespace, Workload, frozen_labels

    pod = Workload("web", "shop", "u", ("10.0.0.1",), "n1", "web")
    deny = authorization_policy_from({**policy({"action": "DENY", "rules": [{}]}),
                                      "metadata": {"name": "all", "namespace": "mesh-root"}})
    objects = (("a", Namespace("shop", frozen_labels({"istio.io/dataplane-mode": "ambient"}))), ("a", pod), ("a", deny))
    content = OriginContent(objects=objects)
    assert build_model([("a", content, None)]).policies_for(pod).deny == ()
    assert build_model([("a", content, None)], root_namespace="mesh-root").policies_for(pod).deny == (deny,)

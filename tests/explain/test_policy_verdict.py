"""``zpilot explain`` shows the destination ztunnel's verdict: allowed or denied, by which policy and rule,
for the path it explains (computed from the generated RBAC, the way Envoy evaluates it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from zpilot.explain import explain, load_mesh, render

from ..layouts import LAYOUTS

ARTICLE = Path(__file__).resolve().parents[2] / "examples" / "article"
POLICIES = [
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "productpage-from-sleep", "namespace": "default"},
     "spec": {"selector": {"matchLabels": {"app": "productpage"}},
              "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                         "to": [{"operation": {"ports": ["9080"]}}]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "no-details", "namespace": "default"},
     "spec": {"selector": {"matchLabels": {"app": "details"}}, "action": "DENY",
              "rules": [{"from": [{"source": {"ipBlocks": ["10.4.4.19/32"]}}]}]}},
]


@pytest.fixture(scope="module", params=LAYOUTS)
def mesh(tmp_path_factory, request):
    """The article's cluster with the policies above, explained in each outbound layout: the verdict is
    the destination's, but what reaches it (the client's address above all) is the layout's doing."""
    directory = tmp_path_factory.mktemp("policy") / "cluster"
    shutil.copytree(ARTICLE, directory)
    (directory / "policy.yaml").write_text(yaml.safe_dump_all(POLICIES))
    return load_mesh(directory, layout=request.param)


def test_allowed_by_the_rule_that_matched(mesh) -> None:
    (path,) = explain(mesh, "sleep", "productpage.default", 9080)
    assert path.facts["verdict"] == "allowed"
    assert path.facts["policy"] == "ns[default]-policy[productpage-from-sleep]-rule[0]"
    assert path.outcome.startswith("delivered to Pod default/productpage")


def test_another_identity_is_denied_for_want_of_an_allow(mesh) -> None:
    (path,) = explain(mesh, "details", "productpage.default", 9080)
    assert path.facts["verdict"] == "denied" and "policy" not in path.facts
    assert path.outcome.endswith("denied: no ALLOW policy matches (http.inbound_hcm.rbac.allow.denied)")
    text = render([path])
    assert "in force for Pod default/productpage-v1-5586c4d4ff-qxz9f: ALLOW AuthorizationPolicy" in text


def test_the_port_is_the_one_inside_the_tunnel(mesh) -> None:
    (path,) = explain(mesh, "sleep", "10.4.3.20", 9081)
    assert path.facts["connect_authority"] == "10.4.3.20:9081" and path.facts["verdict"] == "denied"


def test_plaintext_from_outside_the_mesh(mesh) -> None:
    (path,) = explain(mesh, "httpbin", "10.4.3.20", 9080)
    assert path.facts["inbound_listener"] == "ztunnel_inbound_plaintext" and path.facts["verdict"] == "denied"
    assert "inbound_plaintext.allow.rbac.denied" in path.outcome


def test_source_ip_through_the_same_node_tunnel(mesh) -> None:
    """sleep and details share node A: the DENY of sleep's address applies through the 15088 tunnel."""
    (path,) = explain(mesh, "sleep", "details.default", 9080)
    assert path.facts["verdict"] == "denied"
    assert path.facts["policy"] == "ns[default]-policy[no-details]-rule[0]"


def test_no_policy_allows(mesh) -> None:
    (path,) = explain(mesh, "productpage", "details.default", 9080)
    assert path.facts["verdict"] == "allowed" and path.outcome.startswith("delivered")

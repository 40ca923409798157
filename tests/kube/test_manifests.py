"""The manifest-directory source: what it reads, and how it reports what it cannot."""

from __future__ import annotations

from pathlib import Path

from zpilot.kube.manifests import load_manifests

ARTICLE = Path(__file__).resolve().parents[2] / "examples" / "article"


def test_article_example_loads_cleanly() -> None:
    loaded = load_manifests(ARTICLE)
    assert len(loaded.problems) == 0, [str(p) for p in loaded.problems]
    names = {w.name for w in loaded.cluster.workloads}
    assert {"sleep-5644bdc767-2dfg7", "productpage-v1-5586c4d4ff-qxz9f", "ztunnel-rts54", "ztunnel-z4qmh"} <= names
    sleep = next(w for w in loaded.cluster.workloads if w.name.startswith("sleep"))
    assert (sleep.ips, sleep.uid, sleep.service_account) == (("10.4.4.19",), "85c8c34e-7ae3-4d29-9582-0819e2b10c69", "sleep")
    productpage = next(s for s in loaded.cluster.services if s.name == "productpage")
    assert productpage.cluster_ips == ("10.8.14.226",) and productpage.ports[0].name == "http"
    node_a = next(n for n in loaded.cluster.nodes if n.name.endswith("d10i"))
    assert (node_a.internal_ip, node_a.pod_cidrs) == ("10.168.15.222", ("10.4.4.0/24",))


def test_bad_documents_are_reported_with_file_index_and_name(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "kind: Namespace\nmetadata: {name: ok}\n---\n"
        "kind: Pod\nmetadata: {name: p, namespace: ok}\nspec: {}\n---\n"
        "kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: x}]}\n"
    )
    (tmp_path / "b.yml").write_text("kind: Pod\nmetadata: {name: [\n")
    (tmp_path / "notes.txt").write_text("not a manifest")
    loaded = load_manifests(tmp_path)
    messages = [str(p) for p in loaded.problems]
    assert [n.name for n in loaded.cluster.namespaces] == ["ok"]
    assert any("a.yaml doc 1 (Pod ok/p): spec.containers is missing or empty" in m for m in messages)
    assert any("a.yaml doc 2 (Service ?/s)" in m or "a.yaml doc 2 (Service s)" in m for m in messages)
    assert f"error: {tmp_path / 'b.yml'}: malformed YAML (line 3): did not find expected node content:" \
           " nothing read from it" in messages
    assert len(messages) == 3


def test_list_kind_and_json(tmp_path: Path) -> None:
    (tmp_path / "pods.json").write_text(
        '{"kind": "List", "items": [{"kind": "ServiceAccount", "metadata": {"name": "x", "namespace": "y"}}]}'
    )
    loaded = load_manifests(tmp_path)
    assert [(s.namespace, s.name) for s in loaded.cluster.service_accounts] == [("y", "x")]


def test_empty_directory_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    loaded = load_manifests(tmp_path)
    assert loaded.cluster.workloads == () and "no manifest files" in str(next(iter(loaded.problems)))


def test_a_file_cut_short_is_not_read_half_way(tmp_path: Path) -> None:
    """A file whose shape only truncation gives is unusable as a whole: none of its objects are used."""
    complete = (ARTICLE / "cluster.yaml").read_text()
    cases = {
        # kubectl's sorted keys: `kind: List` not written yet
        "sorted-list.yaml": "apiVersion: v1\nitems:\n- kind: Namespace\n  metadata: {name: a}\n",
        "cut-in-key.yaml": "kind: Namespace\nmetadata: {name: b}\n---\napiVe",  # a new document cut in its first key
        "cut-item.yaml": "kind: List\nitems:\n- kind: Namespace\n  metadata: {name: c}\n- apiVe",
        "empty.yaml": "# nothing yet\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "whole.yaml").write_text(complete)
    loaded = load_manifests(tmp_path)
    whole = load_manifests(ARTICLE / "cluster.yaml").cluster
    assert loaded.cluster.namespaces == whole.namespaces and loaded.cluster.nodes == whole.nodes
    reasons = {p.subject.rsplit("/", 1)[-1]: p.reason for p in loaded.problems}
    assert reasons["sorted-list.yaml"] == "doc 0 has no kind: the file looks incomplete: nothing read from it"
    assert reasons["cut-in-key.yaml"] == "doc 1 is a bare str: the file looks incomplete: nothing read from it"
    assert reasons["cut-item.yaml"] == "doc 0 item 1 is a bare str: the file looks incomplete: nothing read from it"
    assert reasons["empty.yaml"] == "empty: no documents: nothing read from it"

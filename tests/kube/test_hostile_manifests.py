"""Hostile or broken manifests: each is reported as a problem naming its file and document, in
bounded memory, with a short message; it never stops the rest of the directory from loading and
never takes the process down (issue 11, point 1)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zpilot.kube import bounded_yaml, manifests
from zpilot.kube.bounded_yaml import Unreadable, load_documents
from zpilot.kube.manifests import load_manifests
from zpilot.model.problems import BRIEF_LIMIT, MESSAGE_LIMIT, Problems, brief

REPO = Path(__file__).resolve().parents[2]
#: A namespace label aliased nine levels deep, nine times at each level: 9^9 strings behind 342 bytes.
ALIAS_BOMB = textwrap.dedent(
    """\
    kind: Namespace
    x:
     a: &a [l,l,l,l,l,l,l,l,l]
     b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
     c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
     d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
     e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
     f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
     g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
     h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
     i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    metadata: {name: x, labels: {k: *i}}
    """
)
GOOD = "kind: Namespace\nmetadata: {name: fine}\n"
#: Address space for a child that loads manifests: the old code reached 2.8 GB on the bomb.
CHILD_MEMORY = 768 << 20


def _load_in_bounded_child(root: Path) -> dict:
    """load_manifests(root) in a child process limited to CHILD_MEMORY of address space."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))

    code = (
        "import json, sys\n"
        "from zpilot.kube.manifests import load_manifests\n"
        "m = load_manifests(sys.argv[1])\n"
        "print(json.dumps({'problems': [str(p) for p in m.problems], 'namespaces': [n.name for n in m.cluster.namespaces]}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,  # a guard against a hang, not a performance figure
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def test_alias_bomb_is_refused_in_bounded_memory_with_a_short_message(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 400
    (tmp_path / "bomb.yaml").write_text(GOOD.replace("fine", "before") + "---\n" + ALIAS_BOMB)
    (tmp_path / "other.yaml").write_text(GOOD)
    result = _load_in_bounded_child(tmp_path)
    # a file that cannot be parsed whole is not used at all (it may be half written): only the other file
    assert result["namespaces"] == ["fine"]
    [problem] = result["problems"]
    assert "bomb.yaml: doc 1: refused: aliases expand to more than 100,000 nodes" in problem
    assert len(problem) < 300


def test_nesting_beyond_the_limit_is_refused_not_a_crash(tmp_path: Path) -> None:
    """libyaml's own composer recursed in C and crashed the process (SIGSEGV) at this depth."""
    depth = 100_000
    (tmp_path / "deep.yaml").write_text(GOOD + "---\nkind: Pod\nx: " + "[" * depth + "]" * depth + "\n")
    result = _load_in_bounded_child(tmp_path)
    assert result["namespaces"] == []  # the file cannot be parsed whole, so none of it is used
    [problem] = result["problems"]
    assert f"deep.yaml: doc 1: refused: nested more than {bounded_yaml.MAX_DEPTH} levels deep" in problem


def test_zpilot_render_reports_the_bomb_and_still_renders(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))

    proc = subprocess.run(
        [sys.executable, "-m", "zpilot.cli", "render", "--manifests", str(tmp_path), "--node", "n1"],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bomb.yaml: doc 0: refused: aliases expand" in proc.stderr
    assert max(len(line) for line in proc.stderr.splitlines()) < 300
    assert json.loads(proc.stdout)["configs"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a: &a [*a]\n", "refers to a node that contains it"),
        ("a: &a {b: *a}\n", "refers to a node that contains it"),
        ("a: *nowhere\n", "found undefined alias"),
    ],
)
def test_recursive_and_undefined_aliases_end_the_file(text: str, expected: str) -> None:
    [result] = list(load_documents(text + "---\nnext: 1\n"))
    assert isinstance(result, Unreadable) and result.last and expected in result.reason


def test_reasonable_aliases_still_load() -> None:
    text = "base: &b {app: x, tier: web}\nitems: [*b, *b, *b]\nmerged: {<<: *b, extra: y}\n"
    [doc] = list(load_documents(text))
    assert doc["items"] == [{"app": "x", "tier": "web"}] * 3
    assert doc["merged"] == {"app": "x", "tier": "web", "extra": "y"}


def test_expansion_just_under_the_limit_loads(monkeypatch) -> None:
    monkeypatch.setattr(bounded_yaml, "MAX_ALIAS_NODES", 10)
    # a 3-node list aliased 3 times: 9 nodes through aliases
    [doc] = list(load_documents("a: &a [1, 2]\nb: [*a, *a, *a]\n"))
    assert doc["b"] == [[1, 2]] * 3
    [refused] = list(load_documents("a: &a [1, 2]\nb: [*a, *a, *a, *a]\n"))
    assert isinstance(refused, Unreadable) and "more than 10 nodes" in refused.reason


@pytest.mark.parametrize(
    "bad,why",
    [
        ("n: " + "1" * 5000, "ValueError"),  # past Python's int conversion limit
        ("created: 2001-13-45", "ValueError"),  # a timestamp that is no date
        ("b: !!binary zzz", "base64"),
    ],
    ids=["huge-integer", "no-such-date", "bad-base64"],
)
def test_a_document_that_cannot_be_constructed_is_skipped_alone(tmp_path: Path, bad: str, why: str) -> None:
    """These raised ValueError out of load_manifests, which stopped ``zpilot serve`` from starting."""
    (tmp_path / "a.yaml").write_text(f"kind: Namespace\nmetadata: {{name: one}}\n{bad}\n---\n" + GOOD)
    loaded = load_manifests(tmp_path)
    assert [n.name for n in loaded.cluster.namespaces] == ["fine"]
    [problem] = [str(p) for p in loaded.problems]
    assert "a.yaml doc 0: malformed YAML" in problem and why in problem and "document skipped" in problem


@pytest.mark.parametrize(
    "doc,expected",
    [
        ("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, ports: 5}]}", "ports must be a list, not int"),
        ("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\nstatus: {conditions: 1}", "must be a list"),
        ("kind: Node\nmetadata: {name: n}\nstatus: {addresses: 7}", "status.addresses must be a list"),
        ("kind: Service\nmetadata: {name: s}\nspec: {ports: {port: 80}}", "spec.ports must be a list"),
        ("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}], hostNetwork: 'false'}", "hostNetwork"),
        ("kind: Pod\nmetadata: {name: p, uid: [1, 2]}\nspec: {containers: [{name: c}]}", "metadata.uid [1, 2]"),
    ],
    ids=["container-ports", "conditions", "addresses", "service-ports", "host-network", "uid"],
)
def test_fields_of_the_wrong_shape_are_problems_not_crashes(tmp_path: Path, doc: str, expected: str) -> None:
    (tmp_path / "a.yaml").write_text(doc + "\n---\n" + GOOD)
    loaded = load_manifests(tmp_path)
    assert [n.name for n in loaded.cluster.namespaces] == ["fine"]
    [problem] = [str(p) for p in loaded.problems]
    assert expected in problem and problem.endswith("skipped"), problem


def test_huge_values_are_quoted_briefly(tmp_path: Path) -> None:
    huge = "v" * 1_000_000
    (tmp_path / "a.yaml").write_text(
        f"kind: Frobnicator{huge}\nmetadata: {{name: x}}\n---\n"
        f"kind: Namespace\nmetadata: {{name: {huge}}}\n---\n"
        f"kind: Namespace\nmetadata: {{name: ok, labels: {{k: [{huge}]}}}}\n"
    )
    problems = [str(p) for p in load_manifests(tmp_path).problems]
    assert len(problems) == 3
    assert all(len(p) < 400 for p in problems), [len(p) for p in problems]


def test_file_size_and_object_count_limits(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(manifests, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(manifests, "MAX_DOCUMENTS", 3)
    (tmp_path / "big.yaml").write_text(GOOD + "#" * 1000 + "\n")
    items = ", ".join(f'{{"kind": "Namespace", "metadata": {{"name": "n{i}"}}}}' for i in range(5))
    (tmp_path / "list.json").write_text(f'{{"kind": "List", "items": [{items}]}}')
    loaded = load_manifests(tmp_path)
    assert [n.name for n in loaded.cluster.namespaces] == ["n0", "n1", "n2"]
    messages = sorted(str(p) for p in loaded.problems)
    assert messages == [
        f"error: {tmp_path}/big.yaml: larger than 1,000 bytes (split it into several files): nothing read from it",
        f"error: {tmp_path}/list.json doc 0 item 3: more than 3 objects in one file: the rest are skipped",
    ]


def test_brief_is_bounded_whatever_the_value() -> None:
    bomb: object = ["lol"] * 9
    for _ in range(9):
        bomb = [bomb] * 9
    for value in (bomb, "x" * 10**6, {str(i): i for i in range(10**5)}, 10**4000, object()):
        assert len(brief(value)) <= BRIEF_LIMIT


def test_problems_cap_what_a_caller_formats() -> None:
    problems = Problems()
    problems.error("s" * 5000, "r" * 5000)
    [p] = list(problems)
    assert len(p.subject) == len(p.reason) == MESSAGE_LIMIT and p.reason.endswith("...")

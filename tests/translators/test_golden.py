"""Golden tests: ``testdata/in/<case>`` manifests -> ``testdata/out/<case>/<node>.json``.

Regenerate after an intended change with ``ZPILOT_UPDATE_GOLDEN=1 pytest tests/translators``
and review the diff like code. The small per-feature goldens, easier to review, are in
``test_feature_golden.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zpilot.translators import TranslateOptions

from .render_util import ARTICLE, NODE_A, NODE_B, blank_certificates, dumps, golden, render, stable_dump

HERE = Path(__file__).parent / "testdata"
PRIVATE_KEY_B64 = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS"  # base64 of "-----BEGIN PRIVATE KEY"
#: (case, node) -> (manifests, outbound layout); a case whose name ends in "-linear" uses the linear layout
CASES = {
    ("article", NODE_A): (ARTICLE, "article"),
    ("article", NODE_B): (ARTICLE, "article"),
    ("edge-cases", "node-1"): (HERE / "in" / "edge-cases", "article"),
    ("article-linear", NODE_A): (ARTICLE, "linear"),
    ("article-linear", NODE_B): (ARTICLE, "linear"),
    ("edge-cases-linear", "node-1"): (HERE / "in" / "edge-cases", "linear"),
}


@pytest.mark.parametrize("case,node", list(CASES), ids=[f"{c}-{n[-4:]}" for c, n in CASES])
def test_render_matches_golden(case: str, node: str) -> None:
    manifests, layout = CASES[(case, node)]
    resources, secrets, problems = render(manifests, node, TranslateOptions(layout=layout))
    out_dir = HERE / "out" / case
    dump_file = out_dir / f"{node}.json"
    problems_file = out_dir / f"{node}.problems.txt"
    actual = dumps(stable_dump(resources, secrets))
    actual_problems = "".join(f"{p}\n" for p in problems).replace(str(HERE), "<testdata>")
    assert "PRIVATE KEY" not in actual and PRIVATE_KEY_B64 not in actual, "key material in a config dump"
    assert actual == golden(dump_file, actual), f"render differs from {dump_file} (ZPILOT_UPDATE_GOLDEN=1 to accept)"
    assert actual_problems == golden(problems_file, actual_problems)


def test_render_cli_matches_library() -> None:
    """The CLI prints the same dump (modulo certificates) as the library call the goldens use."""
    import json

    proc = subprocess.run(
        [sys.executable, "-m", "zpilot.cli", "render", "--manifests", str(ARTICLE), "--node", NODE_A],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = json.loads(proc.stdout)
    resources, secrets, _ = render(ARTICLE, NODE_A)
    expected = stable_dump(resources, secrets)
    keys = [
        e["secret"]["tls_certificate"]["private_key"]["inline_bytes"]
        for part in printed["configs"]
        for e in part.get("dynamic_active_secrets", [])
        if "tls_certificate" in e["secret"]
    ]
    assert keys and set(keys) == {"W3JlZGFjdGVkXQ=="}  # base64 of "[redacted]"
    blank_certificates(printed)
    assert printed == expected
    assert "opted out of the mesh" in proc.stderr

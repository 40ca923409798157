"""The layers hold: the import-linter contracts in pyproject.toml, run as the test command runs.

Each contract is its own test, so a failure names the rule broken, and its message is
import-linter's own report (which import, which line).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
#: The ``lint-imports`` command, run by the interpreter running the tests.
LINT_IMPORTS = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def lint_imports(contract_id: str, *, root: Path = REPO, config: Path | None = None) -> subprocess.CompletedProcess:
    """``lint-imports`` on the tree at ``root`` (not whatever copy of zpilot is installed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [*LINT_IMPORTS, "--no-cache", "--no-logo", "--contract", contract_id, str(config or root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def assert_kept(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"lint-imports exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert "BROKEN" not in proc.stdout and "0 broken" in proc.stdout, proc.stdout


@pytest.mark.parametrize("contract_id", [c["id"] for c in CONTRACTS])
def test_contract_is_kept(contract_id: str) -> None:
    assert_kept(lint_imports(contract_id))


def test_a_broken_layer_fails(tmp_path: Path) -> None:
    """The check can fail: in a copy of the tree where the model imports a translator, it does."""
    shutil.copytree(REPO / "zpilot", tmp_path / "zpilot", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with (tmp_path / "zpilot" / "model" / "objects.py").open("a") as f:
        f.write("\nfrom zpilot.translators import names  # noqa: E402\n")
    proc = lint_imports("model-below-all", root=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "zpilot.model.objects -> zpilot.translators.names" in proc.stdout


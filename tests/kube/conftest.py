"""Fixtures the kubeconfig tests share."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def temp_dir(tmp_path, monkeypatch) -> Path:
    """The temp directory every ``tempfile`` call of this process uses (kubernetes-asyncio's included), so a
    test can tell whether key material was written under it."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory

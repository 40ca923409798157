"""A world's directory: named after its world, swept when that world's process is gone (keys
included), never when the world is alive, kept on purpose, or not a world's directory at all."""

from __future__ import annotations

import os
import subprocess

import pytest

from zpilot.world import workdir
from zpilot.world.netns import world_prefix


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _world_dir(root, prefix: str):
    d = root / f"{workdir.DIR_PREFIX}{prefix}-abc123"
    (d / workdir.CA_DIR).mkdir(parents=True)
    (d / workdir.CA_DIR / "root-key.pem").write_text("key")
    (d / "zpilot-serve.err").write_text("log")
    return d


def test_directory_is_named_after_its_world_and_private():
    d = workdir.create(f"{world_prefix()}-7")
    try:
        assert d.name.startswith(f"zpilot-world-{world_prefix()}-7-")
        assert oct(d.stat().st_mode & 0o777) == "0o700"
    finally:
        assert workdir.remove(d) is None
    assert not d.exists()


def test_sweep_removes_only_directories_of_gone_worlds(tmp_path):
    dead = _world_dir(tmp_path, f"{world_prefix(_dead_pid())}-1")
    alive = _world_dir(tmp_path, f"{world_prefix()}-1")  # this process runs
    kept = _world_dir(tmp_path, f"{world_prefix(_dead_pid())}-2")
    assert workdir.keep(kept, [kept / workdir.CA_DIR]) is None
    unrelated = tmp_path / "zpilot-world-notaworld"
    unrelated.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    link = tmp_path / f"{workdir.DIR_PREFIX}{world_prefix(_dead_pid())}-3-link"
    link.symlink_to(outside)
    plain_file = tmp_path / f"{workdir.DIR_PREFIX}{world_prefix(_dead_pid())}-4-file"
    plain_file.write_text("x")

    assert workdir.sweep_abandoned(tmp_path) == [dead]

    assert not dead.exists()
    assert (alive / workdir.CA_DIR / "root-key.pem").exists()
    assert (kept / "zpilot-serve.err").exists() and not (kept / workdir.CA_DIR).exists()
    assert unrelated.exists() and link.is_symlink() and (outside / "precious").exists() and plain_file.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_sweep_leaves_other_users_directories_alone(tmp_path):
    dead = _world_dir(tmp_path, f"{world_prefix(_dead_pid())}-1")
    os.chown(dead, 65534, 65534)  # nobody's
    assert workdir.sweep_abandoned(tmp_path) == []
    assert dead.exists()

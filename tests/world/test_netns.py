"""The world's namespace helpers: abandoned worlds are swept, live ones and others' are not;
sockets opened for a namespace really live in it."""

from __future__ import annotations

import os
import subprocess

import pytest

from zpilot.world.netns import Namespaces, NetnsSockets, list_netns, run, sweep_abandoned, world_prefix

pytestmark = [pytest.mark.root, pytest.mark.netns]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_abandoned_worlds():
    dead = f"{world_prefix(_dead_pid())}-stale"
    alive = Namespaces(world_prefix())  # ours: this process is alive
    other = f"zpt-other-{os.getpid()}"  # somebody else's naming: never touched
    run(["ip", "netns", "add", dead])
    run(["ip", "netns", "add", other])
    try:
        mine = alive.add("live")
        removed = sweep_abandoned()
        assert dead in removed
        names = list_netns()
        assert dead not in names and mine in names and other in names
    finally:
        alive.delete_all()
        for name in (dead, other):
            run(["ip", "netns", "del", name], check=False)
    assert not {dead, other, alive.name("live")} & set(list_netns())


def test_sockets_belong_to_their_namespace():
    spaces = Namespaces(world_prefix())
    sockets = NetnsSockets()
    try:
        ns = spaces.add("sock")
        run(["ip", "-n", ns, "addr", "add", "192.0.2.7/32", "dev", "lo"])
        with sockets.socket(ns) as s:
            s.bind(("192.0.2.7", 0))  # only possible where that address exists
        with pytest.raises(OSError):
            import socket

            with socket.socket() as host_side:
                host_side.bind(("192.0.2.7", 0))
    finally:
        sockets.close()
        spaces.delete_all()

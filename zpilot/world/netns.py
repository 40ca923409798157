"""Network namespaces and veth pairs for a world, and sockets opened inside them.

Names carry the builder's process id (``zw<pid>-...``), so that a world left behind by a
killed run can be recognised and swept by the next one without touching anybody else's
namespaces. Nothing here connects a namespace to the host's: a world has no route out.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import re
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

log = logging.getLogger("zpilot.world")

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
#: ``zw<pid>-<role>``: the owner's pid lets a later run tell abandoned namespaces from live ones.
NAME_PREFIX = "zw"
_NAME_RE = re.compile(rf"^{NAME_PREFIX}(\d+)-")


class NetnsError(RuntimeError):
    pass


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a tool; on failure raise with its stderr (the command line alone rarely says why)."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def in_netns(ns: str, argv: Sequence[str], **kwargs) -> str:
    return run(["ip", "netns", "exec", ns, *argv], **kwargs)


def world_prefix(pid: int | None = None) -> str:
    return f"{NAME_PREFIX}{pid if pid is not None else os.getpid()}"


_worlds = itertools.count(1)


def new_world_prefix() -> str:
    """``zw<pid>-<n>``: unique among the worlds of this process (a test may build one while the
    session's world still runs) and, through the pid, recognisable once the process is gone."""
    return f"{world_prefix()}-{next(_worlds)}"


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_gone(name: str) -> bool:
    """Whether ``name`` starts with a world prefix (``zw<pid>-``) whose process no longer runs.

    Anything not named by a world is never "gone": it is not ours to remove."""
    m = _NAME_RE.match(name)
    return m is not None and not _pid_alive(int(m.group(1)))


def sweep_abandoned() -> list[str]:
    """Delete world namespaces whose owner process is gone (a run killed with SIGKILL)."""
    removed = []
    for name in list_netns():
        if owner_is_gone(name):
            kill_processes_in(name)
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    if removed:
        log.warning("removed %d namespace(s) left by an earlier world: %s", len(removed), ", ".join(removed))
    return removed


def pids_in(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split()]


def kill_processes_in(ns: str) -> None:
    """SIGKILL whatever still runs in ``ns`` (only ever called on namespaces this module created)."""
    for pid in pids_in(ns):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


class Namespaces:
    """The namespaces of one world, created in order and deleted in reverse."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.created: list[str] = []

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def add(self, role: str) -> str:
        name = self.name(role)
        run(["ip", "netns", "add", name])
        self.created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        # no IPv6: link-local addresses and their routes would only add noise to every listing
        in_netns(name, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"])
        return name

    def delete_all(self) -> list[str]:
        """Delete every namespace (killing stragglers first); returns the errors, if any."""
        errors = []
        for name in reversed(self.created):
            kill_processes_in(name)
            try:
                run(["ip", "netns", "del", name])
            except NetnsError as exc:
                errors.append(str(exc))
        self.created.clear()
        return errors


def veth_pair(ns_a: str, dev_a: str, ns_b: str, dev_b: str, *, mtu: int) -> None:
    run(["ip", "-n", ns_a, "link", "add", dev_a, "mtu", str(mtu), "type", "veth",
         "peer", "name", dev_b, "mtu", str(mtu), "netns", ns_b])
    run(["ip", "-n", ns_a, "link", "set", dev_a, "up"])
    run(["ip", "-n", ns_b, "link", "set", dev_b, "up"])


# -- sockets inside a namespace ----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _enter(ns: str) -> None:
    fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsSockets:
    """Opens sockets inside namespaces without starting a process per connection.

    A socket belongs to the namespace it was created in, whatever thread uses it later; so one
    worker thread per namespace enters it once (setns affects only the calling thread) and
    creates sockets there. That keeps the test's and the bench's client overhead tiny.
    """

    def __init__(self) -> None:
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def _worker(self, ns: str) -> ThreadPoolExecutor:
        with self._lock:
            worker = self._workers.get(ns)
            if worker is None:
                worker = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{ns}", initializer=_enter, initargs=(ns,))
                self._workers[ns] = worker
            return worker

    def socket(self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        return self._worker(ns).submit(socket.socket, family, type).result()

    def close(self) -> None:
        with self._lock:
            for worker in self._workers.values():
                worker.shutdown(wait=True)
            self._workers.clear()

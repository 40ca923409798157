"""Processes of a world (Envoys, ``zpilot serve``, pod servers): started inside a
namespace, logged to files, and always stopped.

Every child gets ``PR_SET_PDEATHSIG=SIGKILL``, so even if the builder itself is killed with
SIGKILL nothing it started survives it; on a normal exit :meth:`Supervisor.stop_all` sends
SIGTERM, waits briefly, then SIGKILLs the process group. :meth:`Supervisor.kill` is the fault a
test injects: SIGKILL to the whole process group at once, as the kernel's OOM killer or a
container runtime deals it, with no chance to clean up.

Each child may open as many files as the hard limit allows (the soft limit is raised to it): a
ztunnel holds two descriptors per proxied connection, a pod server one per client, and a test
with thousands of concurrent connections must not fail on a default soft limit of 1,024.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("zpilot.world")

PR_SET_PDEATHSIG = 1


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setsid()
    raise_open_files_limit()


@dataclass
class Child:
    name: str
    netns: str | None
    argv: list[str]
    proc: subprocess.Popen
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        out = []
        for path in (self.stderr, self.stdout):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(out)


class ProcessFailed(RuntimeError):
    pass


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], *, netns: str | None = None,
              env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` (inside ``netns`` when given); stdout and stderr go to ``<name>.out/.err``."""
        full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
        out_path, err_path = self.log_dir / f"{name}.out", self.log_dir / f"{name}.err"
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            proc = subprocess.Popen(full, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    preexec_fn=_die_with_parent, env={**os.environ, **(env or {})})
        child = Child(name, netns, list(argv), proc, out_path, err_path)
        self.children.append(child)
        log.debug("started %s (pid %d) in %s: %s", name, proc.pid, netns or "host", " ".join(argv))
        return child

    def wait_for(self, child: Child, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``ready`` until true; fail early with the child's log if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                raise ProcessFailed(f"{child.name} exited ({child.proc.returncode}) before {what}:\n{child.tail()}")
            try:
                if ready():
                    return
            except Exception:  # not up yet: connection refused and the like
                pass
            time.sleep(0.05)
        raise ProcessFailed(f"{child.name}: not {what} within {timeout:.0f} s:\n{child.tail()}")

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        if child.alive():
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.proc.wait(timeout)
        if child in self.children:
            self.children.remove(child)

    def kill(self, child: Child, timeout: float = 5.0) -> None:
        """``kill -9`` of the child's whole process group (its own children too), then reap it."""
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.proc.wait(timeout)
        if child in self.children:
            self.children.remove(child)
        log.debug("killed %s (pid %d) with SIGKILL", child.name, child.pid)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                log.error("stopping %s: %s", child.name, exc)


def python_module(module: str, *args: str) -> list[str]:
    """argv running one of our modules with this interpreter (the same venv inside any netns)."""
    return [sys.executable, "-m", module, *args]


def zpilot_cli(*args: str) -> list[str]:
    return python_module("zpilot.cli", *args)


"""The network namespace a plan is applied to, and running tools inside it.

The agent normally works in its own (the node's) namespace; ``--netns`` and ``--ztunnel-netns``
point it at another one, by name (``/run/netns/NAME``, as ``ip netns add`` makes) or by path
(``/proc/PID/ns/net``, a pod's). Tools run through ``nsenter --net=PATH`` and netlink sockets are
opened inside the namespace, so nothing of the agent's own namespace is touched by mistake.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import CniError

log = logging.getLogger("zpilot.cni")

NETNS_RUN_DIR = "/run/netns"
#: setns(2)'s flag for a network namespace (linux/sched.h).
CLONE_NEWNET = 0x40000000


class CommandError(CniError):
    pass


class PartialFailure(CniError):
    """A step failed after making some of its changes; they are reported with the failure."""

    def __init__(self, message: str, done: list) -> None:
        super().__init__(message)
        self.done = done


@dataclass(frozen=True)
class Netns:
    """A network namespace: ``None`` is the agent's own."""

    name: str | None = None

    @property
    def path(self) -> str | None:
        if self.name is None:
            return None
        return self.name if "/" in self.name else os.path.join(NETNS_RUN_DIR, self.name)

    def __str__(self) -> str:
        return f"netns {self.name}" if self.name else "the agent's own netns"

    def check_exists(self) -> None:
        """Fail before anything else: pyroute2 would silently *create* a missing named namespace."""
        path = self.path
        if path is not None and not os.path.exists(path):
            raise CniError(f"network namespace {self.name!r} does not exist ({path} is missing; see `ip netns list`)")

    def command(self, argv: Sequence[str]) -> list[str]:
        if self.path is None:
            return list(argv)
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, argv: Sequence[str], *, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run a tool in this namespace; on failure raise :class:`CommandError` with its stderr."""
        cmd = self.command(argv)
        log.debug("%s: %s", self, " ".join(argv))
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60)
        except FileNotFoundError as exc:
            raise CommandError(f"{exc.filename}: not installed (needed to run `{' '.join(argv)}` in {self})") from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandError(f"`{' '.join(argv)}` in {self} did not finish in 60 s") from exc
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise CommandError(f"`{' '.join(argv)}` failed in {self} (exit {proc.returncode}): {detail}")
        return proc

    def iproute(self):
        """A pyroute2 ``IPRoute`` bound to this namespace (the caller closes it)."""
        from pyroute2 import IPRoute

        self.check_exists()
        if self.path is None:
            return IPRoute()
        return IPRoute(fileno=self.netlink_socket(socket.NETLINK_ROUTE))

    def netlink_socket(self, family: int) -> int:
        """The file descriptor of a new netlink socket of ``family`` inside this (named) namespace.

        A socket belongs to the namespace it was created in, whichever thread uses it later, and
        setns(2) moves only the calling thread: a short-lived thread enters the namespace, creates the
        socket and ends (its namespace with it). pyroute2's own ``netns=`` forks this process for each
        socket instead (~10 a reconcile): 0.1 s of CPU of a ``zpilot cni status``, far more in a large
        process.
        """
        assert self.path is not None
        path = self.path
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def enter_and_create() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns: {os.strerror(err)}")
                finally:
                    os.close(fd)
                made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, family))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=enter_and_create, name=f"netlink-in-{self.name}")
        thread.start()
        thread.join()
        if failed:
            raise CniError(f"cannot open a netlink socket in {self}: {failed[0]}") from failed[0]
        return made[0].detach()


def run_netlink_ops(netns: Netns, ops: list[tuple[Any, Callable[[Any], None]]]) -> list:
    """Run (change, action) pairs on one netlink socket in ``netns``; return the changes made.

    On a failure, :class:`PartialFailure` carries the changes made before it, so the report
    says exactly what the kernel now holds.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    done: list = []
    with netns.iproute() as ipr:
        for change, run in ops:
            try:
                run(ipr)
            except (NetlinkError, CniError) as exc:
                raise PartialFailure(f"{change} failed in {netns}: {exc}", done) from exc
            done.append(change)
    return done

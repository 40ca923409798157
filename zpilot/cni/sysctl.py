"""Kernel settings the redirection needs (forwarding, loose reverse-path filtering, accept_local).

Strict ``rp_filter`` drops the ztunnel's spoofed-source replies and the decapsulated tunnel
traffic, so it is turned off where the 2022 agent turned it off. Read in one shell call and
written in one, inside the target namespace (``/proc/sys/net`` is per namespace). Sysctls are
not reverted by cleanup: see docs/cni.md.
"""

from __future__ import annotations

from .changes import Change, Diff
from .netns import Netns
from .desired import Sysctl


#: Prints ``path=value`` for each /proc/sys path given that exists; a shell and cat are on every
#: node, the ``sysctl`` binary (procps) is not on minimal images.
_READ = 'for p in "$@"; do [ -e "/proc/sys/$p" ] && printf "%s=%s\\n" "$p" "$(cat "/proc/sys/$p")"; done; true'
#: Writes value to path for each (path, value) pair given; stops at the first failure.
_WRITE = 'while [ $# -gt 0 ]; do printf "%s" "$2" > "/proc/sys/$1" || exit 1; shift 2; done'


def read(netns: Netns, sysctls: tuple[Sysctl, ...]) -> dict[str, str]:
    """Current values by path (``/proc/sys/net`` is per namespace); a setting that does not exist yet is left out."""
    if not sysctls:
        return {}
    proc = netns.run(["sh", "-c", _READ, "sh", *[s.path for s in sysctls]])
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        path, sep, value = line.partition("=")
        if sep:
            values[path] = value.strip()
    return values


def diff(desired: tuple[Sysctl, ...], actual: dict[str, str]) -> Diff[list[Sysctl]]:
    todo = [s for s in desired if actual.get(s.path) != s.value]
    changes = [Change("sysctl", "update", f"{s.path.replace('/', '.')} = {s.value}") for s in todo]
    return Diff(todo, changes, unchanged=len(desired) - len(todo))


def apply(netns: Netns, d: Diff[list[Sysctl]]) -> None:
    """All writes in one shell call, which stops at the first that fails."""
    if d.work:
        netns.run(["sh", "-c", _WRITE, "sh", *[part for s in d.work for part in (s.path, s.value)]])

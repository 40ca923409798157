"""Kernel settings the redirection needs (forwarding, loose reverse-path filtering, accept_local).

Strict ``rp_filter`` drops the ztunnel's spoofed-source replies and the decapsulated tunnel
traffic, so it is turned off where the 2022 agent turned it off. Read in one ``sysctl`` call and
written in one, inside the target namespace (``/proc/sys/net`` is per namespace). Sysctls are
not reverted by cleanup: see docs/cni.md.
"""

from __future__ import annotations

from .changes import Change
from .netns import Netns
from .plan import Sysctl


def _key(path: str) -> str:
    """How ``sysctl`` prints a path: slashes become dots and dots (as in ``eth0.100``) slashes."""
    return path.replace(".", "\0").replace("/", ".").replace("\0", "/")


def read(netns: Netns, sysctls: tuple[Sysctl, ...]) -> dict[str, str]:
    """Current values by path; a setting that does not exist (yet) is left out."""
    if not sysctls:
        return {}
    proc = netns.run(["sysctl", "-e", *[s.path for s in sysctls]], check=False)
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            values[key.strip()] = value.strip()
    return {s.path: values[_key(s.path)] for s in sysctls if _key(s.path) in values}


def diff(desired: tuple[Sysctl, ...], actual: dict[str, str]) -> list[Sysctl]:
    return [s for s in desired if actual.get(s.path) != s.value]


def apply(netns: Netns, changes: list[Sysctl]) -> list[Change]:
    if not changes:
        return []
    netns.run(["sysctl", "-q", "-w", *[f"{s.path}={s.value}" for s in changes]])
    return [Change("sysctl", "update", f"{s.path.replace('/', '.')} = {s.value}") for s in changes]

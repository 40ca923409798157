"""What a world needs from the machine, checked before anything is created."""

from __future__ import annotations

import os
import shutil

from ..envoy_binary import envoy_path

REQUIRED_TOOLS = ("ip", "iptables", "iptables-restore", "ipset", "nsenter")


def missing_prerequisites() -> list[str]:
    """What keeps a world from being built here, in words an operator can act on (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, iptables and TPROXY need CAP_NET_ADMIN): run with sudo")
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            missing.append(f"`{tool}` not on PATH (install iproute2 / iptables / ipset / util-linux)")
    try:
        envoy_path()
    except Exception as exc:  # EnvoyNotFound
        missing.append(str(exc))
    return missing

"""The CNI node agent's commands for one node of a world, run as an operator would run them.

``zpilot cni apply`` and ``zpilot cni status`` run from the host and enter the node's namespace
themselves (``--netns``); ``zpilot cni run`` is started inside it, as a hostNetwork DaemonSet pod
would be, so it is given no ``--netns``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import contract
from .errors import WorldError
from .netns import in_netns
from .processes import zpilot_cli



@dataclass(frozen=True)
class NodeCni:
    node_key: str
    node_name: str
    manifests: Path
    netns: str  # the node's
    ztunnel_netns: str  # the node's ztunnel pod's

    def agent_argv(self, poll: float) -> list[str]:
        """``zpilot cni run`` for this node, to be started inside the node's namespace."""
        return zpilot_cli("-v", "cni", "run", "--node", self.node_name, "--manifests", str(self.manifests),
                          "--ztunnel-netns", self.ztunnel_netns, "--poll", str(poll))

    def apply(self) -> str:
        """``zpilot cni apply``; returns its report."""
        proc = subprocess.run(self._from_host("apply"), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise WorldError(f"zpilot cni apply for node {self.node_key} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def in_sync(self) -> bool:
        """``zpilot cni status``: exit 0 means redirecting and the kernel matches the plan."""
        return subprocess.run(self._from_host("status"), capture_output=True, text=True, timeout=60).returncode == 0

    def meshed_ips(self) -> set[str]:
        """The node's ipset of captured pod IPs, as the kernel holds it now."""
        out = in_netns(self.netns, ["ipset", "list", contract.IPSET_NAME], check=False)
        return {line.split()[0] for line in out.partition("Members:")[2].splitlines() if line.strip()}

    def _from_host(self, command: str) -> list[str]:
        return zpilot_cli("cni", command, "--node", self.node_name, "--manifests", str(self.manifests),
                          "--netns", self.netns, "--ztunnel-netns", self.ztunnel_netns)

"""The CNI node agent's commands for one node of a world, run as an operator would run them.

``zpilot cni apply`` and ``zpilot cni status`` run from the host and enter the node's namespace
themselves (``--netns``); ``zpilot cni run`` is started inside it, as a hostNetwork DaemonSet pod
would be, so it is given no ``--netns``. :meth:`NodeCni.inventory` lists what the kernel holds of
zpilot's objects, one line per rule, member, route and device, so two states can be compared for
anything lost or duplicated.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .. import contract
from .errors import WorldError
from .netns import in_netns
from .processes import zpilot_cli

_MODE = re.compile(r"^Node \S+: mode (\S+?);", re.M)
#: What an agent run with -vv logs before each command it runs (zpilot/cni/netns.py: Netns.run).
_COMMAND = re.compile(r" DEBUG zpilot\.cni: (?:the agent's own netns|netns \S+): (.+)$", re.M)


def commands_logged(log: Path, offset: int = 0) -> list[str]:
    """The commands an agent run with ``log_commands`` logged since byte ``offset`` of its log, in
    order: how a test follows a reconcile from outside, one tool run at a time."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return _COMMAND.findall(text)


@dataclass(frozen=True)
class CniStatus:
    """What ``zpilot cni status`` said: the node's mode, and whether the kernel matches the plan."""

    mode: str  # redirect | idle | fail-open | fail-closed (desired.Mode)
    in_sync: bool
    text: str


@dataclass(frozen=True)
class NodeCni:
    node_key: str
    node_name: str
    manifests: Path
    netns: str  # the node's
    ztunnel_netns: str  # the node's ztunnel pod's
    fail_closed: bool = False

    def agent_argv(self, poll: float, *, log_commands: bool = False) -> list[str]:
        """``zpilot cni run`` for this node, to be started inside the node's namespace; with
        ``log_commands`` at debug level, which logs each command before it runs."""
        return zpilot_cli("-vv" if log_commands else "-v", "cni", "run", "--node", self.node_name, "--manifests", str(self.manifests),
                          "--ztunnel-netns", self.ztunnel_netns, "--poll", str(poll), *self._mode_flags())

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

    def status(self) -> CniStatus:
        """``zpilot cni status`` read in any mode (its exit code is 1 in fail-open and fail-closed
        even when the kernel is as planned)."""
        proc = subprocess.run(self._from_host("status"), capture_output=True, text=True, timeout=60)
        found = _MODE.search(proc.stdout)
        if found is None:
            raise WorldError(f"zpilot cni status for node {self.node_key} printed no mode ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
        in_sync = "OUT OF SYNC" not in proc.stdout and "cannot read" not in proc.stdout
        return CniStatus(found.group(1), in_sync, proc.stdout)

    def meshed_ips(self) -> set[str]:
        """The node's ipset of captured pod IPs, as the kernel holds it now."""
        out = in_netns(self.netns, ["ipset", "list", contract.IPSET_NAME], check=False)
        return {line.split()[0] for line in out.partition("Members:")[2].splitlines() if line.strip()}

    def inventory(self) -> Counter[str]:
        """Every iptables rule of mangle and nat, ipset member, ip rule, route and tunnel device of the
        node's and the ztunnel pod's namespaces, one line each (a duplicate counts twice). Volatile
        parts (counters, interface indexes, the set's hash seed, MAC addresses) are left out."""
        lines: Counter[str] = Counter()
        for side, ns in (("node", self.netns), ("ztunnel", self.ztunnel_netns)):
            for table in ("mangle", "nat"):
                out = in_netns(ns, ["iptables-save", "-t", table])
                lines.update(f"{side} {table} {line}" for line in out.splitlines() if line.startswith("-A "))
            out = in_netns(ns, ["ipset", "save", contract.IPSET_NAME], check=False)
            lines.update(f"{side} ipset {line}" for line in out.splitlines() if line.startswith("add "))
            out = in_netns(ns, ["ip", "rule", "show"])
            lines.update(f"{side} rule {line.strip()}" for line in out.splitlines() if line.strip())
            out = in_netns(ns, ["ip", "route", "show", "table", "all"])
            lines.update(f"{side} route {line.strip()}" for line in out.splitlines() if line.strip())
            for link in json.loads(in_netns(ns, ["ip", "-d", "-j", "addr", "show"]) or "[]"):
                info = link.get("linkinfo", {})
                data = info.get("info_data", {})
                addresses = sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []))
                lines[f"{side} link {link['ifname']} {info.get('info_kind', '-')} id={data.get('id', '-')}"
                      f" remote={data.get('remote', '-')} port={data.get('port', '-')} mtu={link.get('mtu')}"
                      f" {' '.join(addresses)}"] += 1
        return lines

    def _mode_flags(self) -> list[str]:
        return ["--fail-closed"] if self.fail_closed else []

    def _from_host(self, command: str) -> list[str]:
        return zpilot_cli("cni", command, "--node", self.node_name, "--manifests", str(self.manifests),
                          "--netns", self.netns, "--ztunnel-netns", self.ztunnel_netns, *self._mode_flags())

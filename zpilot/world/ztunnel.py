"""A node's ztunnel in a world: the Envoy process in the ztunnel pod's namespace, its admin API
(on loopback in that namespace) and its access log."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from .. import contract
from .accesslog import AccessLog
from .client import PodClient
from .processes import Child
from .topology import NodeSpec, PodSpec

@dataclass
class Ztunnel:
    node: NodeSpec
    pod: PodSpec
    netns: str
    process: Child
    client: PodClient

    @property
    def access_log(self) -> AccessLog:
        return AccessLog(self.process.stdout)

    def admin(self, path: str, *, timeout: float = 5.0) -> str:
        exchange = self.client.request(self.netns, contract.ADMIN_ADDRESS, contract.PORT_ADMIN, path, timeout=timeout)
        if exchange.status != 200:
            raise RuntimeError(f"admin {path} on ztunnel {self.node.key}: HTTP {exchange.status}")
        return exchange.body.decode(errors="replace")

    def ready(self, *, timeout: float = 5.0) -> bool:
        """LIVE: every listener warmed, which needs CDS, EDS, SDS and LDS to have arrived."""
        return self.admin("/ready", timeout=timeout).strip() == "LIVE"

    def stats(self, pattern: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.admin(f"/stats?filter={quote(pattern, safe='')}").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

"""The issue's scenarios as functions: send real traffic in a built world and collect the
evidence each ztunnel wrote about it.

A scenario returns a :class:`Trace`: what the client saw (an :class:`~zpilot.world.client.Exchange`
or the error), what the destination pod saw (its JSON answer: peer and local address), and the
access-log entries of both ztunnels that belong to this connection. Tests assert on traces;
``zpilot demo`` prints one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .accesslog import Entry
from .builder import World
from .client import ConnectionFailed, Exchange

#: How long to wait for Envoy to write (and flush) the log lines of a finished connection.
LOG_WAIT = 10.0


@dataclass
class Trace:
    source: str  # pod key
    target: str  # host:port
    exchange: Exchange | None
    error: str | None
    client_local: str | None
    entries: dict[str, list[Entry]] = field(default_factory=dict)  # node key -> new log entries

    @property
    def ok(self) -> bool:
        return self.exchange is not None and self.exchange.status == 200

    @property
    def seen_by_pod(self) -> dict[str, Any]:
        """The destination pod's view (``pod``, ``peer``, ``local``); empty when nothing came back."""
        if self.exchange is None:
            return {}
        try:
            return self.exchange.json()
        except ValueError:
            return {}

    def at(self, node: str, **expected: str) -> list[Entry]:
        """Log entries of ``node``'s ztunnel with the given field values (duplicates removed)."""
        out: list[Entry] = []
        for entry in self.entries.get(node, []):
            if all(entry.get(k) == v for k, v in expected.items()) and entry not in out:
                out.append(entry)
        return out

    def one(self, node: str, **expected: str) -> Entry:
        found = self.at(node, **expected)
        if len(found) != 1:
            raise AssertionError(
                f"expected exactly one entry at ztunnel {node} with {expected}, found {len(found)}; "
                f"entries there: {self.entries.get(node)}"
            )
        return found[0]


def _dedupe(entries: list[Entry]) -> list[Entry]:
    """The listener and its tcp_proxy both log each outbound connection: keep one of each."""
    out: list[Entry] = []
    for entry in entries:
        if entry not in out:
            out.append(entry)
    return out


def request(world: World, source: str, host: str, port: int, path: str = "/", *,
            expect_logs: dict[str, int] | None = None, settle: float = 0.3) -> Trace:
    """One HTTP request from pod ``source`` to ``host:port`` and the ztunnel log lines it caused.

    ``expect_logs`` (node key -> number of distinct lines) says how many lines to wait for; nodes
    not named get ``settle`` seconds for anything unexpected to show up (a scenario that expects
    a ztunnel to stay silent checks that it did).
    """
    offsets = {key: zt.access_log.mark() for key, zt in world.ztunnels.items()}
    exchange, error, local = None, None, None
    try:
        exchange = world.client.request(world.pod_ns(source), host, port, path)
        local = exchange.local
    except ConnectionFailed as exc:
        error, local = str(exc), exc.local
    entries: dict[str, list[Entry]] = {}
    expect_logs = expect_logs or {}
    deadline = time.monotonic() + LOG_WAIT
    time.sleep(settle)
    for key, zt in world.ztunnels.items():
        want = expect_logs.get(key, 0)
        while True:
            found = _dedupe(zt.access_log.since(offsets[key]))
            if len(found) >= want or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        entries[key] = found
    return Trace(source, f"{host}:{port}", exchange, error, local, entries)


def service_target(world: World, service: str) -> tuple[str, int]:
    svc = world.spec.service(service)
    return svc.cluster_ip, svc.ports[0][1]


def pod_target(world: World, pod: str) -> tuple[str, int]:
    spec = world.spec.pod(pod)
    return spec.ip, spec.ports[0][1]

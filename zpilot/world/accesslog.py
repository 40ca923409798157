"""Reading the ztunnels' JSON access logs (zpilot.translators.envoy_common.ACCESS_LOG_FIELDS).

They are the scenarios' main evidence: which listener and filter chain took a connection, the
upstream cluster and host it went to, the CONNECT authority, and the peer's SPIFFE identity at
the receiving ztunnel. Envoy writes a line when a connection (or CONNECT stream) ends and
flushes its log file on a timer (the world starts Envoy with a short flush interval).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

Entry = dict[str, Any]


def parse(text: str) -> Iterator[Entry]:
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and "log" in entry:
            yield entry


@dataclass
class AccessLog:
    """One Envoy's stdout access log; :meth:`mark` then :meth:`since` gives a scenario's lines only."""

    path: Path

    def entries(self) -> list[Entry]:
        try:
            return list(parse(self.path.read_text(errors="replace")))
        except FileNotFoundError:
            return []

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def since(self, offset: int) -> list[Entry]:
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                return list(parse(f.read().decode(errors="replace")))
        except FileNotFoundError:
            return []

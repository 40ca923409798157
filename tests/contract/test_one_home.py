"""Each number and name of the ztunnel contract is written in one place: ``zpilot/contract.py``.

Every other module of ``zpilot/`` -- code, strings, comments and docstrings alike -- must refer
to it by name: a copy (``15008`` in a listener, ``0x401`` in a rule, ``"ROOTCA"`` in a TLS
context, a port in a help text) is how the two ends of the contract drift apart, and a number in
prose goes stale the same way. Tests and docs are not scanned: they state what the values are.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zpilot import contract

PACKAGE = Path(contract.__file__).resolve().parent
CONTRACT = Path(contract.__file__).resolve()

PORTS = ("PORT_OUTBOUND", "PORT_INBOUND_PLAINTEXT", "PORT_HBONE", "PORT_HBONE_LOCAL", "PORT_ADMIN", "PORT_XDS",
         "PORT_DEBUG", "PORT_METRICS", "PORT_READINESS")
#: 15053, the DNS capture port of the 2022 CNI (opt-in, not implemented here): should it ever be
#: needed, it belongs in the contract too.
RESERVED_PORTS = (15053,)
MARKS = ("MARK_OUTBOUND", "MARK_SKIP", "MARK_CONN_SKIP", "MARK_PROXY", "MARK_PROXY_RETURN", "TPROXY_MARK",
         "OUTBOUND_SOCKET_MARK", "INBOUND_SOCKET_MARK", "ORIGINAL_SRC_MARK", "PASSTHROUGH_MARK", "ZTUNNEL_MARK_MASK")
NAMES = ("ROOT_CA_SECRET", "NODE_ID_PREFIX", "SPIFFE_SCHEME", "NODE_NAME_METADATA", "INBOUND_TUNNEL",
         "OUTBOUND_TUNNEL", "ZTUNNEL_INBOUND_TUNNEL", "ZTUNNEL_OUTBOUND_TUNNEL", "IPSET_NAME", "PREROUTING",
         "POSTROUTING", "INPUT", "OUTPUT", "FORWARD", "OUTBOUND_LISTENER", "INBOUND_LISTENER",
         "INBOUND_PLAINTEXT_LISTENER", "READINESS_LISTENER", "TUNNEL_LISTENER_PREFIX", "LINEAR_TUNNEL_LISTENER", "TRANSPORT_SOCKET_MATCH_METADATA",
         "ORIGINAL_DST_FILTER", "ORIGINAL_SRC_FILTER")


def _word(text: str) -> str:
    """``text`` not as part of a longer word (``istioin`` is not in ``pistioin``)."""
    start = r"(?<![\w-])" if re.match(r"[\w-]", text[0]) else ""
    end = r"(?![\w-])" if re.match(r"[\w-]", text[-1]) else ""
    return start + re.escape(text) + end


def patterns() -> dict[str, re.Pattern[str]]:
    """What to look for, from the contract's own values (so the scan follows a changed value)."""
    found: dict[str, re.Pattern[str]] = {}
    for name in PORTS:
        found[name] = re.compile(_word(str(getattr(contract, name))))
    for port in RESERVED_PORTS:
        found[f"reserved port {port}"] = re.compile(_word(str(port)))
    for name in MARKS:
        value = getattr(contract, name)
        found[name] = re.compile(rf"\b0x0*{value:x}\b", re.IGNORECASE)
    # Istio and Envoy's own docs write the original_src mark in decimal.
    found["ORIGINAL_SRC_MARK (decimal)"] = re.compile(_word(str(contract.ORIGINAL_SRC_MARK)))
    for name in NAMES:
        found[name] = re.compile(_word(getattr(contract, name)))
    return found


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.resolve() != CONTRACT)


def test_the_scan_covers_the_package():
    assert len(sources()) > 50 and PACKAGE.name == "zpilot"


@pytest.mark.parametrize("name", sorted(patterns()))
def test_literal_lives_only_in_the_contract(name):
    pattern = patterns()[name]
    if not name.startswith("reserved"):
        assert pattern.search(CONTRACT.read_text()), f"{name}: the pattern does not even find the contract's own value"
    copies = []
    for path in sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                copies.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not copies, f"{name} is written outside zpilot/contract.py; refer to contract.{name.split()[0]}:\n" + "\n".join(copies)

"""IP address families: which addresses the mesh carries, and how one host is written as a prefix.

The mesh is IPv4-only (the 2022 redirection is: one ipset, iptables, IPv4 tunnels; see
docs/config-reference.md). :class:`~zpilot.model.index.MeshIndex` applies that rule to every object;
the helpers here are what it, the translators and the CNI plan share, so a host prefix is always
``/32`` for IPv4 and ``/128`` for IPv6 and nothing can write ``<ipv6>/32`` (two such prefixes
overlap, and Envoy rejects the listener holding them).
"""

from __future__ import annotations

import functools
import ipaddress
from socket import AF_INET, inet_ntop, inet_pton
from typing import Iterable

#: The one address family the mesh carries.
MESH_FAMILY = 4


@functools.lru_cache(maxsize=1 << 16)
def is_ipv4(ip: str | None) -> bool:
    """True for an IPv4 address; False for IPv6 (IPv4-mapped included), ``None`` and non-addresses
    (remembered: every model build asks it of every pod's, service's and node's addresses)."""
    if ip is None:
        return False
    try:
        return ipaddress.ip_address(ip).version == 4
    except ValueError:
        return False


def is_ipv4_network(cidr: str) -> bool:
    """True for an IPv4 prefix such as a node's pod CIDR (host bits allowed)."""
    try:
        return ipaddress.ip_network(cidr, strict=False).version == 4
    except ValueError:
        return False


def ipv4_networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """The IPv4 prefixes among ``cidrs`` (host bits allowed), in order; the rest left out."""
    found = []
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if network.version == 4:
            found.append(network)
    return found


def split_mesh_family(ips: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(addresses the mesh carries, addresses it drops), each in the given order."""
    kept: list[str] = []
    dropped: list[str] = []
    for ip in ips:
        (kept if is_ipv4(ip) else dropped).append(ip)
    return tuple(kept), tuple(dropped)


@functools.lru_cache(maxsize=1 << 16)
def host_prefix_len(ip: str) -> int:
    """The prefix length that covers exactly ``ip``: 32 for IPv4, 128 for IPv6 (remembered: every
    node's config writes every pod's address as a prefix).

    Raises ``ValueError`` for anything that is not a single address. An IPv4 address written as
    ``ipaddress`` writes it (every pod's) is told without it, at a tenth of the cost (a cold
    generation at R asks for each of its 10,000 pods once).
    """
    try:
        if inet_ntop(AF_INET, inet_pton(AF_INET, ip)) == ip:
            return 32
    except (OSError, ValueError, TypeError):
        pass
    return ipaddress.ip_address(ip).max_prefixlen


def host_cidr(ip: str) -> str:
    """``ip`` as the prefix holding only it (``10.0.0.1/32``, ``fd00::1/128``)."""
    return f"{ip}/{host_prefix_len(ip)}"


def sort_key(ip: str) -> tuple[int, int]:
    """Orders addresses numerically, IPv4 before IPv6 (a kernel listing's order within a family)."""
    address = ipaddress.ip_address(ip)
    return address.version, int(address)

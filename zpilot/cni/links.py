"""Tunnel devices (the inbound and outbound tunnel on the node, and their ends in the ztunnel pod), over netlink.

A device whose kind, VNI or port is wrong is replaced; one whose remote changed (a new ztunnel
pod) is changed in place, so the routes through it survive and no pod loses its entry in table
100; MTU, address and up state are set where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from pyroute2.netlink.exceptions import NetlinkError

from .changes import Change, Diff
from .netns import Netns, run_netlink_ops
from .desired import Tunnel, TunnelKind


@dataclass
class LinkState:
    name: str
    index: int
    kind: str
    vni: int | None
    remote: str | None
    port: int | None
    mtu: int
    up: bool
    addresses: list[tuple[str, int]] = field(default_factory=list)


def _info(link: Any) -> tuple[str, Any]:
    linkinfo = link.get_attr("IFLA_LINKINFO")
    if linkinfo is None:
        return "", None
    return linkinfo.get_attr("IFLA_INFO_KIND") or "", linkinfo.get_attr("IFLA_INFO_DATA")


def read(ipr: Any, names: tuple[str, ...]) -> dict[str, LinkState]:
    result: dict[str, LinkState] = {}
    for name in names:
        indexes = ipr.link_lookup(ifname=name)
        if not indexes:
            continue
        link = ipr.get_links(indexes[0])[0]
        kind, data = _info(link)
        vni = remote = port = None
        if data is not None and kind in ("vxlan", "geneve"):
            prefix = f"IFLA_{kind.upper()}_"
            vni = data.get_attr(prefix + "ID")
            remote = data.get_attr(prefix + ("GROUP" if kind == "vxlan" else "REMOTE"))
            port = data.get_attr(prefix + "PORT")
        addresses = [
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(family=2, index=indexes[0])
        ]
        result[name] = LinkState(
            name, indexes[0], kind, vni, remote, port, link.get_attr("IFLA_MTU"),
            bool(link["flags"] & 1), sorted(addresses),
        )
    return result


def _tunnel_attrs(t: Tunnel) -> dict[str, Any]:
    if t.kind is TunnelKind.GENEVE:
        return {"kind": "geneve", "geneve_id": t.vni, "geneve_remote": t.remote, "geneve_port": t.port,
                "geneve_udp_csum": 0}
    return {"kind": "vxlan", "vxlan_id": t.vni, "vxlan_group": t.remote, "vxlan_port": t.port}


def _remote_attr(t: Tunnel) -> dict[str, Any]:
    if t.kind is TunnelKind.GENEVE:
        return {"kind": "geneve", "geneve_remote": t.remote}
    return {"kind": "vxlan", "vxlan_group": t.remote}


Op = tuple[Change, Callable[[Any], None]]


def _create(t: Tunnel) -> Callable[[Any], None]:
    def run(ipr: Any) -> None:
        ipr.link("add", ifname=t.name, mtu=t.mtu, **_tunnel_attrs(t))
        index = ipr.link_lookup(ifname=t.name)[0]
        ipr.addr("add", index=index, address=t.address, prefixlen=t.prefixlen)
        ipr.link("set", index=index, state="up")

    return run


def _delete(name: str) -> Callable[[Any], None]:
    def run(ipr: Any) -> None:
        indexes = ipr.link_lookup(ifname=name)
        if indexes:
            ipr.link("del", index=indexes[0])

    return run


def _replace(t: Tunnel) -> Callable[[Any], None]:
    def run(ipr: Any) -> None:
        _delete(t.name)(ipr)
        _create(t)(ipr)

    return run


def _set_mtu(index: int, mtu: int, ipr: Any) -> None:
    ipr.link("set", index=index, mtu=mtu)


def _address(command: str, index: int, address: tuple[str, int], ipr: Any) -> None:
    ipr.addr(command, index=index, address=address[0], prefixlen=address[1])


def _set_up(index: int, ipr: Any) -> None:
    ipr.link("set", index=index, state="up")


def diff(desired: tuple[Tunnel, ...], actual: dict[str, LinkState], owned: tuple[str, ...]) -> Diff[list[Op]]:
    ops: list[Op] = []
    unchanged = 0
    wanted = {t.name: t for t in desired}
    for name in owned:
        if name in actual and name not in wanted:
            ops.append((Change("link", "remove", f"{name} ({actual[name].kind})"), _delete(name)))
    for t in desired:
        have = actual.get(t.name)
        describe = f"{t.name} {t.kind.value} id {t.vni} remote {t.remote} dstport {t.port} mtu {t.mtu}"
        if have is None:
            ops.append((Change("link", "add", describe), _create(t)))
            continue
        if (have.kind, have.vni, have.port) != (t.kind.value, t.vni, t.port):
            was = f"{have.kind} id {have.vni} dstport {have.port}"
            ops.append((Change("link", "update", f"{describe} (replaces {was})"), _replace(t)))
            continue
        index = have.index
        before = len(ops)
        if have.remote != t.remote:
            ops.append((Change("link", "update", f"{t.name} remote {have.remote} -> {t.remote}"),
                        _set_remote(t, index)))
        if have.mtu != t.mtu:
            ops.append((Change("link", "update", f"{t.name} mtu {have.mtu} -> {t.mtu}"),
                        partial(_set_mtu, index, t.mtu)))
        want_addr = (t.address, t.prefixlen)
        for address in have.addresses:
            if address != want_addr:
                ops.append((Change("link", "remove", f"{t.name} address {address[0]}/{address[1]}"),
                            partial(_address, "del", index, address)))
        if want_addr not in have.addresses:
            ops.append((Change("link", "add", f"{t.name} address {t.address}/{t.prefixlen}"),
                        partial(_address, "add", index, want_addr)))
        if not have.up:
            ops.append((Change("link", "update", f"{t.name} up"), partial(_set_up, index)))
        if len(ops) == before:
            unchanged += 1
    return Diff(ops, [change for change, _ in ops], unchanged)


def _set_remote(t: Tunnel, index: int) -> Callable[[Any], None]:
    """Change the remote in place (routes through the device survive); replace it if the kernel refuses."""

    def run(ipr: Any) -> None:
        try:
            ipr.link("set", index=index, **_remote_attr(t))
        except NetlinkError:
            _replace(t)(ipr)

    return run


def apply(netns: Netns, d: Diff[list[Op]]) -> list[Change]:
    return run_netlink_ops(netns, d.work)

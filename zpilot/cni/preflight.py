"""Checks made before anything is changed: the tools are installed and the kernel has the features.

Kernel features are probed for real, in a scratch network namespace that is always deleted:
loading a TPROXY rule, creating a commented ``hash:ip`` set, a Geneve and a VXLAN device.
Reading kernel config files would be guesswork (modules load on demand, configs are often not
shipped); a failed probe is exact, and it happens before the node is touched, so a node that
cannot run the redirection is told so by name instead of being left half-configured.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from .. import contract as c
from .iptables import Backend
from .netns import NETNS_RUN_DIR, CniError, Netns
from .desired import TunnelKind

log = logging.getLogger("zpilot.cni")

PACKAGES = {
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
    "ipset": "ipset",
    "sh": "a POSIX shell",
    "nsenter": "util-linux",
    "ip": "iproute2",
}

#: (feature, iptables-restore script exercising it the way the plan's rules do, what is missing when it fails)
_IPTABLES_PROBES = (
    ("TPROXY", f"*mangle\n-A PREROUTING -p tcp -j TPROXY --on-port {c.PORT_OUTBOUND} --on-ip 127.0.0.1"
               f" --tproxy-mark {c.TPROXY_MARK:#x}/{c.ZTUNNEL_MARK_MASK:#x}\nCOMMIT\n",
     "the TPROXY target (kernel CONFIG_NETFILTER_XT_TARGET_TPROXY, module xt_TPROXY)"),
    ("mark/connmark", f"*mangle\n-A PREROUTING -m connmark --mark {c.MARK_CONN_SKIP:#x}/{c.MARK_CONN_SKIP:#x}"
                      f" -j CONNMARK --save-mark --nfmask {c.MARK_CONN_SKIP:#x} --ctmask {c.MARK_CONN_SKIP:#x}\n"
                      f"-A PREROUTING -m mark --mark {c.MARK_SKIP:#x}/{c.MARK_SKIP:#x}"
                      f" -j MARK --set-xmark {c.MARK_OUTBOUND:#x}/{c.MARK_OUTBOUND:#x}\nCOMMIT\n",
     "the mark/connmark matches and targets (xt_mark, xt_connmark)"),
    ("REDIRECT", f"*nat\n-A OUTPUT -p tcp -m tcp --dport {c.PORT_HBONE_LOCAL}"
                 f" -j REDIRECT --to-ports {c.PORT_HBONE}\nCOMMIT\n",
     "the REDIRECT target (xt_REDIRECT, nf_nat)"),
)


def missing_tools(tools: list[str]) -> list[str]:
    return [f"{t} (package {PACKAGES.get(t, t)})" for t in tools if shutil.which(t) is None]


def check_tools(*, ipset: bool, netns: bool, backend: Backend | None = None) -> None:
    tools = ["ip", "sh"]
    tools += [backend.save, backend.restore] if backend else ["iptables-save", "iptables-restore"]
    if ipset:
        tools.append("ipset")
    if netns:
        tools.append("nsenter")
    missing = missing_tools(tools)
    if missing:
        raise CniError("missing tools, nothing was changed: " + ", ".join(missing))


@dataclass
class KernelFeatures:
    missing: dict[str, str] = field(default_factory=dict)  # feature -> what is missing / the error
    geneve: bool = False
    vxlan: bool = False


PROBE_PREFIX = "zpilot-probe-"


def _remove_stale_probes() -> None:
    """Scratch namespaces of agents that were killed mid-probe (their process is gone)."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except OSError:
        return
    for name in names:
        pid = name.removeprefix(PROBE_PREFIX)
        if name.startswith(PROBE_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


_cache: dict[str, KernelFeatures] = {}
_fallback_logged: list[bool] = []  # the VXLAN fallback is said once per process, not every reconcile


def probe_kernel(backend: Backend) -> KernelFeatures:
    """Probe once per process and backend; the kernel does not change under a running agent."""
    if backend.name in _cache:
        return _cache[backend.name]
    features = KernelFeatures()
    _remove_stale_probes()
    name = f"{PROBE_PREFIX}{os.getpid()}"
    scratch = Netns(name)
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if created.returncode != 0:
        raise CniError(
            "cannot create a scratch network namespace to probe the kernel's features (needs root, or"
            f" CAP_SYS_ADMIN and CAP_NET_ADMIN): {created.stderr.strip()}"
        )
    try:
        for feature, script, what in _IPTABLES_PROBES:
            proc = scratch.run([backend.restore, "--noflush"], input=script, check=False)
            if proc.returncode != 0:
                features.missing[feature] = f"{what}: {proc.stderr.strip()}"
        proc = scratch.run(["ipset", "create", "zpilot-probe", "hash:ip", "comment"], check=False)
        if proc.returncode != 0:
            features.missing["ipset"] = f"ip sets with comments (kernel ip_set, ip_set_hash_ip): {proc.stderr.strip()}"
        else:
            proc = scratch.run([backend.restore, "--noflush"], check=False,
                               input="*mangle\n-A PREROUTING -m set --match-set zpilot-probe src -j RETURN\nCOMMIT\n")
            if proc.returncode != 0:
                features.missing["set match"] = f"the iptables set match (xt_set): {proc.stderr.strip()}"
        with scratch.iproute() as ipr:
            for kind, attrs in (("geneve", {"geneve_id": 1, "geneve_remote": "192.0.2.1"}),
                                ("vxlan", {"vxlan_id": 1, "vxlan_group": "192.0.2.1", "vxlan_port": 6081})):
                try:
                    ipr.link("add", ifname=f"zp{kind}", kind=kind, **attrs)
                    setattr(features, kind, True)
                except Exception as exc:  # noqa: BLE001 - any failure means "not available"
                    log.debug("%s probe failed: %s", kind, exc)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    _cache[backend.name] = features
    return features


def choose_tunnel(requested: str, features: KernelFeatures) -> TunnelKind:
    """Geneve as in the article; VXLAN (same VNIs, addresses, port) where the kernel has no Geneve."""
    if requested == "vxlan":
        if not features.vxlan:
            raise CniError("--tunnel vxlan asked for, but this kernel cannot create VXLAN devices (module vxlan)")
        return TunnelKind.VXLAN
    if requested == "geneve":
        if not features.geneve:
            raise CniError("--tunnel geneve asked for, but this kernel cannot create Geneve devices (module geneve)")
        return TunnelKind.GENEVE
    if features.geneve:
        return TunnelKind.GENEVE
    if features.vxlan:
        if not _fallback_logged:
            _fallback_logged.append(True)
            log.warning(
                "this kernel has no Geneve support: using VXLAN tunnels instead (same VNIs 1000/1001, addresses"
                " and UDP port 6081); pass --tunnel vxlan to choose this explicitly"
            )
        return TunnelKind.VXLAN
    raise CniError("this kernel can create neither Geneve nor VXLAN devices (modules geneve, vxlan): cannot tunnel")


def require(features: KernelFeatures, needed: tuple[str, ...]) -> None:
    missing = [f"{k}: {v}" for k, v in features.missing.items() if k in needed]
    if missing:
        raise CniError("the kernel lacks what the redirection needs, nothing was changed: " + "; ".join(missing))

"""``zpilot cni``: plan, apply, status, cleanup and run the node agent."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import contract
from ..kube import source_flags
from .errors import CniError

if TYPE_CHECKING:  # each action imports its work when it runs: `zpilot cni --help` stays fast
    from ..kube.source import ModelSource
    from .agent import AgentOptions
    from .exit_cleanup import PodRef

log = logging.getLogger("zpilot.cni")

#: ``cni run --cleanup-on-exit``: when a stopping agent removes what it made. always: at every stop (the bare
#: flag; a rollout unmeshes the node until the next agent's first reconcile); uninstall: only when its
#: DaemonSet is gone or going (zpilot/cni/exit_cleanup.py; the chart's choice); never: `zpilot cni cleanup` does.
CLEANUP_MODES = ("always", "uninstall", "never")


def _model_args(p: argparse.ArgumentParser, *, offline: bool = False) -> None:
    if offline:  # nothing of this machine, its environment included
        p.add_argument("--node", required=True, help="the node's name in the model")
    else:
        env = contract.NODE_NAME_ENV
        p.add_argument("--node", default=os.environ.get(env) or socket.gethostname(),
                       help=f"the node's name in the model (default: ${env}, else the hostname)")
    if offline:
        p.add_argument("--manifests", type=Path, required=True, metavar="DIR",
                       help="the model: a directory of Kubernetes manifests")
    else:
        source_flags.add_arguments(p, manifests_help="read this directory of Kubernetes manifests instead of the"
                                                     " cluster")
    p.add_argument("--fail-closed", action="store_true",
                   help="with no ready ztunnel, drop meshed pods' TCP instead of letting it run unmeshed")
    p.add_argument("--ztunnel-iface", default=contract.POD_INTERFACE, metavar="IFACE",
                   help=f"the ztunnel pod's interface ({contract.POD_INTERFACE})")


def _netns_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", metavar="NAME|PATH", help="the node's network namespace (default: the agent's own)")
    p.add_argument("--ztunnel-netns", metavar="NAME|PATH",
                   help="the ztunnel pod's network namespace; its side of the plan is applied only when given")
    p.add_argument("--iptables", choices=("auto", "legacy", "nft"), default="auto",
                   help="iptables backend (auto: the one already holding more rules, as the 2022 agent chose)")


def _discovered_args(p: argparse.ArgumentParser) -> None:
    """What the agent finds on the node; a flag overrides it."""
    p.add_argument("--ztunnel-veth", metavar="IFACE",
                   help="host side of the ztunnel pod's veth (default: found from the route to the ztunnel's IP)")
    p.add_argument("--host-ip", metavar="IP",
                   help="the node's address on the pod network (default: its address in the pod CIDR, else InternalIP)")
    p.add_argument("--mtu", type=_mtu, help="tunnel MTU (default: the ztunnel veth's MTU minus 50)")
    p.add_argument("--tunnel", choices=("auto", "geneve", "vxlan"), default="auto",
                   help="tunnel devices: Geneve as in 2022, VXLAN where the kernel has no Geneve (auto)")


def _offline_args(p: argparse.ArgumentParser) -> None:
    """The same facts for ``plan``, which looks at nothing but its arguments and the model."""
    p.add_argument("--ztunnel-veth", metavar="IFACE",
                   help="host side of the ztunnel pod's veth (only the node knows it: a placeholder is shown)")
    p.add_argument("--host-ip", metavar="IP",
                   help="the node's address on the pod network (default: the Node's InternalIP in the model)")
    p.add_argument("--mtu", type=_mtu, help="tunnel MTU (default: a 1460-byte veth's less the tunnel overhead)")
    p.add_argument("--tunnel", choices=("geneve", "vxlan"), default="geneve",
                   help="tunnel devices: Geneve as in 2022 (default), or VXLAN")


def _mtu(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an MTU (a whole number of bytes)") from None
    if not 576 <= value <= 65535:  # IPv4's minimum datagram size; an interface's maximum
        raise argparse.ArgumentTypeError(f"MTU {value} is outside 576..65535")
    return value


def _source(args: argparse.Namespace) -> ModelSource:
    """The model source the flags name: the manifest directory, or the cluster as the node sees it
    (its own Node and pods, and the namespaces: what its plan is built from)."""
    from ..kube.directory import ManifestDirectorySource

    if args.manifests is not None and not hasattr(args, "kubeconfig"):  # `cni plan`: offline, manifests only
        return ManifestDirectorySource(args.manifests)
    if args.manifests is not None:  # no credentials loaded: their module brings the Kubernetes client (0.5 s CPU
        # for every `zpilot cni status`, which the world's tests run again and again)
        problem = source_flags.problem(args)
        if problem is not None:
            raise CniError(problem)
        return ManifestDirectorySource(args.manifests, interval=getattr(args, "poll", 0.05))
    cluster = source_flags.credentials(args)  # loaded once, by the check: the watch uses what it loaded
    problem = source_flags.problem(args, cluster)
    if problem is not None:
        raise CniError(problem)
    from ..kube.api_resources import node_agent_watches
    from ..kube.watch import ApiWatchSource

    return ApiWatchSource(cluster, node_agent_watches(args.node))


def _options(args: argparse.Namespace) -> AgentOptions:
    from .agent import AgentOptions

    return AgentOptions(
        node=args.node, netns=args.netns, ztunnel_netns=args.ztunnel_netns,
        ztunnel_veth=args.ztunnel_veth, host_ip=args.host_ip, mtu=args.mtu, ztunnel_iface=args.ztunnel_iface,
        tunnel=args.tunnel, fail_closed=args.fail_closed, iptables=args.iptables,
    )


def cmd_plan(args: argparse.Namespace) -> int:
    """The plan from the model and the arguments alone: no namespace, route or kernel is looked at."""
    from ..kube.source import load_model
    from .desired import TunnelKind
    from .plan import UNKNOWN_ZTUNNEL_VETH, NodeFacts, build_plan
    from .render import render_plan

    index = load_model(_source(args))  # its problems are logged once, by the source
    facts = NodeFacts(ztunnel_veth=args.ztunnel_veth or UNKNOWN_ZTUNNEL_VETH, host_ip=args.host_ip,
                      mtu=args.mtu or NodeFacts.mtu, tunnel_kind=TunnelKind(args.tunnel),
                      ztunnel_iface=args.ztunnel_iface)
    plan = build_plan(index, args.node, facts, fail_closed=args.fail_closed)
    if plan.ztunnel is not None:
        if not args.ztunnel_veth:
            print(f"# the host-side veth of {plan.ztunnel.ref} is known only on the node: shown as"
                  f" {UNKNOWN_ZTUNNEL_VETH} (pass --ztunnel-veth)", file=sys.stderr)
        if not args.host_ip:
            print(f"# node address {plan.host_ip}: the Node's InternalIP; the agent uses the node's own address in"
                  " its pod CIDR where it has one (pass --host-ip)", file=sys.stderr)
    sys.stdout.write(render_plan(plan))
    return 0


def _print_reports(reports, *, verb: str) -> bool:
    ok = True
    for report in reports:
        print(report.summary())
        for change in report.changes:
            print(f"  {verb} {change}")
        ok = ok and report.ok
    return ok


def cmd_apply(args: argparse.Namespace) -> int:
    from .agent import NodeAgent

    agent = NodeAgent(_options(args), _source(args))
    plan, reports = agent.reconcile_once()
    print(f"Node {plan.node.name}: mode {plan.mode.value}")
    for alert in plan.alerts:
        print(f"!!! {alert}")
    return 0 if _print_reports(reports, verb="changed:") else 1


def cmd_status(args: argparse.Namespace) -> int:
    from . import counters
    from .agent import NodeAgent
    from .desired import Mode

    agent = NodeAgent(_options(args), _source(args))
    plan, reports = agent.reconcile_once(dry_run=True)
    line = f"Node {plan.node.name}: mode {plan.mode.value}"
    if plan.ztunnel is not None:
        kind = plan.node_side.tunnels[0].kind.value if plan.node_side.tunnels else "-"
        line += (f"; ztunnel {plan.ztunnel.ref} {plan.ztunnel.ip}"
                 f" via {_veth(plan)}; tunnels {kind}")
    line += f"; {len(plan.meshed)} meshed pod(s)"
    print(line)
    for alert in plan.alerts:
        print(f"!!! {alert}")
    in_sync = True
    for report in reports:
        if report.errors:
            print(f"{report.netns}: cannot read: {'; '.join(report.errors)}")
            in_sync = False
        elif report.changes:
            print(f"{report.netns}: OUT OF SYNC, {len(report.changes)} difference(s) (`zpilot cni apply` fixes):")
            for change in report.changes:
                print(f"  {change}")
            in_sync = False
        else:
            print(f"{report.netns}: in sync")
    for reconciler, side in ((agent.node, plan.node_side), (agent.ztunnel, plan.ztunnel_side)):
        if reconciler is not None and side is not None and not side.is_empty:
            try:
                print(f"{reconciler.netns}: {counters.summary(reconciler.netns, reconciler.backend, side)}")
            except CniError as exc:
                print(f"{reconciler.netns}: counters unavailable: {exc}")
    healthy = in_sync and plan.mode in (Mode.REDIRECT, Mode.IDLE)
    return 0 if healthy else 1


def _veth(plan) -> str:
    from ..model.addresses import host_cidr

    for route in plan.node_side.routes:
        if plan.ztunnel is not None and route.dst == host_cidr(plan.ztunnel.ip):
            return route.dev
    return "-"


def cmd_cleanup(args: argparse.Namespace) -> int:
    from .agent import AgentOptions, NodeAgent

    agent = NodeAgent(AgentOptions(node="", netns=args.netns, ztunnel_netns=args.ztunnel_netns,
                                   iptables=args.iptables))
    return 0 if _print_reports(agent.cleanup(), verb="removed:") else 1


def _own_pod(args: argparse.Namespace) -> PodRef | None:
    """The agent's pod for ``--cleanup-on-exit=uninstall`` (checked before anything starts), else None."""
    if args.cleanup_on_exit != "uninstall":
        return None
    from .exit_cleanup import PodRef  # (it brings the Kubernetes client: only for the mode that asks the API)

    if args.manifests is not None:
        raise CniError("--cleanup-on-exit=uninstall asks the Kubernetes API whether the agent's DaemonSet is"
                       " gone: not with --manifests (use always or never)")
    if not args.pod:
        raise CniError(f"--cleanup-on-exit=uninstall needs the agent's own pod: set ${contract.POD_NAMESPACE_ENV}"
                       f" and ${contract.POD_NAME_ENV} (the downward API) or pass --pod NAMESPACE/NAME")
    namespace, slash, name = args.pod.partition("/")
    if not slash:
        raise CniError(f"--pod {args.pod[:80]!r}: give NAMESPACE/NAME")
    return PodRef.parse(namespace, name)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from .agent import NodeAgent

    own_pod = _own_pod(args)
    source = _source(args)
    agent = NodeAgent(_options(args), source)
    on_stop = {"always": "removing the rules", "never": "rules stay in place; `zpilot cni cleanup` removes them",
               "uninstall": "asking the API server whether the agent's DaemonSet is gone"}[args.cleanup_on_exit]

    async def main() -> bool:
        """Run until SIGTERM; whether to remove the rules now."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        agent_pid = os.getpid()

        # Not loop.add_signal_handler: its wakeup socket is inherited by the processes pyroute2 forks
        # to enter a namespace, and the SIGTERM pyroute2 ends them with would reach this loop.
        def _stop(signum: int, _frame) -> None:
            if os.getpid() != agent_pid:  # such a forked helper: end it as SIGTERM would
                os._exit(128 + signum)
            log.warning("signal %s: stopping (%s)", signum, on_stop)
            loop.call_soon_threadsafe(stop.set)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _stop)
        log.warning("zpilot cni agent for node %s: watching %s, resync every %.0f s", args.node, agent.source,
                    args.resync)
        await agent.run(stop, resync=args.resync)
        if own_pod is not None:
            from ..kube.watch import ApiWatchSource  # only here: with --manifests the Kubernetes client is not loaded
            from .exit_cleanup import decide, log_decision

            assert isinstance(source, ApiWatchSource)  # (_own_pod refused --manifests)
            decision = await decide(source.credentials, own_pod)
            log_decision(decision)
            return decision.cleanup
        return args.cleanup_on_exit == "always"

    if asyncio.run(main()):
        _print_reports(agent.cleanup(), verb="removed:")
    return 0


def cmd_ztunnel_setup(args: argparse.Namespace) -> int:
    """The ztunnel pod's side alone, from inside it (or with --netns): what the 2022 init container did."""
    from . import preflight
    from .discover import discover_in_ztunnel
    from .netns import Netns
    from .desired import ZTUNNEL_OWNERSHIP, NetnsPlan
    from .plan import NodeFacts, check_ifname, ztunnel_side
    from .reconcile import Reconciler

    netns = Netns(args.netns)
    netns.check_exists()
    reconciler = Reconciler(netns, iptables_backend=args.iptables)
    if args.cleanup:
        return 0 if _print_reports([reconciler.reconcile(NetnsPlan.empty(ZTUNNEL_OWNERSHIP))], verb="removed:") else 1
    check_ifname("--iface", args.iface)
    found = discover_in_ztunnel(netns, args.iface)
    ztunnel_ip: str | None = args.ztunnel_ip or found.get("ztunnel_ip")
    host_ip: str | None = args.host_ip or found.get("host_ip")
    for flag, value, what in (("--ztunnel-ip", ztunnel_ip, f"IPv4 address on {args.iface}"),
                              ("--host-ip", host_ip, f"default route via {args.iface}")):
        if value is None:
            raise CniError(f"found no {what} in {netns}: pass {flag}")
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise CniError(f"{flag} {value!r} is not an IPv4 address") from None
    assert ztunnel_ip is not None and host_ip is not None  # checked just above
    preflight.check_tools(ipset=False, netns=bool(args.netns), backend=reconciler.backend)
    features = preflight.probe_kernel(reconciler.backend)
    preflight.require(features, ("TPROXY", "mark/connmark", "REDIRECT"))
    facts = NodeFacts(mtu=args.mtu or found.get("mtu", NodeFacts.mtu), ztunnel_iface=args.iface,
                      tunnel_kind=preflight.choose_tunnel(args.tunnel, features))
    report = reconciler.reconcile(ztunnel_side(ztunnel_ip, host_ip, facts), dry_run=args.dry_run)
    print(f"ztunnel {ztunnel_ip}, node {host_ip}, tunnels {facts.tunnel_kind.value} mtu {facts.mtu}")
    return 0 if _print_reports([report], verb="would change:" if args.dry_run else "changed:") else 1


def _guard(func):
    """Operator errors print one clear line and exit 2, instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        from ..kube.source import SourceError

        try:
            return func(args)
        except (CniError, SourceError) as exc:
            print(f"zpilot cni: error: {exc}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    cni = subparsers.add_parser("cni", help="the CNI node agent: the node's and ztunnel's redirection rules",
                                description="Plan, apply, check, remove and run the node's redirection to its"
                                            " ztunnel (docs/cni.md).")
    sub = cni.add_subparsers(dest="cni_command", metavar="ACTION", required=True)

    p = sub.add_parser("plan", help="print the rules, routes and devices the node would get (offline)",
                       description="The node's plan from the model and these arguments alone: nothing on this"
                                   " machine is looked at (the agent discovers what is left to arguments here).")
    _model_args(p, offline=True)
    _offline_args(p)
    p.set_defaults(func=_guard(cmd_plan))

    for name, func, help_text in (
        ("apply", cmd_apply, "reconcile the node (and ztunnel) namespace with the plan once"),
        ("status", cmd_status, "mode, alerts and any difference between the plan and the kernel"),
    ):
        p = sub.add_parser(name, help=help_text)
        _model_args(p)
        _netns_args(p)
        _discovered_args(p)
        p.set_defaults(func=_guard(func))

    p = sub.add_parser("cleanup", help="remove everything zpilot created, and nothing else")
    _netns_args(p)
    p.set_defaults(func=_guard(cmd_cleanup))

    p = sub.add_parser("ztunnel-setup", help="only the ztunnel pod's side, from inside it (no model needed)",
                       description="Tunnels, TPROXY rules, ip rules and routes of the ztunnel pod, found from the pod's"
                                   " own interface and default gateway: the job of the 2022 ztunnel init container.")
    p.add_argument("--netns", metavar="NAME|PATH", help="the ztunnel pod's network namespace (default: this process's own)")
    p.add_argument("--iface", default=contract.POD_INTERFACE, help=f"the pod's interface ({contract.POD_INTERFACE})")
    p.add_argument("--ztunnel-ip", metavar="IP", help="the pod's IP (default: the interface's IPv4 address)")
    p.add_argument("--host-ip", metavar="IP", help="the node's address (default: the default gateway)")
    p.add_argument("--mtu", type=_mtu, help="tunnel MTU (default: the interface's MTU minus 50)")
    p.add_argument("--tunnel", choices=("auto", "geneve", "vxlan"), default="auto",
                   help="tunnel devices: Geneve as in 2022, VXLAN where the kernel has no Geneve (auto)")
    p.add_argument("--iptables", choices=("auto", "legacy", "nft"), default="auto",
                   help="iptables backend (auto: the one already holding more rules)")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument("--cleanup", action="store_true", help="remove the ztunnel side instead")
    p.set_defaults(func=_guard(cmd_ztunnel_setup))

    p = sub.add_parser("run", help="the agent: reconcile on every model change and periodically")
    _model_args(p)
    _netns_args(p)
    _discovered_args(p)
    p.add_argument("--poll", type=float, default=1.0, help="with --manifests: seconds between looks at the files (1)")
    p.add_argument("--resync", type=float, default=30.0, help="seconds between full reconciles (30)")
    p.add_argument("--cleanup-on-exit", choices=CLEANUP_MODES, nargs="?", const="always", default="never",
                   metavar="always|uninstall|never",
                   help="on SIGTERM, remove everything: always (the bare flag), uninstall (only when the API server"
                        " says the agent's DaemonSet is gone or being deleted: a rollout or restart leaves the rules,"
                        " and the next agent converges), never (the default)")
    pod_env = os.environ.get(contract.POD_NAMESPACE_ENV), os.environ.get(contract.POD_NAME_ENV)
    p.add_argument("--pod", metavar="NAMESPACE/NAME", default="/".join(pod_env) if all(pod_env) else None,
                   help=f"the agent's own pod, for --cleanup-on-exit=uninstall (default: ${contract.POD_NAMESPACE_ENV}"
                        f"/${contract.POD_NAME_ENV})")
    p.set_defaults(func=_guard(cmd_run))

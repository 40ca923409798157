"""The node agent: from the model to a plan to the kernel, once or for as long as it runs.

``reconcile_once`` is what ``zpilot cni apply`` does; ``run`` repeats it on every model the
source yields (any :class:`~zpilot.kube.source.ModelSource`: the manifest directory today, the
Kubernetes API watch later, a fake one in tests) and every ``resync`` seconds regardless, so
that a rule deleted by hand, or a table flushed by another agent, comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable

from ..kube.source import ModelEvent, ModelSource, SourceError, load_model
from ..model.index import MeshIndex
from . import preflight
from .changes import Report
from .discover import discover
from .iptables import Backend, detect_backend
from .netns import CniError, Netns
from .desired import NODE_OWNERSHIP, ZTUNNEL_OWNERSHIP, Mode, NetnsPlan, NodePlan
from .plan import NodeFacts, build_plan
from .reconcile import Reconciler

log = logging.getLogger("zpilot.cni")

#: After a failed reconcile, try again this soon (not at every poll: the log would flood).
RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class AgentOptions:
    node: str
    netns: str | None = None  # the node's namespace (None: the agent's own)
    ztunnel_netns: str | None = None  # the ztunnel pod's namespace; None: its side is not applied
    ztunnel_veth: str | None = None  # overrides discovery
    host_ip: str | None = None  # overrides discovery
    mtu: int | None = None  # overrides discovery
    ztunnel_iface: str = "eth0"
    tunnel: str = "auto"  # auto | geneve | vxlan
    fail_closed: bool = False
    iptables: str = "auto"  # auto | legacy | nft


def _backend_for(options: AgentOptions, reconciler: Reconciler | None) -> Backend:
    if reconciler is not None:
        return reconciler.backend
    return detect_backend(Netns(options.netns), options.iptables)


def make_plan(
    options: AgentOptions,
    index: MeshIndex,
    *,
    reconciler: Reconciler | None = None,
) -> NodePlan:
    """Discover the node's facts, choose the tunnel kind and build the plan for ``index``."""
    facts: dict = {}
    node = index.nodes.get(options.node)
    if node is not None:
        facts = discover(Netns(options.netns), node, index.ztunnel_on(options.node),
                         index.meshed_workloads_on(options.node))
    overrides = {k: v for k, v in (("ztunnel_veth", options.ztunnel_veth), ("host_ip", options.host_ip),
                                   ("mtu", options.mtu)) if v is not None}
    facts.update(overrides)
    features = preflight.probe_kernel(_backend_for(options, reconciler))
    facts["tunnel_kind"] = preflight.choose_tunnel(options.tunnel, features)
    facts["ztunnel_iface"] = options.ztunnel_iface
    return build_plan(index, options.node, NodeFacts(**facts), fail_closed=options.fail_closed)


def required_features(plan: NodePlan) -> tuple[str, ...]:
    if plan.mode is Mode.REDIRECT:
        return ("TPROXY", "mark/connmark", "REDIRECT", "ipset", "set match")
    if plan.mode is Mode.FAIL_CLOSED:
        return ("ipset", "set match")
    return ()


class NodeAgent:
    """One node's agent: its model source and a reconciler per target namespace.

    ``source`` may be None for what needs no model (:meth:`cleanup`)."""

    def __init__(self, options: AgentOptions, source: ModelSource | None = None) -> None:
        self.options = options
        self._source = source
        self.node = Reconciler(Netns(options.netns), iptables_backend=options.iptables)
        self.ztunnel = (
            Reconciler(Netns(options.ztunnel_netns), iptables_backend=options.iptables)
            if options.ztunnel_netns else None
        )
        self._last_alerts: tuple[str, ...] = ()

    def preflight(self) -> None:
        """Namespaces exist and tools are installed: checked before anything is changed."""
        for netns in (self.node.netns, self.ztunnel.netns if self.ztunnel else None):
            if netns is not None:
                netns.check_exists()
        preflight.check_tools(ipset=True, netns=bool(self.options.netns or self.options.ztunnel_netns),
                              backend=self.node.backend)

    @property
    def source(self) -> ModelSource:
        if self._source is None:
            raise CniError("no model source: pass --manifests DIR")
        return self._source

    def plan(self, index: MeshIndex | None = None) -> NodePlan:
        """The plan for ``index`` (default: the source's model now)."""
        index = index if index is not None else load_model(self.source)
        return make_plan(self.options, index, reconciler=self.node)

    def _alert(self, plan: NodePlan) -> None:
        for alert in plan.alerts:
            log.warning("%s", alert)
        if self._last_alerts and not plan.alerts:
            if plan.ztunnel is not None:
                log.warning("%s: %s is ready: redirecting meshed pods again", plan.node.ref, plan.ztunnel.ref)
            else:
                log.warning("%s: no enrolled pods left without a ztunnel", plan.node.ref)
        self._last_alerts = plan.alerts

    def reconcile_once(
        self, index: MeshIndex | None = None, *, dry_run: bool = False
    ) -> tuple[NodePlan, list[Report]]:
        """Bring the namespaces to the plan of ``index`` (default: the source's model now)."""
        self.preflight()
        plan = self.plan(index)
        self._alert(plan)
        if not dry_run:
            features = preflight.probe_kernel(self.node.backend)
            preflight.require(features, required_features(plan))
        reports = [self.node.reconcile(plan.node_side, dry_run=dry_run)]
        if self.ztunnel is not None:
            side = plan.ztunnel_side or NetnsPlan.empty(ZTUNNEL_OWNERSHIP)
            reports.append(self.ztunnel.reconcile(side, dry_run=dry_run))
        return plan, reports

    def cleanup(self) -> list[Report]:
        """Remove everything zpilot owns in the namespaces; needs no model."""
        reports = [self.node.reconcile(NetnsPlan.empty(NODE_OWNERSHIP))]
        if self.ztunnel is not None:
            reports.append(self.ztunnel.reconcile(NetnsPlan.empty(ZTUNNEL_OWNERSHIP)))
        return reports

    # -- the agent loop --------------------------------------------------------------------------

    async def run(
        self,
        stop: asyncio.Event,
        *,
        resync: float = 30.0,
        on_reconcile: Callable[[NodePlan | None, list[Report]], None] | None = None,
    ) -> None:
        """Reconcile on every model the source yields and every ``resync`` seconds until ``stop`` is set.

        Errors are logged and retried; they never end the loop, since an agent that exits leaves
        the node as it was, which is the worst moment to stop looking at it. The kernel work runs
        in a worker thread, so the source keeps being read meanwhile.
        """
        latest: list[ModelEvent] = []
        changed = asyncio.Event()
        follower = asyncio.create_task(self._follow(latest, changed), name="model-source")
        next_resync: float | None = None  # none before the first model
        try:
            while not stop.is_set():
                timeout = None if next_resync is None else max(0.0, next_resync - time.monotonic())
                await _first_of(stop, changed, timeout)
                if stop.is_set() or not latest:
                    continue
                why = "model changed" if changed.is_set() else "periodic resync"
                changed.clear()
                plan: NodePlan | None = None
                reports: list[Report] = []
                try:
                    plan, reports = await asyncio.to_thread(self.reconcile_once, latest[-1].index)
                    for report in reports:
                        if report.errors or report.changes:
                            log.log(logging.ERROR if report.errors else logging.INFO, "%s (%s)", report.summary(), why)
                    next_resync = time.monotonic() + resync
                except CniError as exc:
                    log.error("reconcile failed (%s), retrying in %.0f s: %s", why, RETRY_SECONDS, exc)
                    next_resync = time.monotonic() + min(resync, RETRY_SECONDS)
                except Exception:  # a bug must not stop the agent watching the node: log it whole, retry
                    log.exception("reconcile failed unexpectedly (%s), retrying in %.0f s", why, RETRY_SECONDS)
                    next_resync = time.monotonic() + min(resync, RETRY_SECONDS)
                if on_reconcile is not None:
                    on_reconcile(plan, reports)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _follow(self, latest: list[ModelEvent], changed: asyncio.Event) -> None:
        """Keep ``latest`` holding the source's newest model; a failing source is read again."""
        while True:
            try:
                async for event in self.source.events():
                    latest[:] = [event]
                    changed.set()
                log.error("%s stopped; reading it again in %.0f s", self.source, RETRY_SECONDS)
            except (SourceError, CniError, OSError) as exc:
                log.error("cannot read the model (%s), retrying in %.0f s", exc, RETRY_SECONDS)
            except Exception:
                log.exception("reading the model failed unexpectedly, retrying in %.0f s", RETRY_SECONDS)
            await asyncio.sleep(RETRY_SECONDS)


async def _first_of(stop: asyncio.Event, changed: asyncio.Event, timeout: float | None) -> None:
    """Until either event is set or ``timeout`` passes."""
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

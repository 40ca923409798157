"""Reconcile one network namespace against its plan: read, compare, change only the difference.

Concerns are handled one after another, each reading the kernel just before it changes it, in
an order that keeps traffic flowing through every intermediate state:

- setting up: ipset entries, tunnels, sysctls, routes, rules, and iptables last, so packets are
  only marked once the routing they are marked for exists (then an unused set is destroyed);
- tearing down: iptables first (stop marking), then rules, routes, tunnels and the set;
- the conntrack entries of connections redirected for pods no longer captured go as soon as
  nothing marks those pods' packets any more: right after the set's entries (setting up) or
  iptables (tearing down), so that a SYN the pod retransmits meanwhile is DNATed rather than sent
  into nothing (conntrack.py says why they must go).

Every step is idempotent against what it reads, so a failure half-way (reported, never hidden)
leaves a state the next reconcile converges from. Each returns its concern's :class:`Diff`, which
the :class:`Report` gathers.
"""

from __future__ import annotations

import logging
from typing import Callable

from pyroute2.netlink.exceptions import NetlinkError

from . import conntrack, ipset, iptables, links, routing, sysctl
from .changes import Diff, Report
from .iptables import Backend
from .netns import CniError, Netns, PartialFailure
from .desired import NetnsPlan

log = logging.getLogger("zpilot.cni")


class Reconciler:
    """Owns one target namespace; remembers the iptables backend chosen for it."""

    def __init__(self, netns: Netns, *, iptables_backend: str = "auto") -> None:
        self.netns = netns
        self._backend_choice = iptables_backend
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = iptables.detect_backend(self.netns, self._backend_choice)
            log.info("%s: using iptables backend %s (%s)", self.netns, self._backend.name, self._backend.restore)
        return self._backend

    # -- one step per concern ------------------------------------------------------------------

    # Each step compares, changes unless ``dry_run``, and returns what it found. A step that fails
    # part-way raises PartialFailure with the changes it did make.

    def _ipset_entries(self, plan: NetnsPlan, dry_run: bool) -> Diff:
        name = plan.ownership.ipset
        if name is None or plan.ipset is None:
            return Diff(None)
        d = ipset.diff(name, plan.ipset, ipset.read(self.netns, name))
        if not dry_run:
            ipset.apply(self.netns, name, d)
        return d

    def _ipset_destroy(self, plan: NetnsPlan, dry_run: bool) -> Diff:
        name = plan.ownership.ipset
        if name is None or plan.ipset is not None:
            return Diff(None)
        d = ipset.diff(name, None, ipset.read(self.netns, name))
        if d.work.destroy and not dry_run:
            ipset.destroy(self.netns, name)
        return d

    def _links(self, plan: NetnsPlan, dry_run: bool) -> Diff:
        with self.netns.iproute() as ipr:
            d = links.diff(plan.tunnels, links.read(ipr, plan.ownership.links), plan.ownership.links)
        if not dry_run:
            links.apply(self.netns, d)
        return d

    def _sysctls(self, plan: NetnsPlan, dry_run: bool) -> Diff:
        d = sysctl.diff(plan.sysctls, sysctl.read(self.netns, plan.sysctls))
        if not dry_run:
            sysctl.apply(self.netns, d)
        return d

    def _routes(self, plan: NetnsPlan, dry_run: bool) -> Diff:
        with self.netns.iproute() as ipr:
            d = routing.diff_routes(plan.routes, routing.read_routes(ipr, plan.ownership.tables))
        if not dry_run:
            routing.apply(self.netns, d)
        return d

    def _rules(self, plan: NetnsPlan, dry_run: bool) -> Diff:
        with self.netns.iproute() as ipr:
            d = routing.diff_rules(plan.rules, routing.read_rules(ipr, plan.ownership.rule_priorities))
        if not dry_run:
            routing.apply(self.netns, d)
        return d

    def _iptables(self, plan: NetnsPlan, dry_run: bool) -> Diff:
        tables = plan.ownership.iptables_tables
        d = iptables.diff(plan, iptables.read_tables(self.netns, self.backend, tables))
        if d.changes and not dry_run:
            iptables.apply(self.netns, self.backend, d)
            left = iptables.diff(plan, iptables.read_tables(self.netns, self.backend, tables))
            if left.changes:
                # the rule text is not what this iptables prints back: it would be rewritten forever
                raise CniError(
                    f"iptables in {self.netns} does not print back the rules as planned: "
                    + "; ".join(str(ch) for ch in left.changes)
                )
        return d

    def _conntrack(self, plan: NetnsPlan, dry_run: bool) -> Diff:
        if plan.ownership.ipset is None:  # not the node's namespace: no pod is redirected here
            return Diff(None)
        captured = plan.ipset is not None and bool(plan.ipset.entries)
        sources = plan.uncaptured if captured else None
        d = conntrack.diff(sources, conntrack.read(self.netns, sources))
        if d.changes and not dry_run:
            conntrack.apply(self.netns, d)
        return d

    # -- the whole namespace ----------------------------------------------------------------------

    def steps(self, plan: NetnsPlan) -> list[Callable[[NetnsPlan, bool], Diff]]:
        if plan.is_empty:
            return [self._iptables, self._conntrack, self._rules, self._routes, self._links, self._ipset_destroy]
        return [self._ipset_entries, self._conntrack, self._links, self._sysctls, self._routes, self._rules,
                self._iptables, self._ipset_destroy]

    def reconcile(self, plan: NetnsPlan, *, dry_run: bool = False) -> Report:
        """Make the namespace match ``plan`` (or with ``dry_run``, only list what would change)."""
        report = Report(str(self.netns))
        try:
            self.netns.check_exists()
            for step in self.steps(plan):
                report.add(step(plan, dry_run))
        except PartialFailure as exc:
            report.changes += exc.done
            report.errors.append(str(exc))
        except (CniError, NetlinkError, OSError) as exc:
            report.errors.append(str(exc))
        for change in report.changes:
            log.log(logging.DEBUG if dry_run else logging.INFO, "%s: %s", self.netns, change)
        if report.errors:
            log.error("%s", report.summary())
        return report

"""Reconcile one network namespace against its plan: read, compare, change only the difference.

Concerns are handled one after another, each reading the kernel just before it changes it, in
an order that keeps traffic flowing through every intermediate state:

- setting up: ipset entries, tunnels, sysctls, routes, rules, and iptables last, so packets are
  only marked once the routing they are marked for exists (then an unused set is destroyed);
- tearing down: iptables first (stop marking), then rules, routes, tunnels and the set.

Every step is idempotent against what it reads, so a failure half-way (reported, never hidden)
leaves a state the next reconcile converges from.
"""

from __future__ import annotations

import logging
from typing import Callable

from pyroute2.netlink.exceptions import NetlinkError

from . import ipset, iptables, links, routing, sysctl
from .changes import Change, Report
from .iptables import Backend
from .netns import CniError, Netns, PartialFailure
from .plan import NetnsPlan

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

    def _ipset_entries(self, plan: NetnsPlan, dry_run: bool) -> list[Change]:
        name = plan.ownership.ipset
        if name is None or plan.ipset is None:
            return []
        d = ipset.diff(name, plan.ipset, ipset.read(self.netns, name))
        if not dry_run:
            ipset.apply(self.netns, name, d)
        return d.changes

    def _ipset_destroy(self, plan: NetnsPlan, dry_run: bool) -> list[Change]:
        name = plan.ownership.ipset
        if name is None or plan.ipset is not None:
            return []
        d = ipset.diff(name, None, ipset.read(self.netns, name))
        if d.destroy and not dry_run:
            ipset.destroy(self.netns, name)
        return d.changes

    def _links(self, plan: NetnsPlan, dry_run: bool) -> list[Change]:
        with self.netns.iproute() as ipr:
            ops = links.diff(plan.tunnels, links.read(ipr, plan.ownership.links), plan.ownership.links)
        return [ch for ch, _ in ops] if dry_run else links.apply(self.netns, ops)

    def _sysctls(self, plan: NetnsPlan, dry_run: bool) -> list[Change]:
        todo = sysctl.diff(plan.sysctls, sysctl.read(self.netns, plan.sysctls))
        if dry_run:
            return [Change("sysctl", "update", f"{s.path.replace('/', '.')} = {s.value}") for s in todo]
        return sysctl.apply(self.netns, todo)

    def _routes(self, plan: NetnsPlan, dry_run: bool) -> list[Change]:
        with self.netns.iproute() as ipr:
            ops = routing.diff_routes(plan.routes, routing.read_routes(ipr, plan.ownership.tables))
        return [ch for ch, _ in ops] if dry_run else routing.apply(self.netns, ops)

    def _rules(self, plan: NetnsPlan, dry_run: bool) -> list[Change]:
        with self.netns.iproute() as ipr:
            ops = routing.diff_rules(plan.rules, routing.read_rules(ipr, plan.ownership.rule_priorities))
        return [ch for ch, _ in ops] if dry_run else routing.apply(self.netns, ops)

    def _iptables(self, plan: NetnsPlan, dry_run: bool) -> list[Change]:
        tables = plan.ownership.iptables_tables
        diffs = iptables.diff(plan, iptables.read_tables(self.netns, self.backend, tables))
        changes = [ch for d in diffs.values() for ch in d.changes]
        if diffs and not dry_run:
            iptables.apply(self.netns, self.backend, diffs)
            left = iptables.diff(plan, iptables.read_tables(self.netns, self.backend, tables))
            if left:
                # the rule text is not what this iptables prints back: it would be rewritten forever
                raise CniError(
                    f"iptables in {self.netns} does not print back the rules as planned: "
                    + "; ".join(str(ch) for d in left.values() for ch in d.changes)
                )
        return changes

    # -- the whole namespace ----------------------------------------------------------------------

    def steps(self, plan: NetnsPlan) -> list[Callable[[NetnsPlan, bool], list[Change]]]:
        if plan.is_empty:
            return [self._iptables, self._rules, self._routes, self._links, self._ipset_destroy]
        return [self._ipset_entries, self._links, self._sysctls, self._routes, self._rules, self._iptables,
                self._ipset_destroy]

    def reconcile(self, plan: NetnsPlan, *, dry_run: bool = False) -> Report:
        """Make the namespace match ``plan`` (or with ``dry_run``, only list what would change)."""
        report = Report(str(self.netns))
        try:
            self.netns.check_exists()
            for step in self.steps(plan):
                report.changes += step(plan, dry_run)
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

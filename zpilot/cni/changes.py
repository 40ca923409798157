"""What reconciling finds and does: one :class:`Diff` per concern, gathered into a :class:`Report`.

Every reconciler (``iptables``, ``ipset``, ``links``, ``routing``, ``sysctl``) compares its part
of the plan with what the kernel holds and returns the same shape, so the reconciler, ``zpilot
cni apply/status`` and the agent's log report all of them alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, TypeVar

W = TypeVar("W")


@dataclass(frozen=True)
class Change:
    concern: str  # iptables | ipset | link | sysctl | route | rule
    action: str  # add | remove | update
    what: str  # the object, as an operator would name it

    def __str__(self) -> str:
        return f"{self.concern}: {self.action} {self.what}"


@dataclass
class Diff(Generic[W]):
    """Desired against actual for one concern in one namespace.

    ``changes`` is what differs, in the order it would be changed (and what the operator is
    told); ``unchanged`` counts the objects already as planned; ``work`` is how that concern's
    ``apply`` makes the changes: netlink operations, an ``iptables-restore`` or ``ipset restore``
    script, sysctl writes.
    """

    work: W
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0

    @property
    def in_sync(self) -> bool:
        return not self.changes


@dataclass
class Report:
    """The outcome of one reconcile of one network namespace."""

    netns: str
    changes: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unchanged: int = 0  # objects found as planned

    def add(self, diff: Diff) -> None:
        self.changes += diff.changes
        self.unchanged += diff.unchanged

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def in_sync(self) -> bool:
        return self.ok and not self.changes

    def summary(self) -> str:
        if self.errors:
            return f"{self.netns}: FAILED after {len(self.changes)} change(s): " + "; ".join(self.errors)
        if not self.changes:
            return f"{self.netns}: in sync, no changes ({self.unchanged} as planned)"
        actions = Counter(ch.action for ch in self.changes)
        detail = ", ".join(f"{n} {action}" for action, n in sorted(actions.items()))
        return f"{self.netns}: {len(self.changes)} change(s) ({detail}), {self.unchanged} already as planned"

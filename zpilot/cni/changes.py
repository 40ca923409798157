"""A change the reconciler makes (or would make): what is reported to the operator for each difference."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Change:
    concern: str  # iptables | ipset | link | sysctl | route | rule
    action: str  # add | remove | update
    what: str  # the object, as an operator would name it

    def __str__(self) -> str:
        return f"{self.concern}: {self.action} {self.what}"


@dataclass
class Report:
    """The outcome of one reconcile of one network namespace."""

    netns: str
    changes: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

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
            return f"{self.netns}: in sync, no changes"
        return f"{self.netns}: {len(self.changes)} change(s)"

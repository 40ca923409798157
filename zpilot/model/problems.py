"""Problems with input: reported once, naming the object, and never fatal.

Bad input is the normal case for a control plane (a pod scheduled but with no IP yet, a typo
in a manifest). Each stage collects what it had to skip here instead of raising, so that one
bad object never takes the rest of the cluster's config down with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger("zpilot.problems")


class Severity(str, Enum):
    ERROR = "error"  # the object is invalid and was skipped
    WARNING = "warning"  # the object was used in part, or skipped for a reason the user should fix
    INFO = "info"  # the object is fine but deliberately left out of the mesh


@dataclass(frozen=True)
class Problem:
    severity: Severity
    subject: str  # the object, e.g. "Pod default/sleep" or "examples/a.yaml doc 3 (Pod default/x)"
    reason: str

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.subject}: {self.reason}"


class Problems:
    """An ordered, de-duplicated list of problems."""

    def __init__(self) -> None:
        self._items: dict[Problem, None] = {}

    def add(self, severity: Severity, subject: object, reason: str) -> None:
        problem = Problem(severity, str(subject), reason)
        if problem not in self._items:
            self._items[problem] = None

    def error(self, subject: object, reason: str) -> None:
        self.add(Severity.ERROR, subject, reason)

    def warning(self, subject: object, reason: str) -> None:
        self.add(Severity.WARNING, subject, reason)

    def info(self, subject: object, reason: str) -> None:
        self.add(Severity.INFO, subject, reason)

    def extend(self, other: "Problems | list[Problem]") -> None:
        for problem in other:
            self._items.setdefault(problem, None)

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def log_all(self, logger: logging.Logger = log) -> None:
        levels = {Severity.ERROR: logging.ERROR, Severity.WARNING: logging.WARNING, Severity.INFO: logging.INFO}
        for problem in self._items:
            logger.log(levels[problem.severity], "%s", problem, extra={"object": problem.subject})

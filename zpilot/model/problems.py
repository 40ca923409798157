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


LOG_LEVELS = {Severity.ERROR: logging.ERROR, Severity.WARNING: logging.WARNING, Severity.INFO: logging.INFO}


@dataclass(frozen=True)
class Problem:
    severity: Severity
    subject: str  # the object, e.g. "Pod default/sleep", or a file that cannot be read
    reason: str
    #: Where the object was read, e.g. "examples/a.yaml doc 3"; not part of what the problem is about,
    #: so a document moving within its file is still the same problem (see :attr:`key`).
    where: str = ""

    @property
    def key(self) -> tuple[Severity, str, str]:
        """What the problem is, whatever its location: reported once per key, "resolved" when it goes away."""
        return self.severity, self.subject, self.reason

    def __str__(self) -> str:
        if self.where:
            return f"{self.severity.value}: {self.where} ({self.subject}): {self.reason}"
        return f"{self.severity.value}: {self.subject}: {self.reason}"


class Problems:
    """An ordered, de-duplicated list of problems."""

    def __init__(self) -> None:
        self._items: dict[Problem, None] = {}

    def add(self, severity: Severity, subject: object, reason: str, *, where: str = "") -> None:
        problem = Problem(severity, str(subject), reason, where)
        if problem not in self._items:
            self._items[problem] = None

    def error(self, subject: object, reason: str, *, where: str = "") -> None:
        self.add(Severity.ERROR, subject, reason, where=where)

    def warning(self, subject: object, reason: str, *, where: str = "") -> None:
        self.add(Severity.WARNING, subject, reason, where=where)

    def info(self, subject: object, reason: str, *, where: str = "") -> None:
        self.add(Severity.INFO, subject, reason, where=where)

    def extend(self, other: "Problems | list[Problem]") -> None:
        for problem in other:
            self._items.setdefault(problem, None)

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def log_all(self, logger: logging.Logger = log) -> None:
        for problem in self._items:
            logger.log(LOG_LEVELS[problem.severity], "%s", problem, extra={"object": problem.subject})

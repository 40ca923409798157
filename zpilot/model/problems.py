"""Problems with input: reported once, naming the object, and never fatal.

Bad input is the normal case for a control plane (a pod scheduled but with no IP yet, a typo
in a manifest). Each stage collects what it had to skip here instead of raising, so that one
bad object never takes the rest of the cluster's config down with it.
"""

from __future__ import annotations

import logging
import reprlib
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger("zpilot.problems")

#: Longest a value quoted in a message may be (see :func:`brief`).
BRIEF_LIMIT = 100
#: Longest a problem's subject or reason may be, whatever a caller formats into it.
MESSAGE_LIMIT = 1000

# repr with every container and string cut short: its work is bounded by these numbers, never
# by the size of the value (a value from an alias bomb stands for billions of strings).
_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = 4
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40
#: Types whose reprlib rendering is bounded (the ones YAML and JSON produce); others show their type only.
_PLAIN = (str, bytes, int, float, bool, type(None), list, tuple, dict, set, frozenset)


def clip(text: str, limit: int = BRIEF_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def brief(value: object, limit: int = BRIEF_LIMIT) -> str:
    """A repr of input for a message, at most ``limit`` characters, whatever the value's size.

    Every value from input that goes into a problem or a log line goes through here: the plain
    ``!r`` of a value from hostile input can take minutes and gigabytes.
    """
    if not isinstance(value, _PLAIN):
        return f"<{type(value).__name__}>"
    return clip(_REPR.repr(value), limit)


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
        problem = Problem(
            severity, clip(str(subject), MESSAGE_LIMIT), clip(reason, MESSAGE_LIMIT), clip(where, MESSAGE_LIMIT)
        )
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

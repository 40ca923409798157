"""The one error a world raises for its own failures (as opposed to a child process's)."""

from __future__ import annotations


class WorldError(RuntimeError):
    """A world cannot be built here, did not converge in time, or left something behind."""

"""YAML documents with a bound on what they can expand to.

The safe loader shares an aliased node instead of copying it, so a "billion laughs" document
(a value aliased nine levels deep, nine times at each level) loads in microseconds, and then
freezes whoever walks or prints it: 9^9 strings behind a few hundred bytes. libyaml's own
composer also recurses once per nesting level in C, so ``[[[[...]]]]`` 100,000 deep crashes
the process. Composing here (in Python, over libyaml's events) counts what every alias stands
for and how deep the document nests, and refuses a document past :data:`MAX_ALIAS_NODES` or
:data:`MAX_DEPTH` before anything downstream sees it. A document that composes but cannot be
constructed (a date like 2001-13-45, an integer of 5,000 digits) is skipped alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import yaml
from yaml.events import AliasEvent

from ..model.problems import clip

#: Nesting depth a document may reach. Kubernetes objects nest about 15 levels deep.
MAX_DEPTH = 100
#: Nodes that all aliases of one document may stand for, counted as if each alias were copied out.
MAX_ALIAS_NODES = 100_000

#: libyaml's scanner and parser when PyYAML was built with them (several times faster).
_BASE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LimitExceeded(yaml.YAMLError):
    """The document would expand (or nest) past a limit; the rest of the file is not read."""


class _BoundedLoader(yaml.composer.Composer, _BASE_LOADER):  # type: ignore[misc, valid-type]
    """The safe loader with a composer that measures each document as it builds it.

    Python's composer comes first in the MRO, so libyaml (when present) only scans and parses;
    node sizes are counted here: an alias adds the expanded size of its anchor's node.
    """

    def __init__(self, stream: str) -> None:
        _BASE_LOADER.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._depth = 0
        self._nodes = 0  # nodes composed so far in this document, aliases expanded
        self._aliased = 0  # of which through aliases
        self._sizes: dict[str, int] = {}  # anchor -> expanded size of its node
        self._open: set[str] = set()  # anchors whose node is still being composed

    def compose_document(self) -> yaml.Node:
        self._reset_counts()
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            anchor = event.anchor
            if anchor in self._open:
                raise LimitExceeded(f"alias *{clip(anchor)} refers to a node that contains it (a recursive document)")
            size = self._sizes.get(anchor, 0)  # an undefined alias: the composer reports it
            self._nodes += size
            self._aliased += size
            if self._aliased > MAX_ALIAS_NODES:
                raise LimitExceeded(
                    f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes (an alias bomb?)"
                    f" at line {event.start_mark.line + 1}"
                )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise LimitExceeded(f"nested more than {MAX_DEPTH} levels deep at line {event.start_mark.line + 1}")
        anchor = getattr(event, "anchor", None)
        start = self._nodes
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        self._nodes += 1
        if anchor is not None:
            self._open.discard(anchor)
            self._sizes[anchor] = self._nodes - start
        self._depth -= 1
        return node

    def forget_failed_document(self) -> None:
        """Clear what a failed construction left behind, so the next document starts clean."""
        self.constructed_objects = {}
        self.recursive_objects = {}
        self.state_generators = []
        self.deep_construct = False


@dataclass(frozen=True)
class Unreadable:
    """A document that could not be read, and why. ``last``: the rest of the file was not read either."""

    reason: str
    last: bool


def _reason(exc: BaseException) -> str:
    if isinstance(exc, LimitExceeded):
        return f"refused: {clip(str(exc), 300)}"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        at = f" (line {mark.line + 1})" if mark is not None else ""
        return f"malformed YAML{at}: {clip(str(exc.problem or exc.context or type(exc).__name__), 200)}"
    return f"malformed YAML: {clip(f'{type(exc).__name__}: {exc}', 200)}"


def load_documents(text: str) -> Iterator[Any | Unreadable]:
    """Each document of ``text`` (None for an empty one), or an :class:`Unreadable` in its place.

    Never raises for bad input: a document that breaks a limit or YAML's syntax ends the file
    (the parser cannot resynchronize); one that composes but cannot be constructed is skipped.
    """
    loader = _BoundedLoader(text)
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
            except (yaml.YAMLError, RecursionError, ValueError) as exc:
                yield Unreadable(_reason(exc), last=True)
                return
            try:
                document = loader.construct_document(node)
            except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
                loader.forget_failed_document()
                yield Unreadable(_reason(exc), last=False)
                continue
            yield document
    finally:
        loader.dispose()

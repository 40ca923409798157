"""Built config, kept by the inputs it was built from: the memo behind incremental generation.

Most of a node's config is the same as another node's, or as its own before the last model
change: a service's cluster and endpoints do not depend on the node asking (in the linear
layout), and a pod's inbound chain does not change when a pod elsewhere comes and goes. A
:class:`Fragments` memo builds each such piece once and hands the same object to every node
that needs it, in this model and the next.

A piece is asked for as ``fragments.get(builder, *args)``: the builder and its arguments *are*
the key, so a builder cannot depend on anything the key does not name (builders are pure
functions of their arguments, like every translator). Arguments must be hashable and compare
by content; another fragment may be an argument (it compares by identity, and a memo has one
fragment per key). What a memo returns is shared and must never be changed: callers copy it
into the message they build (``repeated.append``, ``CopyFrom`` and ``update`` copy).

The memo holds fragments weakly: a fragment lives as long as something still uses it (a node's
last translation keeps the fragments it used), so memory follows the current model, and no
generation counting is needed. :attr:`Fragment.derived` carries what consumers derive from it
once (the serialized form, the consistency facts), so that too is computed once per fragment.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Hashable


class Fragment:
    """One built piece of config (a message, or a mapping or tuple of messages) and its key."""

    __slots__ = ("key", "value", "derived", "__weakref__")

    def __init__(self, key: Hashable, value: Any) -> None:
        self.key = key
        self.value = value
        #: Whatever consumers derive from ``value`` and want to compute only once, by consumer.
        self.derived: dict[Hashable, Any] = {}

    def __repr__(self) -> str:
        builder = self.key[0] if isinstance(self.key, tuple) and self.key else self.key
        return f"Fragment({getattr(builder, '__qualname__', builder)!r})"


class Fragments:
    """A memo of fragments by (builder, arguments)."""

    def __init__(self) -> None:
        self._live: weakref.WeakValueDictionary[Hashable, Fragment] = weakref.WeakValueDictionary()
        #: The latest fragment of each line (see :meth:`latest`), weakly.
        self._lines: weakref.WeakValueDictionary[Hashable, Fragment] = weakref.WeakValueDictionary()
        #: How many fragments were built (not found): what tests count to see what was rebuilt.
        self.built = 0
        #: Each node's local pods as its last translation through this memo made them
        #: (translators/inbound.py ``_local_pods``): kept with the memo, not for the process, so that
        #: a memo let go takes them with it; ``IncrementalTranslator.inputs`` lets a node's go once
        #: the model no longer gives it config (a node removed kept its hundred pods alive).
        self.kept_pods: dict[str, Any] = {}

    def get(self, builder: Callable[..., Any], *args: Hashable, **kwargs: Hashable) -> Fragment:
        key = (builder, args, tuple(sorted(kwargs.items()))) if kwargs else (builder, args)
        held = _Hashed(key)  # looked up, then stored: hashed once (a node's pods are in some keys)
        fragment = self._live.get(held)  # type: ignore[call-overload]
        if fragment is None:
            fragment = Fragment(key, self.build(builder, args, kwargs))
            self._live[held] = fragment  # type: ignore[index]
            self.built += 1
        return fragment

    def find(self, builder: Callable[..., Any], *args: Hashable) -> Fragment | None:
        """The fragment ``builder(*args)`` if something still holds it, else None (nothing built)."""
        return self._live.get((builder, args))

    def derive(self, builder: Callable[..., Any], args: tuple, make: Callable[[], Any]) -> Fragment:
        """The fragment ``builder(*args)``, made by ``make()`` when no one holds it: ``make`` must
        return what ``builder(*args)`` would, derived from an earlier fragment (see :meth:`latest`)
        for less than building it anew costs."""
        key = (builder, args)
        held = _Hashed(key)  # hashed once, as in :meth:`get` (a node's pods are in these keys: 100 pods, ~0.25 ms)
        fragment = self._live.get(held)  # type: ignore[call-overload]
        if fragment is None:
            fragment = Fragment(key, make())
            self._live[held] = fragment  # type: ignore[index]
            self.built += 1
        return fragment

    def latest(self, line: Hashable) -> Fragment | None:
        """The fragment last noted for ``line`` (:meth:`note`) while something still holds it.

        A line is a piece that changes over time in place, one node's own chains, say: what a
        builder may derive the next one from (``derive``), as long as it derives what it would
        build. Nothing is keyed by it: it is a hint, and without it the piece is built whole."""
        return self._lines.get(line)

    def note(self, line: Hashable, fragment: Fragment) -> None:
        self._lines[line] = fragment

    def build(self, builder: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Build one fragment (what a test overrides to see what gets built)."""
        return builder(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._live)


class _Hashed:
    """A memo key with its hash made once: equal to the key itself (and hashed alike), so the
    memo finds either for the other."""

    __slots__ = ("key", "hash")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.hash = hash(key)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Hashed):
            return self.hash == other.hash and self.key == other.key
        return self.key == other


class FragmentGroup:
    """Named fragments built together (every service port's cluster, say), as one fragment's value.

    A group holds its members, so each stays in the memo while the group is in use, and the next
    group (after a model change) finds the members whose inputs did not change already built.
    """

    __slots__ = ("members", "values", "_base", "__weakref__")

    def __init__(
        self, members: dict[str, Fragment], *, base: "tuple[FragmentGroup, tuple[str, ...]] | None" = None
    ) -> None:
        self.members = members
        #: Each member's value by name (from ``base``'s, which has the same names, but those that may differ).
        if base is not None:
            self.values = dict(base[0].values)
            for name in base[1]:
                self.values[name] = members[name].value
        else:
            self.values = {name: fragment.value for name, fragment in members.items()}
        # (the group this one was made from, weakly, and the names whose member may differ from its)
        self._base = (weakref.ref(base[0]), base[1]) if base is not None else None

    def based_on(self) -> "tuple[FragmentGroup, tuple[str, ...]] | None":
        """The group this one was made from (the same names, each member the very same fragment
        but those named here), while it is alive; None when made whole. What serializes a group
        can then take the rest from that group's (xds/resource_store.py)."""
        if self._base is None:
            return None
        group = self._base[0]()
        return (group, self._base[1]) if group is not None else None

"""Pausing Python's cyclic garbage collector around a burst of allocations.

Generating a large cluster's config allocates millions of small objects that are freed by
reference counting (they form no cycles), while the collector, counting allocations, walks
everything alive again and again: at 100 nodes and 10,000 pods that was half the time of a cold
generation. Pausing it for the burst and letting it run afterwards changes no result: objects in
cycles are collected then. The producer pauses it for a whole model update and ends the pause
once the streams the change woke have begun (``pause``: a pause that ends elsewhere than it
began), and leaves what the change replaced for that collection to free (:func:`free_later`):
neither the collection nor the freeing delays the change's sending.

What the first model leaves alive (the model itself, the config of every node, the memo of
shared pieces: millions of objects that live as long as the process or until a change replaces
them, freed then by reference counting) is moved out of the collector's sight once it is built
(:func:`freeze_long_lived`): otherwise every full collection walks all of it again, a pause of
about 200 ms at 100 nodes and 10,000 pods that lands on whichever change comes next.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Callable, Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = True


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection while inside (nestable, from any thread); as it was afterwards."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


def pause() -> Callable[[], None]:
    """Pause the collector now, as :func:`paused_gc` does, for a pause that does not end in the
    same block: the function returned ends it (the first call; later ones do nothing).

    The pause also ends when that function is freed without having been called: the pause is a
    generator suspended inside :func:`paused_gc`, and Python closes a generator it frees, which
    runs its ``finally``. So a pause whose end is lost (a callback that never runs: the producer's
    ``_end_once_woken`` on an event loop closed before it got there) does not leave the collector
    off for good. That takes the function being freed: reference counting does it as the last
    reference goes; one held in a reference cycle would wait for a collection, which the pause
    itself holds off, so the owner keeps it out of cycles or calls it."""
    paused = paused_gc()
    paused.__enter__()
    ended = False

    def end() -> None:
        nonlocal ended
        if not ended:
            ended = True
            paused.__exit__(None, None, None)

    return end


def free_later(objects: list) -> None:
    """Give up ``objects`` (a list only the caller holds) to be freed by the collector's next
    run rather than now: made into a cycle, which reference counting never frees. Under a pause
    (a change being produced; a server's push burst keeps one until the change is sent) that run
    comes after it, so the config a change replaced (at R, milliseconds of freeing thousands of
    objects and the memo's weak references to them) is not freed before the change is sent. Freed
    at once when the collector is off but not by a pause (it would never run)."""
    with _lock:
        later = _depth > 0 and _was_enabled
    if later:
        objects.append(objects)
    else:
        objects.clear()


_frozen = False


def freeze_long_lived() -> bool:
    """Once per process: move every object alive now out of the collector's generations
    (``gc.freeze``), after a collection so that no garbage already in a cycle is kept. Frozen
    objects are still freed by reference counting; only a cycle among them would never be.
    True the first time."""
    global _frozen
    with _lock:
        if _frozen:
            return False
        _frozen = True
    gc.collect()
    gc.freeze()
    return True

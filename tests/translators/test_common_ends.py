"""``inputs._common_ends``: the common start and end of the last model's meshed pods and this
one's, compared a block at a time (``==``, an identity check in C for the very same objects)
instead of one call per pod: the same answer as comparing them one by one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zpilot.translators.inputs import _BLOCK, _common_ends


class Pod:
    """Equal to another by ``key`` (as two copies of one Workload are), each its own object."""

    def __init__(self, key: int) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pod) and self.key == other.key

    __hash__ = None  # type: ignore[assignment]


def _by_equality(a: tuple, b: tuple) -> tuple[int, int]:
    """The reference: one pair at a time, never overlapping."""
    shortest = min(len(a), len(b))
    start = 0
    while start < shortest and a[start] == b[start]:
        start += 1
    end = 0
    while end < shortest - start and a[-1 - end] == b[-1 - end]:
        end += 1
    return start, end


@st.composite
def changed(draw: st.DrawFn) -> tuple[tuple, tuple]:
    """A list of pods, and the same list with a few put in, taken out or replaced by an unequal
    pod, across blocks' bounds (sizes around ``_BLOCK``)."""
    pods = tuple(Pod(i) for i in range(draw(st.integers(0, 3 * _BLOCK))))
    new = list(pods)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(new)))
        kind = draw(st.sampled_from(["in", "out", "other"]))
        if kind == "in":
            new.insert(at, Pod(-1 - at))
        elif new and at < len(new):
            if kind == "out":
                del new[at]
            else:
                new[at] = Pod(-10_000 - at)
    return pods, tuple(new)


@settings(max_examples=300, deadline=None)
@given(changed())
def test_the_common_ends_are_those_found_one_pod_at_a_time(pair: tuple[tuple, tuple]) -> None:
    old, new = pair
    assert _common_ends(new, old) == _by_equality(new, old)


def test_an_equal_copy_of_a_pod_counts_as_the_same_and_a_difference_is_found_in_any_block() -> None:
    pods = tuple(Pod(i) for i in range(5 * _BLOCK))
    copies = tuple(Pod(i) for i in range(5 * _BLOCK))
    assert _common_ends(pods, copies) == (len(pods), 0)
    for at in (0, 1, _BLOCK - 1, _BLOCK, 2 * _BLOCK + 7, len(pods) - 1):
        other = pods[:at] + (Pod(-1),) + pods[at + 1 :]
        assert _common_ends(other, pods) == (at, len(pods) - at - 1)

"""The bound on response bytes written at once (send_budget.py): large responses wait in order,
small ones never, one larger than the budget goes alone, and a cancelled writer gives back
what it held or waited for, wherever the cancellation lands."""

from __future__ import annotations

import asyncio

import pytest

from zpilot.xds.send_budget import SendBudget


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


class Writer:
    """A response of ``size`` bytes being written until ``done`` is set."""

    def __init__(self, budget: SendBudget, size: int, log: list[str], name: str) -> None:
        self.done = asyncio.Event()
        self.task = asyncio.create_task(self._run(budget, size, log, name))

    async def _run(self, budget: SendBudget, size: int, log: list[str], name: str) -> None:
        async with budget.reserve(size):
            log.append(name)
            await self.done.wait()


async def test_large_responses_wait_in_order_and_small_ones_never():
    budget = SendBudget(limit=100, small=10)
    log: list[str] = []
    a = Writer(budget, 60, log, "a")
    b = Writer(budget, 50, log, "b")  # 110 > 100: waits for a
    c = Writer(budget, 20, log, "c")  # would fit, but b is first in line
    s = Writer(budget, 10, log, "small")  # never waits
    await settle()
    assert log == ["a", "small"] and budget.in_flight == 70 and budget.waited == 2
    a.done.set()
    await settle()
    assert log == ["a", "small", "b", "c"] and budget.in_flight == 80
    for w in (b, c, s):
        w.done.set()
    await asyncio.gather(a.task, b.task, c.task, s.task)
    assert budget.in_flight == 0


async def test_a_response_larger_than_the_budget_goes_alone():
    budget = SendBudget(limit=100, small=10)
    log: list[str] = []
    first = Writer(budget, 30, log, "first")
    huge = Writer(budget, 500, log, "huge")
    await settle()
    assert log == ["first"]
    first.done.set()
    await settle()
    assert log == ["first", "huge"] and budget.in_flight == 500
    after = Writer(budget, 30, log, "after")
    await settle()
    assert log == ["first", "huge"]
    huge.done.set()
    await settle()
    assert log[-1] == "after"
    after.done.set()
    await asyncio.gather(first.task, huge.task, after.task)
    assert budget.in_flight == 0


@pytest.mark.parametrize("where", ["waiting", "granted", "writing"])
async def test_a_cancelled_writer_gives_back_its_room(where):
    budget = SendBudget(limit=100, small=0)
    log: list[str] = []
    holder = budget.reserve(80)
    await holder.__aenter__()
    victim = Writer(budget, 50, log, "victim")
    behind = Writer(budget, 40, log, "behind")
    await settle()
    assert log == []
    if where == "waiting":
        victim.task.cancel()
        await settle()
        assert log == []  # behind (40) does not fit next to holder (80) either
        await holder.__aexit__(None, None, None)
        await settle()
        assert log == ["behind"]
    elif where == "granted":
        await holder.__aexit__(None, None, None)  # releases and grants victim, which has not run yet
        victim.task.cancel()
        await settle()
        assert log == ["behind"]
    else:
        await holder.__aexit__(None, None, None)
        await settle()
        assert log == ["victim", "behind"]
        victim.task.cancel()
        await settle()
    behind.done.set()
    await asyncio.gather(victim.task, behind.task, return_exceptions=True)
    assert victim.task.cancelled() and budget.in_flight == 0


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError):
        SendBudget(limit=0)

"""FairGate: a bound on holders that takes turns between owners (runs/fair_gate.py)."""

from __future__ import annotations

import asyncio

import pytest

from sierra_operator.runs.fair_gate import FairGate


async def _hold(gate: FairGate, owner: str, order: list[str], release: asyncio.Event) -> None:
    async with gate.turn(owner):
        order.append(owner)
        await release.wait()


def _idle(gate: FairGate) -> bool:
    """Nothing held, waited for or remembered: no slot or owner left behind."""
    return (
        not gate.locked()
        and gate._free == gate.bound
        and not gate._holding
        and not gate._served
        and not gate._waiting
    )


async def _served(gate: FairGate, arrivals: list[str]) -> list[str]:
    """The order ``arrivals`` (queued in this order behind one holder) are served in."""
    order: list[str] = []
    go = asyncio.Event()
    go.set()
    first = asyncio.Event()
    holder = asyncio.create_task(_hold(gate, "holder", order, first))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(_hold(gate, owner, order, go)) for owner in arrivals]
    await asyncio.sleep(0)
    assert gate.waiting() == len(arrivals)
    first.set()
    await asyncio.gather(holder, *tasks)
    assert _idle(gate)
    return order[1:]


def test_owners_take_turns_and_each_keeps_its_order() -> None:
    order = asyncio.run(_served(FairGate(1), ["a", "a", "a", "b", "c", "c"]))
    assert order == ["a", "b", "c", "a", "c", "a"]


def test_an_owner_arriving_goes_before_one_already_holding() -> None:
    """The holder's own queue waits behind a newcomer: served once, it waits its turn."""
    order = asyncio.run(_served(FairGate(1), ["holder", "holder", "new"]))
    assert order == ["new", "holder", "holder"]


def test_owners_coming_back_again_and_again_do_not_starve_a_big_one() -> None:
    """Batches advancing one request at a time, again and again, take turns with a big
    wave's requests: each was served more recently than the wave when it comes back."""
    gate = FairGate(1)

    async def run() -> list[str]:
        order: list[str] = []

        go = asyncio.Event()

        async def again(owner: str) -> None:
            for _ in range(4):
                await _hold(gate, owner, order, go)

        big = [asyncio.create_task(_hold(gate, "big", order, go)) for _ in range(3)]
        small = [asyncio.create_task(again(o)) for o in ("s0", "s1")]
        await asyncio.sleep(0)  # the first big one holds the slot, the others wait
        assert gate.waiting() == 4
        go.set()
        await asyncio.gather(*big, *small)
        return order

    order = asyncio.run(run())
    assert order[:7] == ["big", "s0", "s1", "big", "s0", "s1", "big"]
    assert _idle(gate)


def test_one_owner_alone_is_served_first_come_first_served() -> None:
    gate = FairGate(1)

    async def run() -> list[int]:
        order: list[int] = []
        go = asyncio.Event()

        async def one(i: int) -> None:
            async with gate.turn("a"):
                order.append(i)
                await go.wait()

        tasks = [asyncio.create_task(one(i)) for i in range(5)]
        await asyncio.sleep(0)
        go.set()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]


def test_never_more_than_bound_at_once() -> None:
    gate = FairGate(3)
    inside = peak = 0

    async def one(owner: str) -> None:
        nonlocal inside, peak
        async with gate.turn(owner):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    async def run() -> None:
        await asyncio.gather(*(one(f"o{i % 4}") for i in range(40)))

    asyncio.run(run())
    assert peak == 3 and inside == 0 and _idle(gate)


def test_a_cancelled_waiter_loses_its_place_and_no_slot() -> None:
    gate = FairGate(1)

    async def run() -> list[str]:
        order: list[str] = []
        release, go = asyncio.Event(), asyncio.Event()
        go.set()
        holder = asyncio.create_task(_hold(gate, "holder", order, release))
        await asyncio.sleep(0)
        gone = asyncio.create_task(_hold(gate, "gone", order, go))
        after = asyncio.create_task(_hold(gate, "after", order, go))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert gate.waiting("gone") == 0
        release.set()
        await asyncio.gather(holder, after)
        return order

    assert asyncio.run(run()) == ["holder", "after"]
    assert _idle(gate)


def test_a_waiter_cancelled_as_it_is_granted_passes_the_slot_on() -> None:
    gate = FairGate(1)

    async def run() -> list[str]:
        order: list[str] = []
        go = asyncio.Event()
        go.set()
        async with gate.turn("holder"):
            granted = asyncio.create_task(_hold(gate, "granted", order, go))
            after = asyncio.create_task(_hold(gate, "after", order, go))
            await asyncio.sleep(0)
        # The slot was handed to "granted", which has not resumed yet: cancelled now.
        assert gate.waiting() == 1 and gate.locked()
        granted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await granted
        await after
        return order

    assert asyncio.run(run()) == ["after"]
    assert _idle(gate)


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairGate(0)

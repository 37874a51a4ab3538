"""CoalescedReads: many batches' reads of one Prefect API become one request at a time.
Pure asyncio: the fetch is a function of these tests (no Prefect involved)."""

from __future__ import annotations

import asyncio

import pytest

from sierra_operator.runs.coalesce import CoalescedReads

pytestmark = pytest.mark.unit


class SlowStore:
    """A fetch that takes ``delay`` seconds and records what each call asked for."""

    def __init__(self, delay: float = 0.05, fail: int = 0) -> None:
        self.delay = delay
        self.calls: list[list[int]] = []
        self.fail = fail  # this many first calls raise

    async def fetch(self, keys: list[int]) -> dict[int, str]:
        self.calls.append(keys)
        await asyncio.sleep(self.delay)
        if len(self.calls) <= self.fail:
            raise ConnectionError("server unavailable")
        return {k: f"run{k}" for k in keys if k != 99}  # 99: unknown to the server


def test_reads_during_a_fetch_go_together_as_the_next_one():
    async def scenario() -> tuple[list[dict[int, str]], SlowStore, int]:
        store = SlowStore()
        reads = CoalescedReads(store.fetch)
        first = asyncio.create_task(reads.read([1, 2]))
        await asyncio.sleep(0.01)  # the first fetch is in flight
        rest = [asyncio.create_task(reads.read([k, 99])) for k in range(3, 13)]
        got = await asyncio.gather(first, *rest)
        return got, store, reads.fetches

    got, store, fetches = asyncio.run(scenario())
    assert fetches == 2 and len(store.calls) == 2, "11 reads, 2 requests"
    assert store.calls[0] == [1, 2]
    assert sorted(store.calls[1]) == [*range(3, 13), 99]
    assert got[0] == {1: "run1", 2: "run2"}
    assert got[5] == {7: "run7"}, "each caller gets its own keys; unknown ones are left out"


def test_an_idle_api_answers_each_read_at_once():
    async def scenario() -> tuple[float, int]:
        store = SlowStore(delay=0.0)
        reads = CoalescedReads(store.fetch)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k in range(5):
            assert await reads.read([k]) == {k: f"run{k}"}
        return loop.time() - t0, reads.fetches

    elapsed, fetches = asyncio.run(scenario())
    assert fetches == 5 and elapsed < 0.5, "no waiting window when nothing is in flight"


def test_a_failed_fetch_fails_its_round_only_and_a_cancelled_caller_cancels_no_one():
    async def scenario() -> None:
        store = SlowStore(fail=1)
        reads = CoalescedReads(store.fetch)
        a = asyncio.create_task(reads.read([1]))
        b = asyncio.create_task(reads.read([2]))
        for task in (a, b):
            with pytest.raises(ConnectionError, match="server unavailable"):
                await task
        c = asyncio.create_task(reads.read([3]))
        d = asyncio.create_task(reads.read([4]))
        await asyncio.sleep(0.01)
        c.cancel()  # its reconcile gave up: d's read still completes
        assert await d == {4: "run4"}
        with pytest.raises(asyncio.CancelledError):
            await c
        assert await reads.read([]) == {}

    asyncio.run(scenario())

"""Many batches' reads of one Prefect API merged into one request at a time.

The operator reconciles every active batch about once a second, and each reconcile reads the
batch's unsettled flow runs: with 100 active batches that was 100 requests a second to one
Prefect server, which on a small server is most of its CPU, so the waves queue behind the
reads and experiments advance seconds late. Here at most one read per API is in flight;
the reads asked for meanwhile wait and go together as the next one. An idle server answers
each read at once (nothing waits); a busy one gets fewer, larger requests, the busier the
fewer. Pure asyncio: what is fetched and how is the caller's ``fetch``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Round(Generic[K, V]):
    keys: set[K] = field(default_factory=set)
    result: asyncio.Future[Mapping[K, V]] | None = None


class CoalescedReads(Generic[K, V]):
    """``read(keys)`` for many callers, one ``fetch(all their keys)`` at a time."""

    def __init__(self, fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]]) -> None:
        self._fetch = fetch
        self._next: _Round[K, V] | None = None
        self._worker: asyncio.Task[None] | None = None
        self.fetches = 0  # requests made (for tests and benchmarks)

    async def read(self, keys: Iterable[K]) -> dict[K, V]:
        """What ``fetch`` returns for ``keys`` (keys it does not return are left out)."""
        wanted = set(keys)
        if not wanted:
            return {}
        round_ = self._next
        if round_ is None:
            round_ = self._next = _Round(result=asyncio.get_running_loop().create_future())
            assert round_.result is not None
            # Nobody may be left to retrieve a failure (every caller cancelled): mark it seen.
            round_.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        round_.keys |= wanted
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve())
        assert round_.result is not None
        # A caller cancelled (its reconcile timed out) must not cancel the others' read.
        got = await asyncio.shield(round_.result)
        return {k: got[k] for k in wanted if k in got}

    async def _serve(self) -> None:
        await asyncio.sleep(0)  # reads asked for in this same turn of the loop go together
        while self._next is not None:
            round_, self._next = self._next, None
            assert round_.result is not None
            self.fetches += 1
            try:
                round_.result.set_result(await self._fetch(sorted(round_.keys, key=str)))
            except Exception as exc:  # every caller of this round sees it
                round_.result.set_exception(exc)

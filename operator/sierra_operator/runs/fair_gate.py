"""A bound on requests in flight that takes turns between the batches waiting at it.

Every batch on one Prefect API shares one bound on flow-run creates in flight (its client's
connections and the server's CPU are shared: see
:meth:`sierra_operator.runs.clients.PrefectClients.submit_gate`). A semaphore serves its
waiters in the order they came: a 1,000-run wave queues ten bulk requests at once, and a batch
whose one request comes after them waits for all ten (measured: 49 s with one request in
flight). Here each batch ("owner") has a queue of its own and a freed slot goes to the owner
served least recently, so a batch's request waits for the requests in flight and at most one
of each other batch waiting, however many each has queued (a batch coming back again and
again does not jump the queue: it was served recently). Within one owner requests keep
their order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairGate:
    """At most ``bound`` holders at once; waiters served by owner, the one served least
    recently first (one never served before all), FIFO within one.

    Bound to the event loop of its first waiter (as :class:`asyncio.Semaphore` is)."""

    def __init__(self, bound: int) -> None:
        if bound < 1:
            raise ValueError(f"a gate's bound is at least 1, not {bound}")
        self.bound = bound
        self._free = bound
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}  # in order of arrival
        self._holding: dict[str, int] = {}  # slots each owner holds
        self._served: dict[str, int] = {}  # when each owner last got one (see _prune)
        self._clock = 0

    def locked(self) -> bool:
        """Whether a new caller would wait (as :meth:`asyncio.Semaphore.locked`)."""
        return self._free == 0 or bool(self._waiting)

    def waiting(self, owner: str | None = None) -> int:
        """Callers waiting (``owner``'s only, if given): for tests and diagnostics."""
        if owner is not None:
            return len(self._waiting.get(owner, ()))
        return sum(len(q) for q in self._waiting.values())

    @asynccontextmanager
    async def turn(self, owner: str) -> AsyncIterator[None]:
        """Hold one slot for the body, waiting for ``owner``'s turn if none is free."""
        await self._acquire(owner)
        try:
            yield
        finally:
            self._release(owner)

    async def _acquire(self, owner: str) -> None:
        if not self.locked():
            self._take(owner)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(owner)  # granted as it was cancelled: the slot goes on
            else:
                self._forget(owner, future)
            raise

    def _take(self, owner: str) -> None:
        self._free -= 1
        self._holding[owner] = self._holding.get(owner, 0) + 1
        self._served[owner] = self._clock
        self._clock += 1

    def _release(self, owner: str) -> None:
        self._free += 1
        self._holding[owner] -= 1
        if not self._holding[owner]:
            del self._holding[owner]
        self._grant()
        self._prune()

    def _prune(self) -> None:
        """Forget owners holding and waiting nothing that were served before every owner
        that is: back, they would be served before those anyway (as one never served is).
        One served more recently is kept, or a batch advancing again and again with one
        request each time would always come first, and a big wave never get its turn."""
        busy = [self._served[o] for o in (*self._holding, *self._waiting) if o in self._served]
        floor = min(busy, default=None)
        for owner in [o for o in self._served if o not in self._holding]:
            if owner not in self._waiting and (floor is None or self._served[owner] < floor):
                del self._served[owner]

    def _grant(self) -> None:
        """Free slots to waiters: the owner served least recently first (one never served,
        or forgotten by :meth:`_prune`, before all), in order of arrival between equals."""
        while self._free > 0 and self._waiting:
            owner = min(self._waiting, key=lambda o: self._served.get(o, -1))
            queue = self._waiting[owner]
            future = queue.popleft()
            if not queue:
                del self._waiting[owner]
            if future.done():  # cancelled while waiting, not yet forgotten
                continue
            self._take(owner)
            future.set_result(None)

    def _forget(self, owner: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(owner)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[owner]
        self._prune()

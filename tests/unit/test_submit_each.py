"""submit_each with creates in flight: one failure neither loses nor orphans the others.

The Prefect client is a stand-in here (say so: a mock): the real server cannot be made to
fail one create while others are in flight on demand. The creates' idempotency and the cap
on creates in flight against the real server are tested in
tests/integration/test_prefect_api.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import pytest

from sierra_operator.core.machine import RunAttempt, SubmitRuns
from sierra_operator.runs.prefect_api import PrefectBatch


def _batch(created: list[UUID], fail_key: str) -> PrefectBatch:
    """A batch whose creates take a while, and the one whose key ends ``fail_key`` fails
    at once (the others are then still in flight)."""
    batch = PrefectBatch(
        api_url="http://unused", batch_id="b", pool="p", queue="q", submit_concurrency=4
    )
    batch._listed = True

    @asynccontextmanager
    async def client() -> AsyncIterator[Any]:
        yield object()

    async def resolve() -> None:
        return None

    async def create_run(*_: Any, key: str, **__: Any) -> UUID:
        if key.endswith(fail_key):
            raise RuntimeError("create failed")
        await asyncio.sleep(0.05)
        run_id = uuid.uuid4()
        created.append(run_id)
        return run_id

    batch.client = client  # type: ignore[method-assign]
    batch.resolve_deployment = resolve  # type: ignore[method-assign,assignment]
    batch._create_run = create_run  # type: ignore[method-assign,assignment]
    return batch


def test_failed_create_lets_the_others_finish_and_relists() -> None:
    created: list[UUID] = []
    batch = _batch(created, "/0/1")
    runs = tuple(RunAttempt(i, f"cmd {i}", 1) for i in range(4))
    action = SubmitRuns("exp", 0, runs)
    with pytest.raises(RuntimeError, match="create failed"):
        asyncio.run(batch.submit_each(action, {}))
    assert len(created) == 3  # none cancelled in flight
    assert batch._unsettled == set(created)  # every id that came back is observed
    assert batch._listed is False  # and the batch is listed again: a lost id is found


def test_successful_submit_keeps_listing_state() -> None:
    created: list[UUID] = []
    batch = _batch(created, "never")
    runs = tuple(RunAttempt(i, f"cmd {i}", 1) for i in range(3))
    ids = asyncio.run(batch.submit_each(SubmitRuns("exp", 0, runs), {}))
    assert set(ids) == set(created) and len(ids) == 3
    assert batch._listed is True


def test_batches_on_one_shared_client_share_its_submit_gate() -> None:
    """Many batches' waves at once stay within one bound per shared client (its pool of
    connections), not one bound per wave."""
    from sierra_operator.runs.prefect_api import PrefectClients

    clients = PrefectClients(submit_concurrency=2)
    in_flight, peak = 0, 0
    batches = []
    for _ in range(3):
        batch = _batch([], "never")
        batch.clients = clients  # the batch's own bound (4) is not what applies

        async def create_run(*_: Any, **__: Any) -> UUID:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            return uuid.uuid4()

        batch._create_run = create_run  # type: ignore[method-assign,assignment]
        batches.append(batch)
    runs = tuple(RunAttempt(i, f"cmd {i}", 1) for i in range(4))

    async def all_at_once() -> None:
        await asyncio.gather(*(b.submit_each(SubmitRuns("exp", 0, runs), {}) for b in batches))

    asyncio.run(all_at_once())
    assert peak == 2
    assert clients.submit_gate("http://unused", None) is clients.submit_gate("http://unused", None)

"""PrefectBatch against the real session Prefect server (no workers: flow runs stay pending)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from sierra_operator.prefect_api import PrefectBatch

pytestmark = pytest.mark.integration


def test_planning_works_for_a_batch_provisioned_without_it(prefect_api_url: str) -> None:
    """A batch provisioned with inline experiments, then switched to spec.commandsFile, has
    no planning deployment yet: plan() makes it, and asking again (as a restarted operator
    would, with nothing in memory) creates no second run."""
    ids = (prefect_api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}", "q")
    batch = PrefectBatch(*ids)

    async def scenario() -> tuple[str, uuid.UUID, uuid.UUID]:
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await batch.ensure_deployment("/tmp")
        first = await batch.plan("/tmp", "proj/batch", "k1")
        again = await PrefectBatch(*ids).plan("/tmp", "proj/batch", "k1")
        await batch.cleanup()
        async with batch.client() as client:
            try:
                await client.read_deployment_by_name(f"sierra-plan/{batch.plan_deployment_name}")
            except ObjectNotFound:
                return first.state, first.id, again.id
        raise AssertionError("cleanup left the planning deployment behind")

    state, first, again = asyncio.run(scenario())
    assert state == "pending", "no worker here: the planning flow run waits"
    assert first == again, "idempotent: one planning flow run per key"

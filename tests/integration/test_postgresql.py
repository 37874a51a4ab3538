"""Prefect on PostgreSQL (the chart's `prefect.server.database.type=postgresql`): a real
server on a private PostgreSQL (tests/postgres_env.py) takes the operator's concurrent
submission of a wave, each run created once. Skipped, saying why, without the Debian
package (scripts/test installs it as root)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sierra_operator.cluster.job_template import default_kubernetes_template
from sierra_operator.core import names
from sierra_operator.core.machine import RunAttempt, SubmitRuns
from sierra_operator.local.server import LocalPrefectServer
from sierra_operator.runs.prefect_api import PrefectBatch
from tests.postgres_env import PrivatePostgres, missing_reason

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_prefect() -> Iterator[tuple[str, PrivatePostgres]]:
    """A Prefect server whose database is a private PostgreSQL; both stopped at the end."""
    reason = missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    postgres = PrivatePostgres().start()
    home = Path(tempfile.mkdtemp(prefix="sierra-test-prefect-pg-"))
    server = LocalPrefectServer(home, database_url=postgres.url)
    server.start()
    try:
        server.wait_ready(timeout=300)
        yield server.api_url, postgres
    finally:
        server.stop()
        postgres.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_a_wave_is_submitted_concurrently_once_on_postgresql(
    postgres_prefect: tuple[str, PrivatePostgres],
) -> None:
    """200 runs with 8 requests in flight (the chart's default with PostgreSQL), made by bulk
    creates (2 requests at once): no 503, each run exactly one flow run, a repeat creates
    nothing, and they really are stored in PostgreSQL."""
    api_url, postgres = postgres_prefect
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    uid = f"b{uuid.uuid4().hex[:8]}"
    batch = PrefectBatch(api_url, uid, f"p-{uid}", "q", pool_type="kubernetes")
    batch.submit_concurrency = 8
    action = SubmitRuns("c1-exp0", 0, tuple(RunAttempt(i, "true", 1) for i in range(200)))
    params = {"batch_id": uid, "batch_root": "/tmp", "workdir": "/tmp"}

    async def scenario() -> tuple[list, list, int, str]:
        await batch.ensure_pool(default_kubernetes_template())
        await batch.ensure_deployment("/tmp")
        created = await batch.submit_each(action, params)
        again = await batch.submit_each(action, params)
        stored = 0
        async with batch.client() as client:
            while True:
                page = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        tags=FlowRunFilterTags(all_=[names.batch_tag(uid)])
                    ),
                    limit=200,
                    offset=stored,
                )
                stored += len(page)
                if len(page) < 200:
                    break
        rows = postgres.sql("SELECT count(*) FROM flow_run WHERE name LIKE 'c1-exp0-run%'")
        await batch.cleanup()  # deleting the deployment deletes its scheduled runs
        return created, again, stored, rows

    created, again, stored, in_postgres = asyncio.run(scenario())
    assert len(set(created)) == 200 and again == created and stored == 200
    assert batch._bulk_create is True, "PostgreSQL's Prefect has the bulk endpoint"
    assert int(in_postgres) == 200, "stored in PostgreSQL"

"""Local mode's prepared waves on the real session Prefect server (no workers: flow runs
stay pending): each preparation is a flow run of its own, in one batch and across batches."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prefect.workers.process import ProcessWorker

from sierra_operator.core.machine import RunAttempt, SubmitRuns
from sierra_operator.local.prefetch import Prefetch
from sierra_operator.runs.gate import WITHDRAW
from sierra_operator.runs.prefect_api import PrefectBatch

pytestmark = pytest.mark.integration


def _batch(api_url: str, batch_id: str) -> PrefectBatch:
    return PrefectBatch(api_url, batch_id, f"p-{uuid.uuid4().hex[:8]}", "q")


def test_each_preparation_of_a_wave_is_a_flow_run_of_its_own(
    prefect_api_url: str, tmp_path: Path
) -> None:
    """A wave prepared, withdrawn and prepared again (same runs, same attempts) gets a new
    flow run waiting at a new gate, not the first, Cancelled one; a repeat of the same
    preparation (a retried request) is still the same flow run; and a second batch run
    right after, with the same name on the same server and home, shares neither."""
    wave = SubmitRuns("e1", 1, (RunAttempt(0, "true", 1), RunAttempt(1, "true", 1)))

    async def prepare(batch: PrefectBatch, prefetch: Prefetch) -> tuple[uuid.UUID, Path]:
        gate = prefetch.new_gate(wave)
        params = {"batch_id": batch.batch_id, "batch_root": str(tmp_path), "gate": str(gate)}
        return await batch.submit(wave, params, prepared=gate.name), gate

    async def scenario() -> dict[str, object]:
        first_batch = _batch(prefect_api_url, f"b-{uuid.uuid4().hex[:8]}")
        await first_batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await first_batch.ensure_deployment(str(tmp_path))
        prefetch = Prefetch(tmp_path / "gates" / first_batch.batch_id)
        one, one_gate = await prepare(first_batch, prefetch)
        prefetch.hold(wave, one, one_gate)
        prefetch.withdraw()
        two, two_gate = await prepare(first_batch, prefetch)
        params = {"batch_id": first_batch.batch_id, "gate": str(two_gate)}
        repeat = await first_batch.submit(wave, params, prepared=two_gate.name)
        # The next batch: the same name (local mode adds its own suffix), same server.
        second_batch = _batch(prefect_api_url, f"b-{uuid.uuid4().hex[:8]}")
        await second_batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await second_batch.ensure_deployment(str(tmp_path))
        other, other_gate = await prepare(
            second_batch, Prefetch(tmp_path / "gates" / second_batch.batch_id)
        )
        await first_batch.cleanup()
        await second_batch.cleanup()
        return {
            "ids": (one, two, repeat, other),
            "gates": (one_gate, two_gate, other_gate),
        }

    out = asyncio.run(scenario())
    one, two, repeat, other = out["ids"]  # type: ignore[misc]
    one_gate, two_gate, other_gate = out["gates"]  # type: ignore[misc]
    assert one != two, "prepared again after a withdraw: a new flow run"
    assert repeat == two, "the same preparation sent twice is still one flow run"
    assert other not in (one, two), "the next batch never gets this batch's prepared run"
    assert len({one_gate, two_gate, other_gate}) == 3
    assert one_gate.read_text() == WITHDRAW and not two_gate.exists()

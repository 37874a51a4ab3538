"""PrefectBatch against the real session Prefect server (no workers: flow runs stay pending)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from sierra_operator.runs.prefect_api import PrefectBatch

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


def test_observations_on_the_real_server_never_fail_a_completed_run(
    prefect_api_url: str, tmp_path
) -> None:
    """Task run states reach Prefect's database after their flow run's (through events): a
    wave read COMPLETED with no task run yet is succeeded, not failed; a crashed flow run of
    one run reports the server's message as the reason; only settled observations are kept
    (a run read RUNNING is read again and then seen to end)."""
    from prefect.states import Completed, Crashed, Running

    from sierra_operator.core.machine import RunAttempt, RunPhase, SubmitRuns
    from sierra_operator.runs import ledger

    batch = PrefectBatch(
        prefect_api_url,
        f"b{uuid.uuid4().hex[:8]}",
        f"p-{uuid.uuid4().hex[:8]}",
        "q",
        read_records=True,
    )
    root = str(tmp_path)
    params = {"batch_id": batch.batch_id, "batch_root": root, "workdir": root, "parallelism": 2}

    async def scenario() -> list[dict]:
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await batch.ensure_deployment(root)
        wave = await batch.submit(
            SubmitRuns("e0", 0, (RunAttempt(0, "true", 1), RunAttempt(1, "true", 1))), params
        )
        (single,) = await batch.submit_each(SubmitRuns("e1", 1, (RunAttempt(0, "x", 1),)), params)
        seen = []
        async with batch.client() as client:
            await client.set_flow_run_state(wave, Running(), force=True)
            await client.set_flow_run_state(single, Running(), force=True)
            seen.append(await batch.observe())
            await client.set_flow_run_state(wave, Completed(), force=True)
            await client.set_flow_run_state(
                single,
                Crashed(message="Unable to create Kubernetes job: quantities must match"),
                force=True,
            )
            seen.append(await batch.observe())
        await batch.cleanup()
        return seen

    running, final = asyncio.run(scenario())
    assert {k: o.phase for k, o in running.items()} == {
        ("e0", 0): RunPhase.PENDING,
        ("e0", 1): RunPhase.PENDING,
        ("e1", 0): RunPhase.RUNNING,
    }, "no task run yet in a running wave: not started; the single run: its flow run's state"
    assert final[("e0", 0)].phase is RunPhase.SUCCEEDED
    assert final[("e0", 1)].phase is RunPhase.SUCCEEDED
    crashed = final[("e1", 0)]
    assert crashed.phase is RunPhase.FAILED
    assert crashed.reason == "Unable to create Kubernetes job: quantities must match"
    assert crashed.log == str(ledger.run_paths(tmp_path, "e1", 0)[1])


def test_observe_reads_only_runs_that_may_still_change(prefect_api_url: str, tmp_path) -> None:
    """After the first full read, observe() asks Prefect only for flow runs not settled yet
    (and the ones submitted since): O(active runs) per tick, not O(all runs); a restarted
    driver (a new PrefectBatch) reads everything once and sees the same."""
    from prefect.states import Completed, Running

    from sierra_operator.core.machine import RunAttempt, RunPhase, SubmitRuns

    ids = (prefect_api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}", "q")
    batch = PrefectBatch(*ids)
    root = str(tmp_path)
    params = {"batch_id": batch.batch_id, "batch_root": root, "workdir": root}
    runs = tuple(RunAttempt(i, "true", 1) for i in range(10))

    async def scenario() -> tuple[list[int], dict, dict]:
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await batch.ensure_deployment(root)
        created = await batch.submit_each(SubmitRuns("e0", 0, runs), params)
        reads = []
        async with batch.client() as client:
            for run_id in created:
                await client.set_flow_run_state(run_id, Running(), force=True)
            await batch.observe()
            reads.append(batch.flow_runs_read)
            for run_id in created[:9]:
                await client.set_flow_run_state(run_id, Completed(), force=True)
            await batch.observe()
            reads.append(batch.flow_runs_read - reads[-1])
            seen = await batch.observe()
            reads.append(batch.flow_runs_read - sum(reads))
        again = PrefectBatch(*ids)
        fresh = await again.observe()
        await batch.cleanup()
        return reads, seen, fresh

    reads, seen, fresh = asyncio.run(scenario())
    assert reads == [10, 10, 1], "all once, then only the unsettled ones"
    assert sum(o.phase is RunPhase.SUCCEEDED for o in seen.values()) == 9
    assert seen[("e0", 9)].phase is RunPhase.RUNNING
    assert fresh == seen, "a restarted driver reads everything once and agrees"


def test_a_deployment_from_an_older_module_path_is_repointed(prefect_api_url: str) -> None:
    """An operator upgrade may move the flow's module (the package tree changed once): a batch
    provisioned by the older version keeps its deployment, and a restarted operator that only
    looks it up must point it at this version's flow, or every run created afterwards fails
    to import its flow in the new image."""
    from prefect.client.schemas.actions import DeploymentUpdate

    from sierra_operator.core import names

    ids = (prefect_api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}", "q")
    batch = PrefectBatch(*ids)

    async def scenario() -> tuple[str | None, str | None]:
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        made = await batch.ensure_deployment("/tmp")
        async with batch.client() as client:
            old = DeploymentUpdate(entrypoint="sierra_operator.flows.run_experiment")
            await client.update_deployment(made, old)
            before = (await client.read_deployment(made)).entrypoint
            restarted = PrefectBatch(*ids)
            assert await restarted.resolve_deployment() == made
            after = (await client.read_deployment(made)).entrypoint
        await batch.cleanup()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == "sierra_operator.flows.run_experiment"
    assert after == names.FLOW_ENTRYPOINT == "sierra_operator.runs.flows.run_experiment"


def test_concurrent_submission_is_bounded_and_creates_each_run_once(
    prefect_api_url: str, tmp_path
) -> None:
    """submit_each with creates in flight (the operator's SIERRA_OPERATOR_SUBMIT_CONCURRENCY):
    never more at once than asked, ids in the runs' order, and a repeat (a create retried, or
    a restarted operator re-deciding the wave) makes no second flow run: the idempotency key
    names batch, experiment, run and attempt."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from sierra_operator.core import names
    from sierra_operator.core.machine import RunAttempt, SubmitRuns

    class Counting(PrefectBatch):
        """The real adapter, counting its creates in flight."""

        in_flight = peak = 0

        async def _create_run(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            Counting.in_flight += 1
            Counting.peak = max(Counting.peak, Counting.in_flight)
            try:
                return await super()._create_run(*args, **kwargs)
            finally:
                Counting.in_flight -= 1

    ids = (prefect_api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}", "q")
    root = str(tmp_path)
    params = {"batch_id": ids[1], "batch_root": root, "workdir": root}
    action = SubmitRuns("e0", 0, tuple(RunAttempt(i, "true", 1) for i in range(24)))

    async def scenario() -> tuple[list, list, list]:
        batch = Counting(*ids, submit_concurrency=6)
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await batch.ensure_deployment(root)
        first = await batch.submit_each(action, params)
        again = await Counting(*ids, submit_concurrency=6).submit_each(action, params)
        async with batch.client() as client:
            stored = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[names.batch_tag(ids[1])])
                ),
                limit=100,
            )
        await batch.cleanup()
        return first, again, stored

    first, again, stored = asyncio.run(scenario())
    assert 1 < Counting.peak <= 6, Counting.peak
    assert again == first, "the repeat returned the same flow runs"
    assert len(stored) == 24 and {fr.id for fr in stored} == set(first), "each run once"
    by_id = {fr.id: fr.name for fr in stored}
    assert [by_id[i] for i in first] == [f"e0-run{i}-try1" for i in range(24)], "in run order"


def test_batches_share_one_open_client_per_api(prefect_api_url: str, tmp_path) -> None:
    """The operator's batches share one open PrefectClient per API URL and key (a fresh one
    per batch per tick cost ~18 ms of CPU each: 100 batches would need a core for that): the
    same client across batches and calls, still open after each use, one per key."""
    from sierra_operator.core.machine import RunAttempt, SubmitRuns
    from sierra_operator.runs.prefect_api import PrefectClients

    clients = PrefectClients()
    root = str(tmp_path)

    def batch() -> PrefectBatch:
        uid = f"b{uuid.uuid4().hex[:8]}"
        return PrefectBatch(prefect_api_url, uid, f"p-{uid}", "q", clients=clients)

    async def scenario() -> tuple[list, int, bool, int]:
        used = []
        batches = [batch(), batch()]
        for b in batches:
            await b.ensure_pool(ProcessWorker.get_default_base_job_template())
            await b.ensure_deployment(root)
            params = {"batch_id": b.batch_id, "batch_root": root, "workdir": root}
            await b.submit_each(SubmitRuns("e0", 0, (RunAttempt(0, "true", 1),)), params)
            for _ in range(3):
                await b.observe()
                async with b.client() as client:
                    used.append(client)
        opened = clients.opened
        async with clients.get(prefect_api_url, "another-key") as other:
            distinct = other is not used[0]
        both = clients.opened
        for b in batches:
            await b.cleanup()
        await clients.close()
        return used, opened, distinct, both

    used, opened, distinct, both = asyncio.run(scenario())
    assert all(client is used[0] for client in used) and opened == 1, "one client for all"
    assert distinct and both == 2, "another API key gets its own client"

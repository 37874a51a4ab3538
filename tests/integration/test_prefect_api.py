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


NO_BULK_ROUTES = {
    # What a Prefect without the endpoint answers: no such route, 404 {"detail": "Not Found"}.
    "404": "/deployments/{id}/create_flow_run/not-here",
    # A route the server has for GET only: 405 Method Not Allowed.
    "405": "/deployments/{id}/work_queue_check",
}


class Counting(PrefectBatch):
    """The real adapter, counting its requests that create flow runs (bulk or single) in
    flight, and the size of each bulk request it sent to the server."""

    in_flight = peak = singles = 0
    bulk_sizes: list[int] = []

    @classmethod
    def reset(cls) -> None:
        cls.in_flight = cls.peak = cls.singles = 0
        cls.bulk_sizes = []

    async def _counted(self, call):  # type: ignore[no-untyped-def]
        Counting.in_flight += 1
        Counting.peak = max(Counting.peak, Counting.in_flight)
        try:
            return await call
        finally:
            Counting.in_flight -= 1

    async def _create_runs(self, client, creates):  # type: ignore[no-untyped-def]
        if self._bulk_create is not False:  # else it sends nothing
            Counting.bulk_sizes.append(len(creates))
        return await self._counted(super()._create_runs(client, creates))

    async def _create_run(self, client, create):  # type: ignore[no-untyped-def]
        Counting.singles += 1
        return await self._counted(super()._create_run(client, create))


async def _stored(batch: PrefectBatch) -> list:
    """Every flow run of ``batch`` on its server, read by tag (not by the ids it knows)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from sierra_operator.core import names

    out: list = []
    async with batch.client() as client:
        while True:
            page = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[names.batch_tag(batch.batch_id)])
                ),
                limit=200,
                offset=len(out),
            )
            out += page
            if len(page) < 200:
                return out


def _assert_single_run_flow_run(fr, batch_id: str, params: dict, experiment: str) -> int:  # type: ignore[no-untyped-def]
    """``fr`` is the flow run of one run, as submit_each has always made it: name, tags,
    parameters, idempotency key. Returns its run index."""
    from sierra_operator.core import names

    (run,) = fr.parameters["runs"]
    index = run["index"]
    assert fr.name == f"{experiment}-run{index}-try1"
    assert set(fr.tags) == {
        names.batch_tag(batch_id),
        names.experiment_tag(experiment),
        names.run_tag(index),
    }
    assert fr.parameters == {
        **params,
        "parallelism": 1,
        "experiment": experiment,
        "runs": [{"index": index, "command": f"cmd {index}", "attempt": 1}],
    }
    assert fr.idempotency_key == f"{batch_id}/{experiment}/{index}/1"
    return int(index)


@pytest.mark.parametrize("endpoint", ["bulk", *NO_BULK_ROUTES])
def test_concurrent_submission_is_bounded_and_creates_each_run_once(
    prefect_api_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    """submit_each with requests in flight (the operator's SIERRA_OPERATOR_SUBMIT_CONCURRENCY):
    never more at once than asked, ids in the runs' order, and a repeat (a request retried,
    or a restarted operator re-deciding the wave) makes no second flow run: the idempotency
    key names batch, experiment, run and attempt.

    ``bulk``: the server's bulk create, 4 flow runs per request here (100 in the operator)
    so the 24 runs take 6 requests. ``404``/``405``: the bulk create is sent to a path this
    real server answers 404 (no such route, as a Prefect without the endpoint does) or 405
    (a GET-only route): the same flow runs are made one create each, in the same bound, and
    the batch remembers it: its next wave sends no bulk request."""
    from sierra_operator.core.machine import RunAttempt, SubmitRuns
    from sierra_operator.runs import prefect_api

    monkeypatch.setattr(prefect_api, "BULK_CREATE_LIMIT", 4)
    if endpoint != "bulk":
        monkeypatch.setattr(prefect_api, "BULK_CREATE_ROUTE", NO_BULK_ROUTES[endpoint])
    Counting.reset()
    ids = (prefect_api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}", "q")
    root = str(tmp_path)
    params = {"batch_id": ids[1], "batch_root": root, "workdir": root}
    action = SubmitRuns("e0", 0, tuple(RunAttempt(i, f"cmd {i}", 1) for i in range(24)))
    later = SubmitRuns("e1", 1, tuple(RunAttempt(i, f"cmd {i}", 1) for i in range(8)))

    async def scenario() -> tuple[list, list, list, bool | None, int]:
        batch = Counting(*ids, submit_concurrency=6)
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await batch.ensure_deployment(root)
        first = await batch.submit_each(action, params)
        again = await Counting(*ids, submit_concurrency=6).submit_each(action, params)
        probes = len(Counting.bulk_sizes)
        await batch.submit_each(later, params)
        stored = await _stored(batch)
        await batch.cleanup()
        return first, again, stored, batch._bulk_create, len(Counting.bulk_sizes) - probes

    first, again, stored, bulk, later_probes = asyncio.run(scenario())
    assert 1 < Counting.peak <= 6, Counting.peak
    assert again == first, "the repeat returned the same flow runs"
    wave = [fr for fr in stored if fr.parameters["experiment"] == "e0"]
    assert len(wave) == 24 and {fr.id for fr in wave} == set(first), "each run once"
    assert len(stored) == 24 + 8
    by_id = {fr.id: fr for fr in wave}
    indexes = [_assert_single_run_flow_run(by_id[i], ids[1], params, "e0") for i in first]
    assert indexes == list(range(24)), "in run order"
    if endpoint == "bulk":
        assert bulk is True and Counting.singles == 0
        # 6 + 6 + 2 requests, and any flow runs SQLite refused sent again (_submit_chunk)
        assert len(Counting.bulk_sizes) >= 14 and max(Counting.bulk_sizes) == 4
    else:
        assert bulk is False and Counting.singles == 24 + 24 + 8
        assert later_probes == 0, "a batch that found no bulk endpoint does not ask again"


def test_a_large_wave_is_created_in_bulk_once(prefect_api_url: str, tmp_path) -> None:
    """A 250-run wave takes 3 bulk requests (100 flow runs each at most) and makes exactly
    250 flow runs, named, tagged and parameterised as one create per run always made them.
    Submitted again by a fresh PrefectBatch of the same batch (an operator restart
    re-deciding the wave): the same ids, nothing created. Ten of its runs submitted again
    through single creates (a server without the bulk endpoint: a path that 404s): the same
    ids too, so both paths send the same idempotency keys."""
    from sierra_operator.core.machine import RunAttempt, SubmitRuns
    from sierra_operator.runs import prefect_api

    Counting.reset()
    ids = (prefect_api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}", "q")
    root = str(tmp_path)
    params = {"batch_id": ids[1], "batch_root": root, "workdir": root}
    action = SubmitRuns("c1-exp0", 0, tuple(RunAttempt(i, f"cmd {i}", 1) for i in range(250)))

    async def scenario() -> tuple[list, list, list, list, list]:
        batch = Counting(*ids)
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await batch.ensure_deployment(root)
        first = await batch.submit_each(action, params)
        requests = list(Counting.bulk_sizes)
        restarted = await Counting(*ids).submit_each(action, params)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(prefect_api, "BULK_CREATE_ROUTE", NO_BULK_ROUTES["404"])
            single = Counting(*ids)
            some = SubmitRuns("c1-exp0", 0, action.runs[95:105])  # across two requests
            one_each = await single.submit_each(some, params)
            assert single._bulk_create is False and Counting.singles == 10
        stored = await _stored(batch)
        await batch.cleanup()
        return first, restarted, one_each, stored, requests

    first, restarted, one_each, stored, requests = asyncio.run(scenario())
    assert requests[:3] == [100, 100, 50], "the first three; then any SQLite refused, again"
    assert max(requests) <= 100
    assert len(stored) == 250 and {fr.id for fr in stored} == set(first), "each run once"
    assert restarted == first and one_each == first[95:105], "a repeat creates nothing"
    by_id = {fr.id: fr for fr in stored}
    indexes = [_assert_single_run_flow_run(by_id[i], ids[1], params, "c1-exp0") for i in first]
    assert indexes == list(range(250)), "in run order"


def test_packed_groups_are_created_in_bulk(prefect_api_url: str, tmp_path) -> None:
    """runsPerPod 3 (executing 2 at a time in a pod): 10 runs are 4 flow runs, 3 groups
    (a wave each, ``/pod`` key, ``parallelism`` 2) and a group of one run (that run's own
    flow run): one bulk request; a repeat creates nothing."""
    from sierra_operator.core import names
    from sierra_operator.core.machine import RunAttempt, SubmitRuns

    Counting.reset()
    ids = (prefect_api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}", "q")
    uid = ids[1]
    root = str(tmp_path)
    params = {"batch_id": uid, "batch_root": root, "workdir": root}
    action = SubmitRuns("e0", 0, tuple(RunAttempt(i, f"cmd {i}", 2) for i in range(10)))

    async def scenario() -> tuple[list, list, list]:
        batch = Counting(*ids)
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await batch.ensure_deployment(root)
        first = await batch.submit_each(action, params, runs_per_pod=3, in_pod=2)
        again = await Counting(*ids).submit_each(action, params, runs_per_pod=3, in_pod=2)
        stored = await _stored(batch)
        await batch.cleanup()
        return first, again, stored

    first, again, stored = asyncio.run(scenario())
    assert Counting.bulk_sizes[:2] == [4, 4] and Counting.singles == 0, "one per submit"
    assert again == first and len(stored) == 4 and {fr.id for fr in stored} == set(first)
    by_id = {fr.id: fr for fr in stored}
    got = [
        (by_id[i].name, by_id[i].idempotency_key, by_id[i].parameters["parallelism"]) for i in first
    ]
    assert got == [
        ("e0-runs0-2-try2", f"{uid}/e0/0/2/pod", 2),
        ("e0-runs3-5-try2", f"{uid}/e0/3/2/pod", 2),
        ("e0-runs6-8-try2", f"{uid}/e0/6/2/pod", 2),
        ("e0-run9-try2", f"{uid}/e0/9/2", 1),
    ]
    group = by_id[first[1]]
    assert [r["index"] for r in group.parameters["runs"]] == [3, 4, 5]
    assert set(group.tags) == {names.batch_tag(uid), names.experiment_tag("e0")}
    assert names.run_tag(9) in by_id[first[3]].tags


def test_flow_runs_the_server_refuses_are_named_with_its_reason(
    prefect_api_url: str, tmp_path
) -> None:
    """The server reports each flow run of a bulk create CREATED or FAILED: FAILED ones raise
    an error naming them and the server's reason, and the batch is listed again next
    observe(). The way to make this real server refuse on demand: a parameter it cannot
    hydrate (Prefect's ``__prefect_kind: json`` with a value that is not JSON); it refuses
    every flow run of the wave, the operator never sends such a parameter."""
    from sierra_operator.core.machine import RunAttempt, SubmitRuns
    from sierra_operator.runs.prefect_api import FlowRunsRefused

    ids = (prefect_api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}", "q")
    root = str(tmp_path)
    bad = {"__prefect_kind": "json", "value": "{not json"}
    params = {"batch_id": ids[1], "batch_root": root, "workdir": root, "extra": bad}
    action = SubmitRuns("e0", 0, tuple(RunAttempt(i, f"cmd {i}", 1) for i in range(7)))

    async def scenario() -> tuple[str, bool, set, list]:
        batch = PrefectBatch(*ids)
        await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
        await batch.ensure_deployment(root)
        await batch.observe()  # listed once
        with pytest.raises(FlowRunsRefused) as refused:
            await batch.submit_each(action, params)
        stored = await _stored(batch)
        await batch.cleanup()
        return str(refused.value), batch._listed, batch._unsettled, stored

    message, listed, unsettled, stored = asyncio.run(scenario())
    assert message.startswith("Prefect refused 7 of 7 flow runs of e0 in a bulk create"), message
    assert "e0-run0-try1, e0-run1-try1, e0-run2-try1, e0-run3-try1, e0-run4-try1 and 2 more: " in (
        message
    )
    assert "Invalid JSON" in message, "the server's reason"
    assert listed is False, "listed again next observe"
    assert unsettled == set() and stored == [], "nothing was created"


def test_batches_share_one_open_client_per_api(prefect_api_url: str, tmp_path) -> None:
    """The operator's batches share one open PrefectClient per API URL and key (a fresh one
    per batch per tick cost ~18 ms of CPU each: 100 batches would need a core for that): the
    same client across batches and calls, still open after each use, one per key."""
    from sierra_operator.core.machine import RunAttempt, SubmitRuns
    from sierra_operator.runs.clients import PrefectClients

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

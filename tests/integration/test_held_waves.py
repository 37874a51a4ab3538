"""Held waves (runs/held.py) against the real session Prefect server.

What a worker would be handed is asked of the server's own scheduler, through the endpoint
Prefect's workers poll (``POST /work_pools/{pool}/get_scheduled_flow_runs``): no worker
runs here, so nothing executes, and the test sees exactly what one would get.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from prefect.client.schemas.objects import StateType
from prefect.workers.process import ProcessWorker

from sierra_operator.core.machine import RunAttempt, RunPhase, SubmitRuns
from sierra_operator.runs import held
from sierra_operator.runs.prefect_api import PrefectBatch

pytestmark = pytest.mark.integration


def wave(experiment: str, index: int, runs: int, attempt: int = 1) -> SubmitRuns:
    return SubmitRuns(
        experiment, index, tuple(RunAttempt(i, f"echo {i}", attempt) for i in range(runs))
    )


async def handed_out(batch: PrefectBatch) -> set[uuid.UUID]:
    """The flow runs Prefect's scheduler gives a worker of the batch's pool (every queue)."""
    async with batch.client() as client:
        response = await client.request(
            "POST",
            "/work_pools/{name}/get_scheduled_flow_runs",
            path_params={"name": batch.pool},
            json={},
        )
    return {uuid.UUID(item["flow_run"]["id"]) for item in response.json()}


def new_batch(api_url: str, batch_id: str, pool: str) -> PrefectBatch:
    return PrefectBatch(api_url, batch_id, pool, "q", pool_type="process")


def a_batch(api_url: str, tmp_path: Any) -> tuple[tuple[str, str, str], PrefectBatch, dict]:
    """A new batch's ids (API, batch id, pool), its PrefectBatch and its flow parameters."""
    ids = (api_url, f"b{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}")
    params = {"batch_id": ids[1], "batch_root": str(tmp_path), "workdir": str(tmp_path)}
    return ids, new_batch(*ids), params


async def provisioned(batch: PrefectBatch, tmp_path: Any) -> None:
    """Pool, queue and deployment, as the reconciler makes them; hold queues read."""
    await batch.ensure_pool(ProcessWorker.get_default_base_job_template())
    await batch.ensure_deployment(str(tmp_path))
    await held.load(batch)


def test_a_held_wave_is_handed_to_no_worker_until_released_also_after_a_restart(
    prefect_api_url: str, tmp_path: Any
) -> None:
    """A held wave's flow runs exist and are hidden from observe; the scheduler hands none of
    them out while the current experiment's runs are handed out; a restarted operator (a
    fresh PrefectBatch) still hides them and releases them with one request; after the
    release they are handed out and observed as submitted (queued)."""
    ids, batch, params = a_batch(prefect_api_url, tmp_path)
    current, following = wave("e0", 0, 2), wave("e1", 1, 3)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        await provisioned(batch, tmp_path)
        running = set(await batch.submit_each(current, params))
        out["held"] = await held.hold(batch, following, params)
        held_ids = set(batch.held_in(held.queue_name(batch, following)))
        out["again"] = await held.hold(batch, following, params)  # next tick: nothing new
        out["observed"] = await batch.observe()
        out["handed_before"] = await handed_out(batch)
        async with batch.client() as client:
            out["state_names"] = {(await client.read_flow_run(i)).state_name for i in held_ids}
        restarted = new_batch(*ids)
        await held.load(restarted)
        out["observed_restarted"] = await restarted.observe()
        out["released"] = await held.release(restarted, following)
        out["observed_after"] = await restarted.observe()
        out["handed_after"] = await handed_out(batch)
        out["running"], out["held_ids"] = running, held_ids
        async with batch.client() as client:
            out["queues"] = {
                q.name: q.is_paused for q in await client.read_work_queues(work_pool_name=ids[2])
            }
        last = wave("e2", 2, 1)
        await held.hold(restarted, last, params)
        await restarted.observe()
        out["released_last"] = await held.release(restarted, last)
        async with batch.client() as client:
            out["queues_after"] = {
                q.name for q in await client.read_work_queues(work_pool_name=ids[2])
            }
        await batch.cancel_active(timeout=5)
        await batch.cleanup()
        return out

    out = asyncio.run(scenario())
    assert out["held"] is True and out["again"] is False, "held once, not on every tick"
    assert len(out["held_ids"]) == 3, "one flow run per run of the held wave"
    assert set(out["observed"]) == {("e0", 0), ("e0", 1)}, "held runs are not submitted yet"
    assert out["handed_before"] == out["running"], "the scheduler hands out no held flow run"
    assert out["state_names"] == {"Held"}, "not marked Late by Prefect while it waits"
    assert set(out["observed_restarted"]) == {("e0", 0), ("e0", 1)}, "hidden after a restart"
    assert out["released"]
    after = out["observed_after"]
    assert {k for k in after if k[0] == "e1"} == {("e1", 0), ("e1", 1), ("e1", 2)}
    assert all(after[("e1", i)].phase is RunPhase.PENDING for i in range(3))
    assert out["handed_after"] == out["running"] | out["held_ids"]
    hold_name = held.queue_name(batch, following)
    assert out["queues"][hold_name] is False, "released: unpaused, for good"
    assert out["released_last"] is True
    assert hold_name not in out["queues_after"], "a released queue goes at the next release"
    assert held.queue_name(batch, wave("e2", 2, 1)) in out["queues_after"]


def test_a_held_wave_that_is_not_decided_is_withdrawn_having_run_nothing(
    prefect_api_url: str, tmp_path: Any
) -> None:
    """When decide submits another wave of the held experiment (a run's attempt changed, say),
    release refuses and withdraws the held one: its flow runs end Cancelled without ever being
    handed out, stay hidden, and its queue stays paused; a wave whose queue exists is never
    held again. On delete, a held flow run is Cancelled at once (no worker would confirm a
    Cancelling)."""
    ids, batch, params = a_batch(prefect_api_url, tmp_path)
    guessed, decided, later = wave("e1", 1, 2), wave("e1", 1, 2, attempt=2), wave("e2", 2, 1)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        await provisioned(batch, tmp_path)
        await held.hold(batch, guessed, params)
        guessed_ids = batch.held_in(held.queue_name(batch, guessed))
        await batch.observe()
        out["released"] = await held.release(batch, decided)
        out["observed"] = await batch.observe()
        out["handed"] = await handed_out(batch)
        out["held_again"] = await held.hold(batch, guessed, params)
        await held.hold(batch, later, params)
        later_ids = batch.held_in(held.queue_name(batch, later))
        async with batch.client() as client:
            out["states"] = [
                (await client.read_flow_run(i)).state_type for i in guessed_ids + later_ids
            ]
            out["left"] = await batch.cancel_active(timeout=5)
            out["later_states"] = [(await client.read_flow_run(i)).state_type for i in later_ids]
            out["queues"] = {
                q.name: q.is_paused for q in await client.read_work_queues(work_pool_name=ids[2])
            }
        out["guessed_ids"] = guessed_ids
        await batch.cleanup()
        return out

    out = asyncio.run(scenario())
    assert out["released"] is False, "not the decided wave: the caller submits it"
    assert out["observed"] == {}, "the withdrawn wave's runs never count"
    assert not set(out["guessed_ids"]) & out["handed"]
    assert out["states"][:2] == [StateType.CANCELLED, StateType.CANCELLED]
    assert out["states"][2] is StateType.SCHEDULED
    assert out["held_again"] is False, "a withdrawn wave is never held again"
    assert out["left"] == 0 and out["later_states"] == [StateType.CANCELLED]
    assert out["queues"][held.queue_name(batch, guessed)] is True


def test_a_wave_held_for_another_spec_generation_is_not_released(
    prefect_api_url: str, tmp_path: Any
) -> None:
    """A wave held under spec generation 1 carries that spec's packing and parameters: when
    generation 2 decides the very same runs, it is withdrawn (Cancelled, never handed out)
    and the caller submits them anew."""
    _ids, batch, params = a_batch(prefect_api_url, tmp_path)
    following = wave("e1", 1, 2)

    async def scenario() -> tuple[bool, list[Any], set[uuid.UUID]]:
        await provisioned(batch, tmp_path)
        await held.hold(batch, following, params, generation=1)
        old = batch.held_in(held.queue_name(batch, following, 1))
        await batch.observe()
        released = await held.release(batch, following, generation=2)
        handed = await handed_out(batch)
        async with batch.client() as client:
            states = [(await client.read_flow_run(i)).state_type for i in old]
        await batch.cleanup()
        return released, states, handed

    released, states, handed = asyncio.run(scenario())
    assert released is False
    assert states == [StateType.CANCELLED, StateType.CANCELLED]
    assert handed == set()


def test_a_partly_held_wave_is_completed_or_never_released_in_part(
    prefect_api_url: str, tmp_path: Any
) -> None:
    """A hold that created only part of its wave (a create failed, the operator restarted)
    is completed by the next hold while its queue is paused; a part that is never completed
    is not released: it is withdrawn and the caller submits the whole wave, so no run waits
    on a flow run that was never made, nor is made twice."""
    ids, batch, params = a_batch(prefect_api_url, tmp_path)
    first, second = wave("e1", 1, 3), wave("e2", 2, 2)

    async def lose_one(queue: str) -> None:
        async with batch.client() as client:
            await client.delete_flow_run(batch.held_in(queue)[0])

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        await provisioned(batch, tmp_path)
        await held.hold(batch, first, params)
        await held.hold(batch, second, params)
        await lose_one(held.queue_name(batch, first))
        await lose_one(held.queue_name(batch, second))
        restarted = new_batch(*ids)
        await held.load(restarted)
        await restarted.observe()
        out["resent"] = await held.hold(restarted, first, params)
        await restarted.observe()
        out["released"] = await held.release(restarted, first)
        out["observed"] = await restarted.observe()
        out["part_released"] = await held.release(restarted, second)
        part = restarted.held_in(held.queue_name(batch, second))
        async with batch.client() as client:
            out["part_states"] = [(await client.read_flow_run(i)).state_type for i in part]
        out["handed"] = await handed_out(batch)
        out["part"] = part
        await batch.cleanup()
        return out

    out = asyncio.run(scenario())
    assert out["resent"] is True, "the missing flow run is created, in the paused queue"
    assert out["released"] is True
    assert {k for k in out["observed"] if k[0] == "e1"} == {("e1", 0), ("e1", 1), ("e1", 2)}
    assert out["part_released"] is False, "one of two: never released in part"
    assert out["part_states"] == [StateType.CANCELLED]
    assert not set(out["part"]) & out["handed"]


def test_withdrawing_never_cancels_a_flow_run_a_worker_took(
    prefect_api_url: str, tmp_path: Any
) -> None:
    """If a held wave's queue was unpaused behind the operator's back (by hand, or by a
    release whose answer was lost) and a worker took a flow run, withdrawing it pauses the
    queue again, cancels only the flow runs still waiting and counts the taken one as
    submitted: its run is never started a second time. A reloaded operator finds an
    unpaused hold queue released and counts its flow runs."""
    from prefect.states import Running

    ids, batch, params = a_batch(prefect_api_url, tmp_path)
    guessed, later = wave("e1", 1, 2), wave("e2", 2, 1)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        await provisioned(batch, tmp_path)
        await held.hold(batch, guessed, params)
        await held.hold(batch, later, params)
        await batch.observe()
        taken, waiting = batch.held_in(held.queue_name(batch, guessed))
        (later_id,) = batch.held_in(held.queue_name(batch, later))
        async with batch.client() as client:
            for name in (held.queue_name(batch, guessed), held.queue_name(batch, later)):
                queue = await client.read_work_queue_by_name(name, work_pool_name=ids[2])
                await client.update_work_queue(queue.id, is_paused=False)
            await client.set_flow_run_state(taken, Running(), force=True)
        out["cancelled"] = await held.withdraw(batch, [held.queue_name(batch, guessed)])
        out["observed"] = await batch.observe()
        batch.hold_queues = None  # as after a release whose answer was lost
        await held.load(batch)
        out["observed_after_load"] = await batch.observe()
        async with batch.client() as client:
            out["states"] = {
                i: (await client.read_flow_run(i)).state_type for i in (taken, waiting)
            }
            queue = await client.read_work_queue_by_name(
                held.queue_name(batch, guessed), work_pool_name=ids[2]
            )
            out["paused_again"] = queue.is_paused
        out["ids"] = (taken, waiting, later_id)
        await batch.cancel_active(timeout=5)
        await batch.cleanup()
        return out

    out = asyncio.run(scenario())
    taken, waiting, _ = out["ids"]
    assert out["cancelled"] == 1
    assert out["states"] == {taken: StateType.RUNNING, waiting: StateType.CANCELLED}
    assert out["paused_again"] is True
    assert set(out["observed"]) == {("e1", 0)}, "the taken run counts: it is executing"
    assert ("e2", 0) in out["observed_after_load"], "an unpaused hold queue is released"


def test_a_held_wave_partly_taken_by_hand_is_never_submitted_again(
    prefect_api_url: str, tmp_path: Any
) -> None:
    """Someone unpaused a hold queue in Prefect's UI and cancelled one of its flow runs; a
    worker took the other. When decide submits the wave, release neither unpauses nor lets
    the caller submit it: the taken run now counts (executing), the cancelled one never ran
    and stays uncounted, and only it is left for decide to submit next tick."""
    from prefect.states import Cancelled, Running

    ids, batch, params = a_batch(prefect_api_url, tmp_path)
    following = wave("e1", 1, 2)

    async def scenario() -> tuple[bool, dict]:
        await provisioned(batch, tmp_path)
        await held.hold(batch, following, params)
        await batch.observe()
        taken, cancelled = batch.held_in(held.queue_name(batch, following))
        async with batch.client() as client:
            queue = await client.read_work_queue_by_name(
                held.queue_name(batch, following), work_pool_name=ids[2]
            )
            await client.update_work_queue(queue.id, is_paused=False)
            await client.set_flow_run_state(taken, Running(), force=True)
            await client.set_flow_run_state(cancelled, Cancelled(), force=True)
        await batch.observe()
        released = await held.release(batch, following)
        observed = await batch.observe()
        await batch.cancel_active(timeout=5)
        await batch.cleanup()
        return released, observed

    released, observed = asyncio.run(scenario())
    assert released is True, "the caller must not submit the wave again this tick"
    assert set(observed) == {("e1", 0)} or set(observed) == {("e1", 1)}
    assert next(iter(observed.values())).phase is RunPhase.RUNNING

"""Held waves: the operator creates the next experiment's flow runs ahead, in a paused queue.

Creating a flow run costs a Prefect server ~40-50 ms of CPU (the job-variable validation
against the pool's template is half of it). When many batches move to their next
experiment at once, their creates queue at the server: with 100 batches in lockstep an
experiment started 3-5 s (8 creates in flight) to 14-17 s (one) after the previous ended,
against a target of < 1 s. So while an experiment's runs execute, the wave that
:func:`~sierra_operator.core.machine.next_wave` says comes next is created already, in a
work queue of its own made *paused*: Prefect's scheduler never hands a worker a flow run of
a paused queue (both its PostgreSQL and SQLite queries filter ``is_paused``), and the
pool's concurrency limit counts only Pending and Running flow runs, so held ones take no
slot. When :func:`~sierra_operator.core.machine.decide` submits that very wave (same
``wave_key``, so the same queue name), one request unpauses the queue: the move costs the
server one small update however large the wave, while the creates were paid during the
previous experiment.

What keeps the invariants:

- The state machine stays the one source of decisions: held flow runs are hidden from it
  (:meth:`PrefectBatch.observe`) until their queue is released, so a held wave never counts
  as submitted, and it is released only when ``decide`` submits it (the parallelism bound
  and the experiment order hold).
- Everything is kept in Prefect, so a restarted operator finds it: a hold queue's name says
  its experiment and its wave (:func:`~sierra_operator.core.names.hold_queue`), its pause
  flag whether it is held, and every flow run in a paused hold queue that no worker took is
  hidden.
- A queue is used for one wave only: a hold whose queue exists already (held, released or
  withdrawn) is not made twice (one held in part is completed while its queue is paused),
  nothing is ever put in a queue that is not paused, and only a whole wave is released.
- A held wave that can no longer be the one decided (another wave of its experiment or
  another spec generation was decided, one of its flow runs ended or was taken while held,
  the batch ended) is withdrawn: its queue is paused (again), its flow runs still waiting
  are set Cancelled having run nothing and stay hidden, one a worker took (its queue
  unpaused by hand) counts from then on, and the rest are submitted as usual under their
  normal keys.
- Only a batch whose workers poll every queue of the pool holds waves (the reconciler asks
  once per operator process): workers of an older version poll the batch's queue only.

Local mode has the same prefetch with a file gate instead (local/prefetch.py): its own
process executor starts the flow run early as well, which a worker pod cannot.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.states import Cancelled

from sierra_operator.core import names
from sierra_operator.core.machine import SubmitRuns, pack
from sierra_operator.runs.clients import PAGE
from sierra_operator.runs.observations import FINAL_STATES
from sierra_operator.runs.prefect_api import HoldQueue, PrefectBatch

log = logging.getLogger(__name__)

WITHDRAWN_MESSAGE = "sierra-operator: a wave held ahead was withdrawn before it ran"


async def load(prefect: PrefectBatch) -> dict[str, HoldQueue]:
    """This batch's hold queues, read from its pool once (a restarted operator learns
    which waves are held, and hides their flow runs; after a release whose answer was lost,
    whether it took), kept in ``prefect.hold_queues``. Flow runs of a queue found unpaused
    are counted from now on."""
    if prefect.hold_queues is None:
        found: dict[str, HoldQueue] = {}
        async with prefect.client() as client:
            offset = 0
            while True:
                page = await client.read_work_queues(
                    work_pool_name=prefect.pool, limit=PAGE, offset=offset
                )
                for queue in page:
                    experiment = names.held_experiment(prefect.queue, queue.name)
                    if experiment is not None:
                        found[queue.name] = HoldQueue(queue.id, experiment, queue.is_paused)
                if len(page) < PAGE:
                    break
                offset += len(page)
        for name, held in found.items():
            if not held.paused:
                prefect.reveal_queue(name)
        prefect.hold_queues = found
    return prefect.hold_queues


def queue_name(prefect: PrefectBatch, wave: SubmitRuns, generation: int | None = None) -> str:
    """The hold queue of ``wave`` held for spec ``generation``."""
    return names.hold_queue(prefect.queue, wave.experiment, f"{wave.wave_key}@{generation}")


async def hold(
    prefect: PrefectBatch,
    wave: SubmitRuns,
    parameters: dict[str, Any],
    runs_per_pod: int = 1,
    in_pod: int = 1,
    generation: int | None = None,
) -> bool:
    """Create ``wave``'s flow runs now, in a paused queue of its own; True if this call
    created them. A wave whose queue exists already is not held again (held, released or
    withdrawn before: in the last two cases it is submitted as usual when decided).

    ``generation``: the spec's, part of the queue's name, so a wave held for one spec (its
    packing, timeout, resources) is never released for another: it is withdrawn."""
    queues = await load(prefect)
    name = queue_name(prefect, wave, generation)
    groups = len(pack(wave.runs, runs_per_pod))
    if name in queues:  # held (maybe in part: a create failed), released or withdrawn
        held = prefect.held_in(name)
        if not queues[name].paused or len(held) >= groups or any(map(prefect.ended, held)):
            return False
    elif prefect.ahead_busy():
        return False  # another batch's wave is being held: next tick, not wait here
    async with prefect.client() as client:
        try:
            queue = await client.create_work_queue(
                name=name,
                work_pool_name=prefect.pool,
                is_paused=True,
                description=f"{names.MANAGED_BY}: {wave.experiment} held until it may start",
            )
        except ObjectAlreadyExists:  # made by a hold whose answer was lost
            queue = await client.read_work_queue_by_name(name, work_pool_name=prefect.pool)
    queues[name] = HoldQueue(queue.id, wave.experiment, queue.is_paused)
    if not queue.is_paused:  # released or unpaused by someone: never hold in it
        return False
    # Idempotent keys: sending a partly held wave again creates only what is missing.
    await prefect.submit_each(wave, parameters, runs_per_pod, in_pod, hold_queue=name)
    log.info("batch %s: %s held in paused queue %s", prefect.batch_id, wave.experiment, name)
    return True


async def release(prefect: PrefectBatch, action: SubmitRuns, generation: int | None = None) -> bool:
    """Start ``action`` by unpausing its held queue; True if it was held whole (for this
    spec ``generation``) and is released, False if the caller must submit it. Other held
    waves of its experiment can never be released and are withdrawn; so is ``action``'s own
    if it is not whole (a create of it failed) or one of its flow runs ended while held
    (cancelled by hand, say): its runs are then submitted anew under their own keys. True
    too, with nothing released, when withdrawing found a run a worker took (a hold queue
    unpaused by hand): it counts from now on and the wave is decided again next tick. A
    release whose answer is lost is read again from the server next tick (:func:`load`)."""
    queues = prefect.hold_queues or {}
    if not queues:
        return False
    name = queue_name(prefect, action, generation)
    mine = queues.get(name)
    stale = [
        n for n, q in queues.items() if q.paused and q.experiment == action.experiment and n != name
    ]
    held = prefect.held_in(name) if mine is not None and mine.paused else []
    wanted = {((action.experiment, r.index), r.attempt) for r in action.runs}
    whole = prefect.runs_in(held) == wanted
    if not whole or any(prefect.ended(i) or prefect.taken(i) for i in held):
        _, taken = await _withdraw(prefect, stale + ([name] if held else []))
        # A run a worker took (its queue unpaused by hand) now counts: decide again next
        # tick with it executing, rather than submit its attempt a second time now.
        return taken > 0
    _, taken = await _withdraw(prefect, stale)
    if taken:
        return True  # the same: nothing more this tick
    assert mine is not None
    try:
        async with prefect.client() as client:
            await client.update_work_queue(mine.id, is_paused=False)
    except BaseException:
        prefect.hold_queues = None  # it may have taken: read the pause flags again
        raise
    queues[name] = HoldQueue(mine.id, mine.experiment, False)
    prefect.reveal_queue(name)
    await _forget_released(prefect, keep=name)
    return True


async def _forget_released(prefect: PrefectBatch, keep: str) -> None:
    """Delete the hold queues released before ``keep``: their experiments are over (decide
    starts an experiment only once the one before is), so every flow run in them is final
    (Prefect sets their queue to none). A worker polling every queue of the pool reads and
    marks each queue at each poll: left alone they would cost that per experiment, forever.
    Withdrawn (paused) queues stay: they are what hides their flow runs. An optimisation:
    a failed delete is tried again at the next release."""
    queues = prefect.hold_queues or {}
    for name in [n for n, q in queues.items() if not q.paused and n != keep]:
        try:
            async with prefect.client() as client:
                await client.delete_work_queue_by_id(queues[name].id)
        except ObjectNotFound:
            pass
        except Exception as exc:
            log.info("batch %s: hold queue %s not deleted yet: %s", prefect.batch_id, name, exc)
            continue
        del queues[name]


async def withdraw(prefect: PrefectBatch, queue_names: list[str] | None = None) -> int:
    """Withdraw held waves (every one if ``queue_names`` is None); returns how many flow
    runs it cancelled (:func:`_withdraw`)."""
    return (await _withdraw(prefect, queue_names))[0]


async def _withdraw(prefect: PrefectBatch, queue_names: list[str] | None) -> tuple[int, int]:
    """Withdraw held waves: (flow runs cancelled, flow runs found taken by a worker).

    Their queues are paused again first (they should be: a hand-unpaused one stops handing
    out more), then their flow runs still Scheduled are set Cancelled: those never ran. One a
    worker took meanwhile is not touched: it is counted from now on, like a released one (the
    state machine then sees it executing, and submits nothing twice)."""
    queues = prefect.hold_queues or {}
    targets = [
        n
        for n in (queue_names if queue_names is not None else list(queues))
        if n in queues and queues[n].paused
    ]
    held = [i for name in targets for i in prefect.held_in(name) if not prefect.ended(i)]
    if not held:
        return 0, 0
    async with prefect.client() as client:
        for name in targets:
            await client.update_work_queue(queues[name].id, is_paused=True)
    states = await prefect.state_types(held)
    waiting = [i for i in held if states.get(i) is StateType.SCHEDULED]
    taken = [
        i for i in held if i in states and states[i] not in (StateType.SCHEDULED, *FINAL_STATES)
    ]
    for run_id in taken:
        log.warning("batch %s: held flow run %s was taken by a worker", prefect.batch_id, run_id)
        prefect.reveal(run_id)
    async with prefect.client() as client:
        for run_id in waiting:
            await client.set_flow_run_state(
                run_id, Cancelled(message=WITHDRAWN_MESSAGE), force=True
            )
    log.info("batch %s: withdrew %d held flow run(s)", prefect.batch_id, len(waiting))
    return len(waiting), len(taken)

"""What Prefect's flow and task runs say about a batch's runs: their states as
:class:`~sierra_operator.core.machine.RunObservation` values, and the reasons of failures.

Pure reading of Prefect objects (no request): the same rules serve the operator and local
mode, and the unit tests feed them flow runs as the server returns them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from prefect.client.schemas.objects import FlowRun, StateType, TaskRun

from sierra_operator.core import names
from sierra_operator.core.machine import RunKey, RunObservation, RunPhase
from sierra_operator.core.plan import PlannedRun
from sierra_operator.core.reasons import failure_reason_from_message
from sierra_operator.runs.ledger import RunRecord, read_record, run_paths

FINAL_STATES = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
TASK_PHASES = {
    StateType.COMPLETED: RunPhase.SUCCEEDED,
    StateType.FAILED: RunPhase.FAILED,
    StateType.CRASHED: RunPhase.FAILED,
    StateType.CANCELLED: RunPhase.FAILED,
    StateType.RUNNING: RunPhase.RUNNING,
}


def state_type(obj: FlowRun | TaskRun) -> StateType | None:
    return obj.state.type if obj.state is not None else None


RecordLookup = Callable[[str, str, int], RunRecord | None]
"""(batch root, experiment, run index) -> the run's durable record, if readable here."""

FLOW_PHASES = {
    StateType.COMPLETED: RunPhase.SUCCEEDED,
    StateType.FAILED: RunPhase.FAILED,
    StateType.CRASHED: RunPhase.FAILED,
    StateType.CANCELLED: RunPhase.FAILED,
    StateType.RUNNING: RunPhase.RUNNING,
    StateType.CANCELLING: RunPhase.RUNNING,
}
SETTLE_GRACE_SECONDS = 60.0
"""How long after a wave's flow run ended (failed, crashed, cancelled) its runs whose task
run is not final yet wait for it in the cluster: task states reach Prefect's database
asynchronously (events), so a run that completed in a pod that then crashed may still be
reported COMPLETED. Past this, such a run is failed with the flow run's message, for good.
A minute, not 15 s: on a loaded server task events lag well past 15 s, and a run that
succeeded would be settled failed (and run again). The cost: a crashed pod's retry starts
up to a minute later."""


def ledger_lookup(batch_root: str, experiment: str, index: int) -> RunRecord | None:
    """The run's durable record on this machine's view of sierra-root (local mode)."""
    return read_record(Path(batch_root), experiment, index)


def is_single_run(fr: FlowRun) -> bool:
    """A flow run that executes exactly one run (the cluster's shape: one Job per run)."""
    return any(tag.startswith(names.run_tag(0)[:-1]) for tag in fr.tags)


def flow_run_observations(
    fr: FlowRun,
    tasks: dict[int, TaskRun],
    record: RecordLookup | None = None,
    now: datetime | None = None,
) -> tuple[dict[RunKey, tuple[int, RunObservation]], bool]:
    """Each run of one flow run, and whether these observations are settled for good.

    A final flow run never turns a run into a failure through missing or stale task
    information (task states reach Prefect's database later, through events):

    * a flow run of one run (cluster) is that run: its own state is authoritative;
    * in a wave, a final task state counts; else the durable run record of this attempt
      (local mode; written as the command ends, before Prefect hears of it); else a
      COMPLETED flow run means every run succeeded (the flow raises when one fails); else
      a crashed or cancelled flow run failed its unfinished runs (local mode: a failed one
      too, as it left no record); in the cluster (no records to read: the PVC is the
      pods') only once :data:`SETTLE_GRACE_SECONDS` after it ended (at ``now``, default
      the clock), so a pod that crashed after some of its runs completed fails exactly the
      runs it still held;
    anything still unknown stays active and is read again.
    """
    now = now or datetime.now(UTC)
    flow_state = state_type(fr)
    flow_final = flow_state in FINAL_STATES
    experiment = str(fr.parameters.get("experiment"))
    batch_root = str(fr.parameters.get("batch_root", ""))
    single = is_single_run(fr)
    out = {}
    for run in fr.parameters.get("runs", []):
        index, attempt = int(run["index"]), int(run["attempt"])
        log = str(run_paths(Path(batch_root), experiment, index)[1]) if batch_root else None
        obs = _observe_run(fr, tasks.get(index), single, experiment, index, attempt, record, now)
        if obs.phase is RunPhase.FAILED:
            obs = RunObservation(obs.phase, attempt, obs.reason, log)
        out[(experiment, index)] = (attempt, obs)
    settled = flow_final and all(
        obs.phase in (RunPhase.SUCCEEDED, RunPhase.FAILED) for _, obs in out.values()
    )
    return out, settled


def _observe_run(
    fr: FlowRun,
    tr: TaskRun | None,
    single: bool,
    experiment: str,
    index: int,
    attempt: int,
    record: RecordLookup | None,
    now: datetime,
) -> RunObservation:
    flow_state = state_type(fr)
    flow_message = fr.state.message if fr.state is not None else None

    def failed(message: str | None, fallback: str) -> RunObservation:
        return RunObservation(
            RunPhase.FAILED,
            attempt,
            failure_reason_from_message(message, experiment, index, fallback),
        )

    if single:
        phase = FLOW_PHASES.get(flow_state, RunPhase.PENDING) if flow_state else RunPhase.PENDING
        if phase is RunPhase.FAILED:
            return failed(flow_message, f"flow run {fr.name} ended {flow_state}")
        return RunObservation(phase, attempt)
    task_state = state_type(tr) if tr is not None else None
    if task_state in FINAL_STATES:
        assert tr is not None and tr.state is not None
        phase = TASK_PHASES[task_state]
        if phase is RunPhase.FAILED:
            return failed(tr.state.message, f"task run ended {task_state}")
        return RunObservation(phase, attempt)
    # The record of this attempt is written as its command ends, before Prefect hears of
    # it (task states arrive through events, the flow run ends later): it settles the run
    # as soon as it exists, so the next wave does not wait for Prefect's bookkeeping.
    rec = record(str(fr.parameters.get("batch_root", "")), experiment, index) if record else None
    if _record_of(rec, fr, index, attempt):
        assert rec is not None
        if rec.succeeded:
            return RunObservation(RunPhase.SUCCEEDED, attempt)
        return failed(rec.reason, f"exited {rec.exit_code}")
    if flow_state not in FINAL_STATES:
        phase = TASK_PHASES.get(task_state, RunPhase.PENDING) if task_state else RunPhase.PENDING
        return RunObservation(phase, attempt)
    if flow_state is StateType.COMPLETED:
        return RunObservation(RunPhase.SUCCEEDED, attempt)
    if record is not None or _grace_passed(fr, now):
        # It never wrote its record, or its task run's end never reached Prefect: the flow
        # run ended (failed, crashed, cancelled) under it.
        return failed(flow_message, f"flow run {fr.name} ended {flow_state} before it finished")
    return RunObservation(RunPhase.RUNNING, attempt)  # not known yet: read again


def never_taken(fr: FlowRun) -> bool:
    """A flow run no worker took: waiting (Scheduled) or withdrawn (Cancelled) before it
    started. One taken while its hold queue was unpaused (by hand) counts as submitted."""
    return fr.start_time is None and state_type(fr) in (StateType.SCHEDULED, StateType.CANCELLED)


def _grace_passed(fr: FlowRun, now: datetime) -> bool:
    """Whether :data:`SETTLE_GRACE_SECONDS` have passed since the final flow run ``fr`` ended."""
    ended = fr.end_time or (fr.state.timestamp if fr.state is not None else None)
    return ended is None or (now - ended).total_seconds() >= SETTLE_GRACE_SECONDS


def _record_of(rec: RunRecord | None, fr: FlowRun, index: int, attempt: int) -> bool:
    """Whether ``rec`` is the record of this flow run's attempt of run ``index``: same batch
    (a local invocation counts attempts from 1 again), same attempt, same command."""
    if rec is None or rec.attempt != attempt or rec.batch_id != fr.parameters.get("batch_id"):
        return False
    command = next(
        (str(r.get("command")) for r in fr.parameters.get("runs", []) if r["index"] == index),
        None,
    )
    return command is not None and rec.command_sha == PlannedRun(index, command).command_sha

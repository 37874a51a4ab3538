"""The batch state machine: (spec, plan, observed runs, previous status) -> (actions, status).

Pure: no clients, no clock (``now`` is passed in), no environment. The local driver and the
Kubernetes operator call :func:`decide` on every tick with what Prefect (and the durable
run records under sierra-root) report, apply the actions, and store the status. Because the
decision is re-made from observations each time, a restarted driver resumes where it was.

Rules:

* experiments run one after another; the next starts when every run of the current one is
  final (succeeded, or failed with its retries used up);
* the runs of one experiment are submitted together as one *wave*; a wave's failed runs are
  resubmitted (retries) once the wave has no run still active, so an experiment never has
  more than one wave in flight and the executor's parallelism bound holds;
* ``StopBatch``: after a final failure nothing new is submitted (no retries, no further
  experiments); active runs finish, then the batch is Failed. ``Continue``: later
  experiments still run; the batch ends Failed;
* ``suspend``: nothing new is submitted; when nothing is active the batch is Suspended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sierra_operator.core.model import (
    MAX_FAILED_RUNS_LISTED,
    BatchPhase,
    BatchStatus,
    Condition,
    ExecutionSpec,
    ExperimentPhase,
    ExperimentStatus,
    FailedRun,
    FailurePolicy,
    RunCounts,
)
from sierra_operator.core.plan import Plan, PlannedExperiment


class RunPhase(StrEnum):
    """What an observer reports for the latest attempt of one run."""

    PENDING = "Pending"  # submitted, not started yet
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"  # failed, crashed or cancelled


@dataclass(frozen=True)
class RunObservation:
    """The latest attempt of a run and how many attempts have been submitted so far.

    ``reason`` and ``log`` say why a failed attempt failed (exit code and stderr tail, or
    Prefect's crash message) and where its full stderr is, for status and the summary.
    """

    phase: RunPhase
    attempts: int = 1
    reason: str = ""
    log: str | None = None


RunKey = tuple[str, int]
"""(experiment name, run index)."""


@dataclass(frozen=True)
class RunAttempt:
    """One run to submit: which run, its command, and which attempt this is (1-based)."""

    index: int
    command: str
    attempt: int


@dataclass(frozen=True)
class SubmitRuns:
    """Action: start these runs of one experiment, together (one wave)."""

    experiment: str
    experiment_index: int
    runs: tuple[RunAttempt, ...]

    @property
    def wave_key(self) -> str:
        """Stable name of this wave, for idempotency keys: same runs, same attempts, same key."""
        return f"{self.experiment}:" + ",".join(f"{r.index}.{r.attempt}" for r in self.runs)


Action = SubmitRuns


def pack(runs: tuple[RunAttempt, ...], runs_per_pod: int) -> list[tuple[RunAttempt, ...]]:
    """A wave's runs in groups of at most ``runs_per_pod``, in run order: each group is one
    flow run (one Job, one pod) in the cluster, so a batch of short runs pays a pod start per
    group rather than per run. The groups follow the wave, so the same wave (re-decided after
    an operator restart) gives the same groups."""
    size = max(1, runs_per_pod)
    return [runs[i : i + size] for i in range(0, len(runs), size)]


@dataclass(frozen=True)
class PodShape:
    """How ``execution.parallelism`` is split when runs share pods.

    ``in_pod``: runs one pod executes at the same time; ``pods``: the work pool's concurrency
    limit (pods at the same time). ``in_pod * pods <= parallelism``, so at most
    ``parallelism`` runs execute at once, as with a pod per run."""

    in_pod: int
    pods: int


def pod_shape(parallelism: int, runs_per_pod: int) -> PodShape:
    """How ``parallelism`` splits between pods and the runs inside each (:class:`PodShape`)."""
    in_pod = max(1, min(runs_per_pod, parallelism))
    return PodShape(in_pod, max(1, parallelism // in_pod))


@dataclass(frozen=True)
class Decision:
    """What to do now and the status to record."""

    actions: tuple[Action, ...]
    status: BatchStatus
    failed_runs: tuple[RunKey, ...] = field(default=())

    @property
    def done(self) -> bool:
        """True when the batch reached Succeeded or Failed (or Suspended with nothing active)."""
        return self.status.phase in {
            BatchPhase.SUCCEEDED,
            BatchPhase.FAILED,
            BatchPhase.SUSPENDED,
        }


class _RunClass(StrEnum):
    UNSUBMITTED = "unsubmitted"
    QUEUED = "queued"  # submitted, not executing yet (counted as pending)
    RUNNING = "running"
    RETRYABLE = "retryable"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _classify(obs: RunObservation | None, max_attempts: int) -> _RunClass:
    if obs is None:
        return _RunClass.UNSUBMITTED
    if obs.phase is RunPhase.PENDING:
        return _RunClass.QUEUED
    if obs.phase is RunPhase.RUNNING:
        return _RunClass.RUNNING
    if obs.phase is RunPhase.SUCCEEDED:
        return _RunClass.SUCCEEDED
    return _RunClass.RETRYABLE if obs.attempts < max_attempts else _RunClass.FAILED


@dataclass(frozen=True)
class _ExperimentView:
    spec: PlannedExperiment
    classes: tuple[_RunClass, ...]

    def count(self, cls: _RunClass) -> int:
        return sum(c is cls for c in self.classes)

    @property
    def final(self) -> bool:
        return all(c in (_RunClass.SUCCEEDED, _RunClass.FAILED) for c in self.classes)

    @property
    def active(self) -> bool:
        return _RunClass.QUEUED in self.classes or _RunClass.RUNNING in self.classes

    @property
    def started(self) -> bool:
        return any(c is not _RunClass.UNSUBMITTED for c in self.classes)

    def phase(self) -> ExperimentPhase:
        if self.final:
            failed = self.count(_RunClass.FAILED)
            return ExperimentPhase.FAILED if failed else ExperimentPhase.SUCCEEDED
        return ExperimentPhase.RUNNING if self.started else ExperimentPhase.PENDING

    def status(self) -> ExperimentStatus:
        running = self.count(_RunClass.RUNNING)
        succeeded = self.count(_RunClass.SUCCEEDED)
        failed = self.count(_RunClass.FAILED)
        return ExperimentStatus(
            name=self.spec.name,
            phase=self.phase(),
            total=len(self.classes),
            succeeded=succeeded,
            failed=failed,
            running=running,
            pending=len(self.classes) - running - succeeded - failed,
        )


def _views(
    execution: ExecutionSpec, plan: Plan, observed: Mapping[RunKey, RunObservation]
) -> list[_ExperimentView]:
    """Every experiment with the class of each of its runs (what decide and next_wave read)."""
    max_attempts = execution.retries + 1
    return [
        _ExperimentView(
            exp,
            tuple(_classify(observed.get((exp.name, r.index)), max_attempts) for r in exp.runs),
        )
        for exp in plan.experiments
    ]


def set_condition(
    conditions: Sequence[Condition], new: Condition, now: datetime
) -> list[Condition]:
    """Replace the condition of ``new.type``; keep lastTransitionTime if status is unchanged."""
    out = []
    replaced = False
    for cond in conditions:
        if cond.type == new.type:
            keep = cond.status == new.status and cond.last_transition_time is not None
            when = cond.last_transition_time if keep else now
            out.append(new.model_copy(update={"last_transition_time": when}))
            replaced = True
        else:
            out.append(cond)
    if not replaced:
        out.append(new.model_copy(update={"last_transition_time": now}))
    return out


def decide(
    execution: ExecutionSpec,
    plan: Plan,
    observed: Mapping[RunKey, RunObservation],
    previous: BatchStatus,
    now: datetime,
    *,
    suspend: bool = False,
    generation: int | None = None,
) -> Decision:
    """The next actions and the new status. Same inputs, same answer."""
    views = _views(execution, plan, observed)
    any_failed = any(v.count(_RunClass.FAILED) for v in views)
    stopping = any_failed and execution.failure_policy is FailurePolicy.STOP_BATCH
    any_active = any(v.active for v in views)
    current = next((i for i, v in enumerate(views) if not v.final), None)

    actions: list[Action] = []
    if current is not None and not stopping and not suspend and not views[current].active:
        view = views[current]
        wave = tuple(
            RunAttempt(
                run.index,
                run.command,
                (observed[(view.spec.name, run.index)].attempts + 1)
                if cls is _RunClass.RETRYABLE
                else 1,
            )
            for run, cls in zip(view.spec.runs, view.classes, strict=True)
            if cls in (_RunClass.UNSUBMITTED, _RunClass.RETRYABLE)
        )
        if wave:
            actions.append(SubmitRuns(view.spec.name, current, wave))

    failed_runs = tuple(
        (v.spec.name, run.index)
        for v in views
        for run, cls in zip(v.spec.runs, v.classes, strict=True)
        if cls is _RunClass.FAILED
    )
    failed_detail = [_failed_run(key, observed[key]) for key in failed_runs]
    phase, reason, message = _phase(
        current is None, stopping, any_failed, any_active or bool(actions), suspend, failed_runs
    )
    experiments = [v.status() for v in views]
    totals = RunCounts(
        total=sum(e.total for e in experiments),
        succeeded=sum(e.succeeded for e in experiments),
        failed=sum(e.failed for e in experiments),
        running=sum(e.running for e in experiments),
        pending=sum(e.pending for e in experiments),
    )
    terminal = phase in (BatchPhase.SUCCEEDED, BatchPhase.FAILED)
    complete = Condition(
        type="Complete",
        status="True" if terminal else "False",
        reason=reason,
        message=message,
        observed_generation=generation,
    )
    started = previous.started_at or (now if (actions or any_active) else None)
    status = previous.model_copy(
        update={
            "phase": phase,
            "observed_generation": generation,
            "message": message,
            "conditions": set_condition(previous.conditions, complete, now),
            "current_experiment": current,
            "current_experiment_name": views[current].spec.name if current is not None else None,
            "experiments": experiments,
            "runs": totals,
            "runs_done": f"{totals.succeeded + totals.failed}/{totals.total}",
            "failed_runs": failed_detail[:MAX_FAILED_RUNS_LISTED],
            "started_at": started,
            "finished_at": (previous.finished_at or now) if terminal else None,
        }
    )
    return Decision(tuple(actions), status, failed_runs)


def next_wave(
    execution: ExecutionSpec,
    plan: Plan,
    observed: Mapping[RunKey, RunObservation],
    previous: BatchStatus,
    now: datetime,
) -> SubmitRuns | None:
    """The wave :func:`decide` will submit next if the current experiment's active runs
    all succeed: what local mode prepares ahead, held at a gate, while they execute.

    ``None`` while the current experiment still has runs to submit (its own wave or
    retries come first) or has not started executing, or when no later wave would follow
    (the last experiment, a final failure under StopBatch). The answer is a guess about the
    future that the caller must confirm: it releases the prepared wave only when ``decide``
    itself returns a :class:`SubmitRuns` with the same :attr:`~SubmitRuns.wave_key` (a
    retry of the current experiment comes first; a final failure under StopBatch means the
    prepared wave is withdrawn, never run)."""
    view = next((v for v in _views(execution, plan, observed) if not v.final), None)
    if view is None:
        return None
    current, classes = view.spec, view.classes
    if _RunClass.UNSUBMITTED in classes or _RunClass.RETRYABLE in classes:
        return None
    if all(c is _RunClass.QUEUED for c in classes):
        return None  # not executing yet: two flow-run starts at once compete for the server
    assumed = dict(observed)
    for run, cls in zip(current.runs, classes, strict=True):
        if cls in (_RunClass.QUEUED, _RunClass.RUNNING):
            key = (current.name, run.index)
            assumed[key] = RunObservation(RunPhase.SUCCEEDED, observed[key].attempts)
    later = decide(execution, plan, assumed, previous, now).actions
    return next((a for a in later if a.experiment != current.name), None)


def _failed_run(key: RunKey, obs: RunObservation) -> FailedRun:
    return FailedRun(
        experiment=key[0], run=key[1], attempt=obs.attempts, reason=obs.reason, log=obs.log
    )


def _phase(
    all_final: bool,
    stopping: bool,
    any_failed: bool,
    busy: bool,
    suspend: bool,
    failed_runs: Sequence[RunKey],
) -> tuple[BatchPhase, str, str]:
    """Phase, Complete-condition reason and a one-line message."""
    named = ", ".join(f"{e}/run{i}" for e, i in failed_runs[:10])
    if len(failed_runs) > 10:
        named += f" and {len(failed_runs) - 10} more"
    if all_final:
        if any_failed:
            return BatchPhase.FAILED, "RunsFailed", f"{len(failed_runs)} run(s) failed: {named}"
        return BatchPhase.SUCCEEDED, "Succeeded", "every run succeeded"
    if stopping:
        if busy:
            return (
                BatchPhase.RUNNING,
                "Stopping",
                f"failurePolicy StopBatch: waiting for active runs; failed: {named}",
            )
        return (
            BatchPhase.FAILED,
            "StoppedOnFailure",
            f"failurePolicy StopBatch stopped the batch; failed: {named}",
        )
    if suspend and not busy:
        return BatchPhase.SUSPENDED, "Suspended", "spec.suspend is true; no runs are active"
    return BatchPhase.RUNNING, "Running", "experiments are executing"

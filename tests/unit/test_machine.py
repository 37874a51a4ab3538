"""The state machine: serial experiments, waves, retries, failure policies, resume, suspend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sierra_operator.core.machine import (
    RunAttempt,
    RunObservation,
    RunPhase,
    SubmitRuns,
    decide,
    next_wave,
    pack,
    pod_shape,
)
from sierra_operator.core.model import BatchPhase, BatchStatus, ExecutionSpec, ExperimentPhase
from sierra_operator.core.plan import Plan, PlannedExperiment, PlannedRun

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_plan(*sizes: int) -> Plan:
    return Plan(
        tuple(
            PlannedExperiment(f"c1-exp{i}", tuple(PlannedRun(k, f"run {i} {k}") for k in range(n)))
            for i, n in enumerate(sizes)
        )
    )


def exec_spec(**kw: object) -> ExecutionSpec:
    return ExecutionSpec.model_validate(kw)


def all_of(exp: str, n: int, phase: RunPhase, attempts: int = 1) -> dict:
    return {(exp, k): RunObservation(phase, attempts) for k in range(n)}


def test_first_tick_submits_the_whole_first_experiment_only():
    d = decide(exec_spec(parallelism=2), make_plan(3, 2), {}, BatchStatus(), T0)
    assert d.actions == (
        SubmitRuns(
            "c1-exp0",
            0,
            tuple(RunAttempt(k, f"run 0 {k}", 1) for k in range(3)),
        ),
    )
    assert d.status.phase is BatchPhase.RUNNING
    assert d.status.current_experiment == 0
    assert d.status.started_at == T0
    assert d.status.runs.pending == 5


def test_nothing_new_while_the_current_experiment_is_active():
    obs = {
        ("c1-exp0", 0): RunObservation(RunPhase.RUNNING),
        ("c1-exp0", 1): RunObservation(RunPhase.SUCCEEDED),
    }
    d = decide(exec_spec(), make_plan(2, 2), obs, BatchStatus(), T0)
    assert d.actions == ()
    assert d.status.experiments[0].running == 1
    assert d.status.experiments[0].succeeded == 1
    assert d.status.experiments[1].phase is ExperimentPhase.PENDING


def test_submitted_but_not_started_runs_count_as_pending_not_running():
    obs = {
        ("c1-exp0", 0): RunObservation(RunPhase.RUNNING),
        ("c1-exp0", 1): RunObservation(RunPhase.PENDING),
        ("c1-exp0", 2): RunObservation(RunPhase.PENDING),
    }
    d = decide(exec_spec(parallelism=1), make_plan(3), obs, BatchStatus(), T0)
    assert d.actions == (), "queued runs are active: no second wave"
    assert (d.status.runs.running, d.status.runs.pending) == (1, 2)


def test_next_experiment_starts_only_when_previous_is_final():
    obs = all_of("c1-exp0", 2, RunPhase.SUCCEEDED)
    d = decide(exec_spec(), make_plan(2, 3), obs, BatchStatus(), T0)
    assert [a.experiment for a in d.actions] == ["c1-exp1"]
    assert [r.index for r in d.actions[0].runs] == [0, 1, 2]
    assert d.status.current_experiment_name == "c1-exp1"
    assert d.status.runs_done == "2/5"


def test_success_when_all_runs_succeeded():
    obs = {**all_of("c1-exp0", 2, RunPhase.SUCCEEDED), **all_of("c1-exp1", 1, RunPhase.SUCCEEDED)}
    prev = BatchStatus(started_at=T0)
    d = decide(exec_spec(), make_plan(2, 1), obs, prev, T0 + timedelta(seconds=5))
    assert d.actions == ()
    assert d.done
    assert d.status.phase is BatchPhase.SUCCEEDED
    assert d.status.finished_at == T0 + timedelta(seconds=5)
    complete = {c.type: c for c in d.status.conditions}["Complete"]
    assert complete.status == "True" and complete.reason == "Succeeded"


def test_failed_run_is_retried_in_a_new_wave_with_the_next_attempt():
    obs = {
        ("c1-exp0", 0): RunObservation(RunPhase.SUCCEEDED),
        ("c1-exp0", 1): RunObservation(RunPhase.FAILED, 1),
    }
    d = decide(exec_spec(retries=2), make_plan(2, 1), obs, BatchStatus(), T0)
    assert len(d.actions) == 1
    (run,) = d.actions[0].runs
    assert (run.index, run.attempt) == (1, 2)
    assert d.status.phase is BatchPhase.RUNNING
    assert d.status.runs.failed == 0  # not final while retries remain


def test_retry_waits_for_the_wave_to_finish():
    obs = {
        ("c1-exp0", 0): RunObservation(RunPhase.RUNNING),
        ("c1-exp0", 1): RunObservation(RunPhase.FAILED, 1),
    }
    d = decide(exec_spec(retries=1), make_plan(2), obs, BatchStatus(), T0)
    assert d.actions == ()


def test_stop_batch_after_retries_are_used_up():
    obs = {
        ("c1-exp0", 0): RunObservation(RunPhase.SUCCEEDED),
        ("c1-exp0", 1): RunObservation(RunPhase.FAILED, 2),
    }
    d = decide(
        exec_spec(retries=1, failurePolicy="StopBatch"), make_plan(2, 2), obs, BatchStatus(), T0
    )
    assert d.actions == ()
    assert d.status.phase is BatchPhase.FAILED
    assert d.failed_runs == (("c1-exp0", 1),)
    assert "c1-exp0/run1" in d.status.message
    assert d.status.experiments[0].phase is ExperimentPhase.FAILED
    assert d.status.experiments[1].phase is ExperimentPhase.PENDING


def test_stop_batch_lets_active_runs_finish_but_starts_nothing():
    obs = {
        ("c1-exp0", 0): RunObservation(RunPhase.FAILED, 1),
        ("c1-exp0", 1): RunObservation(RunPhase.RUNNING),
        ("c1-exp0", 2): RunObservation(RunPhase.FAILED, 1),
    }
    d = decide(exec_spec(retries=0), make_plan(3, 1), obs, BatchStatus(), T0)
    assert d.actions == ()
    assert d.status.phase is BatchPhase.RUNNING
    assert {c.type: c for c in d.status.conditions}["Complete"].reason == "Stopping"


def test_continue_runs_later_experiments_and_ends_failed():
    obs = {
        ("c1-exp0", 0): RunObservation(RunPhase.FAILED, 1),
        ("c1-exp0", 1): RunObservation(RunPhase.SUCCEEDED),
    }
    spec = exec_spec(failurePolicy="Continue")
    d = decide(spec, make_plan(2, 1), obs, BatchStatus(), T0)
    assert [a.experiment for a in d.actions] == ["c1-exp1"]
    obs[("c1-exp1", 0)] = RunObservation(RunPhase.SUCCEEDED)
    d = decide(spec, make_plan(2, 1), obs, d.status, T0)
    assert d.status.phase is BatchPhase.FAILED
    assert d.failed_runs == (("c1-exp0", 0),)
    assert d.status.runs.succeeded == 2 and d.status.runs.failed == 1


def test_resume_skips_runs_already_succeeded():
    # What local mode passes for runs whose durable record says they succeeded.
    obs = {("c1-exp0", k): RunObservation(RunPhase.SUCCEEDED) for k in range(3)}
    obs[("c1-exp1", 0)] = RunObservation(RunPhase.SUCCEEDED)
    d = decide(exec_spec(), make_plan(3, 3), obs, BatchStatus(), T0)
    assert len(d.actions) == 1
    assert d.actions[0].experiment == "c1-exp1"
    assert [r.index for r in d.actions[0].runs] == [1, 2]


def test_suspend_submits_nothing_and_reports_suspended_when_idle():
    d = decide(exec_spec(), make_plan(2), {}, BatchStatus(), T0, suspend=True)
    assert d.actions == ()
    assert d.status.phase is BatchPhase.SUSPENDED
    busy = {("c1-exp0", 0): RunObservation(RunPhase.RUNNING)}
    d = decide(exec_spec(), make_plan(2), busy, BatchStatus(), T0, suspend=True)
    assert d.status.phase is BatchPhase.RUNNING and d.actions == ()


def test_condition_keeps_transition_time_while_status_unchanged():
    d1 = decide(exec_spec(), make_plan(1), {}, BatchStatus(), T0)
    later = T0 + timedelta(minutes=1)
    obs = {("c1-exp0", 0): RunObservation(RunPhase.RUNNING)}
    d2 = decide(exec_spec(), make_plan(1), obs, d1.status, later)
    c2 = {c.type: c for c in d2.status.conditions}["Complete"]
    assert c2.last_transition_time == T0
    d3 = decide(
        exec_spec(),
        make_plan(1),
        {("c1-exp0", 0): RunObservation(RunPhase.SUCCEEDED)},
        d2.status,
        later,
    )
    c3 = {c.type: c for c in d3.status.conditions}["Complete"]
    assert c3.status == "True" and c3.last_transition_time == later


def test_same_inputs_same_decision():
    obs = {("c1-exp0", 0): RunObservation(RunPhase.FAILED, 1)}
    a = decide(exec_spec(retries=1), make_plan(2, 2), obs, BatchStatus(), T0)
    b = decide(exec_spec(retries=1), make_plan(2, 2), obs, BatchStatus(), T0)
    assert a == b
    assert a.actions[0].wave_key == "c1-exp0:0.2,1.1"


def test_status_size_is_bounded_by_experiments_not_runs():
    big = make_plan(5000, 5000)
    d = decide(exec_spec(), big, {}, BatchStatus(), T0)
    assert len(d.status.model_dump_json()) < 2000
    assert d.status.runs.total == 10000


# ----------------------------------------------------------------------------- runs per pod


def test_a_wave_is_packed_in_run_order_into_groups_of_runs_per_pod():
    runs = tuple(RunAttempt(k, f"run {k}", 1 + k % 2) for k in range(7))
    assert [[r.index for r in g] for g in pack(runs, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert pack(runs, 3) == pack(runs, 3), "the same wave, the same groups (restarts)"
    assert [len(g) for g in pack(runs, 1)] == [1] * 7, "default: a pod per run"
    assert pack(runs, 100) == [runs]
    assert pack((), 3) == []


@pytest.mark.parametrize(
    ("parallelism", "per_pod", "in_pod", "pods"),
    [(4, 1, 1, 4), (2, 3, 2, 1), (4, 3, 3, 1), (6, 3, 3, 2), (1, 5, 1, 1), (10, 4, 4, 2)],
)
def test_pods_share_parallelism_so_at_most_parallelism_runs_execute(
    parallelism, per_pod, in_pod, pods
):
    shape = pod_shape(parallelism, per_pod)
    assert (shape.in_pod, shape.pods) == (in_pod, pods)
    assert shape.in_pod * shape.pods <= parallelism


def test_runs_per_pod_is_bounded_and_defaults_to_one():
    assert exec_spec().runs_per_pod == 1
    assert exec_spec(runsPerPod=100).runs_per_pod == 100
    for bad in (0, 101):
        with pytest.raises(ValueError, match="runsPerPod"):
            exec_spec(runsPerPod=bad)


# ---------------------------------------------------------------- next_wave (local prefetch)


def test_next_wave_is_the_next_experiment_once_the_current_one_is_all_submitted():
    plan = make_plan(2, 3)
    obs = {
        ("c1-exp0", 0): RunObservation(RunPhase.SUCCEEDED),
        ("c1-exp0", 1): RunObservation(RunPhase.RUNNING),
    }
    wave = next_wave(exec_spec(parallelism=2), plan, obs, BatchStatus(), T0)
    assert wave == SubmitRuns("c1-exp1", 1, tuple(RunAttempt(k, f"run 1 {k}", 1) for k in range(3)))
    # ... and it is exactly what decide() submits once the running run succeeds.
    obs[("c1-exp0", 1)] = RunObservation(RunPhase.SUCCEEDED)
    (action,) = decide(exec_spec(parallelism=2), plan, obs, BatchStatus(), T0).actions
    assert action.wave_key == wave.wave_key


def test_no_next_wave_while_the_current_experiment_has_runs_to_submit_or_retry():
    plan = make_plan(2, 2)
    spec = exec_spec(parallelism=2, retries=1)
    assert next_wave(spec, plan, {}, BatchStatus(), T0) is None  # its own wave comes first
    retry_due = {
        ("c1-exp0", 0): RunObservation(RunPhase.FAILED, 1),
        ("c1-exp0", 1): RunObservation(RunPhase.RUNNING),
    }
    assert next_wave(spec, plan, retry_due, BatchStatus(), T0) is None


def test_no_next_wave_after_the_last_experiment_or_a_final_failure_under_stop_batch():
    plan = make_plan(2, 2)
    last = {**all_of("c1-exp0", 2, RunPhase.SUCCEEDED), **all_of("c1-exp1", 2, RunPhase.RUNNING)}
    assert next_wave(exec_spec(parallelism=2), plan, last, BatchStatus(), T0) is None
    failed = {
        ("c1-exp0", 0): RunObservation(RunPhase.FAILED, 1),
        ("c1-exp0", 1): RunObservation(RunPhase.RUNNING),
    }
    stop = exec_spec(parallelism=2, failurePolicy="StopBatch")
    assert next_wave(stop, plan, failed, BatchStatus(), T0) is None
    go_on = exec_spec(parallelism=2, failurePolicy="Continue")
    wave = next_wave(go_on, plan, failed, BatchStatus(), T0)
    assert wave is not None and wave.experiment == "c1-exp1"


def test_no_next_wave_before_the_current_wave_executes():
    """Two flow runs starting at once compete for the server: the next is prepared only
    once a run of the current wave is seen executing (or ended)."""
    plan = make_plan(2, 2)
    queued = all_of("c1-exp0", 2, RunPhase.PENDING)
    assert next_wave(exec_spec(parallelism=2), plan, queued, BatchStatus(), T0) is None
    queued[("c1-exp0", 0)] = RunObservation(RunPhase.RUNNING)
    assert next_wave(exec_spec(parallelism=2), plan, queued, BatchStatus(), T0) is not None

"""Each attempt of a run executes at most once, and runs are reported as they really ended.

Unit level: the Job template Prefect's worker renders (no pod replacement, no reschedule on
SIGTERM), the attempt claims on sierra-root, the observation of flow and task runs that
reach Prefect's database at different times, and the bounded failure Events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, State, StateType, TaskRun

from sierra_operator.cluster.job_template import (
    default_kubernetes_template,
    render_base_job_template,
)
from sierra_operator.cluster.reconciler import MAX_RUN_EVENTS, failure_events
from sierra_operator.core import names
from sierra_operator.core.machine import RunObservation, RunPhase, decide
from sierra_operator.core.model import (
    BatchStatus,
    ExecutionSpec,
    FailedRun,
    RunCounts,
    SierraBatchSpec,
)
from sierra_operator.core.plan import Plan, PlannedExperiment, PlannedRun
from sierra_operator.runs import ledger
from sierra_operator.runs.observations import SETTLE_GRACE_SECONDS, flow_run_observations
from sierra_operator.runs.pool_template import fixed

pytestmark = pytest.mark.unit

BATCH = "b-1234"


# ----------------------------------------------------------------------------- Job template


def with_defaults(spec: SierraBatchSpec) -> dict:
    """The batch's template as rendered, its values still variable defaults."""
    return render_base_job_template(
        default_kubernetes_template(),
        spec,
        image="r/x@sha256:abc",
        namespace="lab",
        service_account="sa",
        claim_name="pvc",
    )


def test_worker_rendered_job_never_replaces_its_pod_nor_reschedules_on_sigterm():
    """Rendered by prefect-kubernetes' own job configuration, as its worker does."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    spec = SierraBatchSpec.model_validate(
        {
            "image": {"repository": "r/x"},
            "experiments": [{"name": "e", "runs": [{"command": "true"}]}],
        }
    )
    template = fixed(with_defaults(spec))  # what the operator gives the pool
    # The client is only asked to resolve block/variable references; there are none here,
    # so one pointing nowhere proves nothing else is fetched.
    nowhere = PrefectClient(api="http://127.0.0.1:9/api")
    config = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(template, {}, client=nowhere)
    )
    flow_run = FlowRun(id=uuid.uuid4(), name="e-run0-try1", flow_id=uuid.uuid4())
    config.prepare_for_flow_run(flow_run)
    job = config.job_manifest["spec"]
    assert job["backoffLimit"] == 0
    assert job["podReplacementPolicy"] == "Failed", "a deleted pod is never replaced"
    rules = job["podFailurePolicy"]["rules"]
    assert rules == [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    env = {
        e["name"]: e.get("value")
        for e in config.job_manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] not in ("reschedule", "relinquish")
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)


# ----------------------------------------------------------------------------- claims


def test_an_attempt_is_claimed_once_and_never_after_a_newer_one(tmp_path: Path):
    ledger.claim_attempt(tmp_path, BATCH, "e", 0, 1, "fr-1")
    with pytest.raises(ledger.AttemptRefused, match="already executed once"):
        ledger.claim_attempt(tmp_path, BATCH, "e", 0, 1, "fr-1")  # a replaced pod
    ledger.claim_attempt(tmp_path, BATCH, "e", 0, 2, "fr-2")
    with pytest.raises(ledger.AttemptRefused, match="attempt 2 of this run has already started"):
        ledger.claim_attempt(tmp_path, BATCH, "e", 0, 1, "fr-1b")
    # Other runs, and another invocation (local --resume starts at attempt 1 again), are free.
    ledger.claim_attempt(tmp_path, BATCH, "e", 1, 1, "fr-3")
    ledger.claim_attempt(tmp_path, "other-5678", "e", 0, 1, "fr-4")
    outputs = {p.name for p in (tmp_path / "scratch/sierra-operator/e").iterdir()}
    assert outputs == {"attempts"}, "claims live under scratch/, nothing else was written"


def test_a_new_attempt_kills_what_is_left_of_an_older_one_on_this_machine(tmp_path: Path):
    claim = ledger.claim_attempt(tmp_path, BATCH, "e", 0, 1, "fr-1")
    # An orphaned command of attempt 1 (its flow-run process died): its own process group.
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ledger.note_process(claim, proc.pid)
    ledger.claim_attempt(tmp_path, BATCH, "e", 0, 2, "fr-2")
    killed = ledger.stop_older(tmp_path, BATCH, "e", 0, 2)
    assert killed == [proc.pid]
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert ledger.stop_older(tmp_path, BATCH, "e", 0, 2) == [], "nothing left to stop"


def test_stop_older_ignores_process_groups_of_another_host(tmp_path: Path):
    claim = ledger.claim_attempt(tmp_path, BATCH, "e", 0, 1, "fr-1")
    ledger.note_process(claim, os.getpgid(0))  # our own group: must never be touched
    data = claim.read_text().replace('"host": "', '"host": "another-pod/')
    claim.write_text(data)
    assert ledger.stop_older(tmp_path, BATCH, "e", 0, 2) == []


# ----------------------------------------------------------------------------- observations


def state(type_: StateType, message: str | None = None) -> State:
    return State(type=type_, message=message)


def flow_run(
    type_: StateType, runs: list[tuple[int, int]], *, single: bool, message: str | None = None
) -> FlowRun:
    tags = [f"sierra-batch:{BATCH}"] + ([f"sierra-run:{runs[0][0]}"] if single else [])
    return FlowRun(
        id=uuid.uuid4(),
        name="e-try1",
        flow_id=uuid.uuid4(),
        state=state(type_, message),
        tags=tags,
        parameters={
            "batch_id": BATCH,
            "experiment": "e",
            "batch_root": "/root/b",
            "runs": [{"index": i, "attempt": a, "command": "x"} for i, a in runs],
        },
    )


def task_run(fr: FlowRun, index: int, type_: StateType, message: str | None = None) -> TaskRun:
    return TaskRun(
        id=uuid.uuid4(),
        name=names.run_task_run_name("e", index, 1),
        task_key="k",
        dynamic_key=str(index),
        flow_run_id=fr.id,
        state=state(type_, message),
    )


@pytest.mark.parametrize("task", [None, StateType.RUNNING, StateType.PENDING])
def test_a_completed_flow_run_is_never_failed_for_a_task_run_not_yet_recorded(task):
    """The race seen on a real control plane: task run states arrive later (events)."""
    fr = flow_run(StateType.COMPLETED, [(0, 1), (1, 1)], single=False)
    tasks = {0: task_run(fr, 0, task)} if task else {}
    obs, settled = flow_run_observations(fr, tasks)
    assert {k: o.phase for k, (_, o) in obs.items()} == {
        ("e", 0): RunPhase.SUCCEEDED,
        ("e", 1): RunPhase.SUCCEEDED,
    }
    assert settled


def test_a_flow_run_of_one_run_is_that_run_whatever_its_task_says():
    ok = flow_run(StateType.COMPLETED, [(3, 2)], single=True)
    obs, settled = flow_run_observations(ok, {3: task_run(ok, 3, StateType.RUNNING)})
    assert obs[("e", 3)] == (2, RunObservation(RunPhase.SUCCEEDED, 2)) and settled
    crashed = flow_run(
        StateType.CRASHED,
        [(3, 2)],
        single=True,
        message="Unable to create Kubernetes job: quantities must match the regular expression",
    )
    obs, settled = flow_run_observations(crashed, {})
    _, seen = obs[("e", 3)]
    assert seen.phase is RunPhase.FAILED and settled
    assert seen.reason.startswith("Unable to create Kubernetes job")
    assert seen.log == "/root/b/scratch/sierra-operator/e/run3.stderr"
    running = flow_run(StateType.RUNNING, [(3, 2)], single=True)
    obs, settled = flow_run_observations(running, {})
    assert obs[("e", 3)][1].phase is RunPhase.RUNNING and not settled


def test_a_failed_flow_runs_own_message_is_the_reason_without_prefixes():
    fr = flow_run(
        StateType.FAILED,
        [(0, 1)],
        single=True,
        message="Flow run encountered an exception: RunFailed: e/run0 exited 3; stderr ends: "
        "ModuleNotFoundError: No module named 'numpy'",
    )
    ((_, seen),) = flow_run_observations(fr, {})[0].values()
    assert seen.reason == "exited 3; stderr ends: ModuleNotFoundError: No module named 'numpy'"


def test_a_failed_wave_asks_the_run_record_when_a_task_state_is_unknown():
    fr = flow_run(StateType.FAILED, [(0, 1), (1, 1), (2, 1)], single=False)
    tasks = {
        2: task_run(
            fr, 2, StateType.FAILED, "Task run encountered an exception RunFailed: e/run2 exited 1"
        )
    }

    def record(root: str, exp: str, index: int) -> ledger.RunRecord | None:
        assert root == "/root/b"
        if index == 0:
            return record_of(index, attempt=1, succeeded=True)
        return None  # run 1 never wrote a record: it did not finish under the failed flow

    obs, settled = flow_run_observations(fr, tasks, record)
    phases = {k[1]: o.phase for k, (_, o) in obs.items()}
    assert phases == {0: RunPhase.SUCCEEDED, 1: RunPhase.FAILED, 2: RunPhase.FAILED}
    assert obs[("e", 2)][1].reason == "exited 1"
    assert settled
    # Without records (nowhere to read them), an unknown run stays active and is read again.
    obs, settled = flow_run_observations(fr, tasks)
    assert obs[("e", 0)][1].phase is RunPhase.RUNNING and not settled


def record_of(
    index: int, attempt: int, succeeded: bool, batch: str = BATCH, command: str = "x"
) -> ledger.RunRecord:
    sha = PlannedRun(index, command).command_sha
    return ledger.RunRecord("e", index, attempt, sha, 0, succeeded, 0.0, 1.0, "", batch)


@pytest.mark.parametrize(
    "stale",
    [
        record_of(0, attempt=1, succeeded=True),  # an older attempt
        record_of(0, attempt=2, succeeded=True, batch="earlier-invocation"),  # another batch
        record_of(0, attempt=2, succeeded=True, command="old simulator"),  # another command
    ],
)
def test_a_record_of_another_attempt_batch_or_command_settles_nothing(stale):
    """Local invocations count attempts from 1 again: only this batch's record of this
    attempt of this command may settle a run whose task state is unknown."""
    fr = flow_run(StateType.CRASHED, [(0, 2)], single=False, message="pod evicted")
    obs, _ = flow_run_observations(fr, {}, lambda *_: stale)
    seen = obs[("e", 0)][1]
    assert seen.phase is RunPhase.FAILED and seen.reason == "pod evicted"
    fresh = record_of(0, attempt=2, succeeded=True)
    obs, _ = flow_run_observations(fr, {}, lambda *_: fresh)
    assert obs[("e", 0)][1].phase is RunPhase.SUCCEEDED


def test_a_finished_attempt_forgets_its_process_group(tmp_path: Path):
    """Its number may be given to another run's group later: never killed by a retry."""
    claim = ledger.claim_attempt(tmp_path, BATCH, "e", 0, 1, "fr-1")
    ledger.note_process(claim, os.getpgid(0))
    ledger.note_process(claim, None)
    ledger.claim_attempt(tmp_path, BATCH, "e", 0, 2, "fr-2")
    assert ledger.stop_older(tmp_path, BATCH, "e", 0, 2) == []


# ----------------------------------------------------------------------------- status, Events


def test_status_names_each_failed_run_with_its_reason():
    plan = Plan((PlannedExperiment("e", (PlannedRun(0, "a"), PlannedRun(1, "b"))),))
    observed = {
        ("e", 0): RunObservation(RunPhase.SUCCEEDED),
        ("e", 1): RunObservation(RunPhase.FAILED, 2, "exited 3; stderr ends: boom", "/l"),
    }
    decision = decide(ExecutionSpec(retries=1), plan, observed, BatchStatus(), datetime.now(UTC))
    assert decision.status.failed_runs == [
        FailedRun(experiment="e", run=1, attempt=2, reason="exited 3; stderr ends: boom", log="/l")
    ]


def failed_status(n: int) -> BatchStatus:
    return BatchStatus(
        runs=RunCounts(total=2000, failed=n),
        failed_runs=[
            FailedRun(experiment="e", run=i, reason=f"exited {i}") for i in range(min(n, 20))
        ],
    )


def test_failure_events_are_one_per_run_then_summed_up():
    events = failure_events(failed_status(0), failed_status(2))
    assert [e[1] for e in events] == ["RunFailed", "RunFailed"]
    assert "e/run1 attempt 1 failed: exited 1" in events[1][2]
    assert failure_events(failed_status(2), failed_status(2)) == [], "nothing new, no Event"
    # A batch with 1,000 failures: bounded, whatever the pace they arrive at.
    posted = []
    for before, after in [(0, 5), (5, 400), (400, 1000)]:
        posted += failure_events(failed_status(before), failed_status(after))
    per_run = [e for e in posted if e[1] == "RunFailed"]
    assert len(per_run) == MAX_RUN_EVENTS
    assert len(posted) <= MAX_RUN_EVENTS + 3
    assert "600 more run(s) failed (1000 in all)" in posted[-1][2]


def test_a_running_waves_record_settles_its_run_before_prefect_hears():
    """Local mode: the record of this attempt is written as the command ends; the next wave
    must not wait for the task state (events) or the flow run's end. The flow run is still
    read again (not settled) until it is final; another attempt's record settles nothing."""
    fr = flow_run(StateType.RUNNING, [(0, 1), (1, 1), (2, 1)], single=False)
    tasks = {2: task_run(fr, 2, StateType.RUNNING)}
    records = {
        0: record_of(0, attempt=1, succeeded=True),
        1: ledger.RunRecord(
            "e", 1, 1, PlannedRun(1, "x").command_sha, 3, False, 0.0, 1.0, "exited 3", BATCH
        ),
        2: record_of(2, attempt=0, succeeded=True),
    }
    obs, settled = flow_run_observations(fr, tasks, lambda _r, _e, i: records.get(i))
    assert obs[("e", 0)][1].phase is RunPhase.SUCCEEDED
    assert obs[("e", 1)][1].phase is RunPhase.FAILED and obs[("e", 1)][1].reason == "exited 3"
    assert obs[("e", 2)][1].phase is RunPhase.RUNNING, "an older attempt's record is not this one"
    assert not settled


# ----------------------------------------------------------------------------- runs per pod


def ended(fr: FlowRun, seconds_ago: float) -> tuple[FlowRun, datetime]:
    """``fr`` as it ended, and the time ``seconds_ago`` seconds after its end."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    fr.end_time = at
    return fr, datetime.fromtimestamp(at.timestamp() + seconds_ago, UTC)


@pytest.mark.parametrize("flow_state", [StateType.CRASHED, StateType.FAILED, StateType.CANCELLED])
def test_a_crashed_pod_of_packed_runs_fails_exactly_the_runs_it_held(flow_state):
    """Cluster (no records): a pod executing runs 0-2 dies after run 0 completed and run 1
    failed. Until the grace period passes, run 2 (task still Running, as the pod left it)
    stays active: its end may still be on its way. Then it fails with the crash message; run
    0 is never failed, run 1 keeps its own reason."""
    message = "Job reported a failed pod: OOMKilled"
    fr = flow_run(flow_state, [(0, 1), (1, 1), (2, 1)], single=False, message=message)
    tasks = {
        0: task_run(fr, 0, StateType.COMPLETED),
        1: task_run(fr, 1, StateType.FAILED, "Task run encountered an exception e/run1 exited 2"),
        2: task_run(fr, 2, StateType.RUNNING),
    }
    fr, soon = ended(fr, SETTLE_GRACE_SECONDS - 1)
    obs, settled = flow_run_observations(fr, tasks, None, soon)
    phases = {k[1]: o.phase for k, (_, o) in obs.items()}
    assert phases == {0: RunPhase.SUCCEEDED, 1: RunPhase.FAILED, 2: RunPhase.RUNNING}
    assert not settled, "read again until run 2 is known"
    # Run 2's completion arrives within the grace period: it succeeded.
    late = {**tasks, 2: task_run(fr, 2, StateType.COMPLETED)}
    obs, settled = flow_run_observations(fr, late, None, soon)
    assert obs[("e", 2)][1].phase is RunPhase.SUCCEEDED and settled
    # It never arrives: past the grace period run 2 failed, with the pod's crash as reason.
    _, later = ended(fr, SETTLE_GRACE_SECONDS)
    obs, settled = flow_run_observations(fr, tasks, None, later)
    phases = {k[1]: o.phase for k, (_, o) in obs.items()}
    assert phases == {0: RunPhase.SUCCEEDED, 1: RunPhase.FAILED, 2: RunPhase.FAILED}
    assert obs[("e", 1)][1].reason == "exited 2"
    assert obs[("e", 2)][1].reason == message
    assert settled


def test_a_packed_pod_that_never_started_its_runs_fails_them_all_after_the_grace():
    """A refused re-execution or an unschedulable pod: no task runs at all."""
    fr = flow_run(StateType.CRASHED, [(3, 2), (4, 1)], single=False, message="pod lost")
    fr, later = ended(fr, SETTLE_GRACE_SECONDS + 5)
    obs, settled = flow_run_observations(fr, {}, None, later)
    assert obs == {
        ("e", 3): (2, RunObservation(RunPhase.FAILED, 2, "pod lost", obs[("e", 3)][1].log)),
        ("e", 4): (1, RunObservation(RunPhase.FAILED, 1, "pod lost", obs[("e", 4)][1].log)),
    }
    assert settled


def test_a_completed_packed_pod_succeeds_every_run_it_held_at_once():
    fr = flow_run(StateType.COMPLETED, [(0, 1), (1, 1), (2, 1)], single=False)
    fr, soon = ended(fr, 0)
    obs, settled = flow_run_observations(fr, {}, None, soon)
    assert {o.phase for _, o in obs.values()} == {RunPhase.SUCCEEDED} and settled


def test_the_fixed_pool_template_renders_the_job_the_defaults_did():
    """The pool gets no variables (the server would validate them per flow run): a worker
    renders the very same Job from the fixed template as from the one with defaults, and
    the server's per-flow-run validation has an empty schema to check."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    spec = SierraBatchSpec.model_validate(
        {
            "image": {"repository": "r/x", "pushSecret": "regcred"},
            "execution": {"resources": {"requests": {"cpu": "2"}, "limits": {"memory": "1Gi"}}},
            "experiments": [{"name": "e", "runs": [{"command": "true"}]}],
        }
    )
    defaults = with_defaults(spec)
    nowhere = PrefectClient(api="http://127.0.0.1:9/api")
    flow_run = FlowRun(id=uuid.uuid4(), name="e-run0-try1", flow_id=uuid.uuid4())

    def job(template: dict) -> dict:
        config = asyncio.run(
            KubernetesWorkerJobConfiguration.from_template_and_values(template, {}, client=nowhere)
        )
        config.prepare_for_flow_run(flow_run)
        return config.job_manifest

    pool = fixed(defaults)
    assert pool["variables"] == {"type": "object", "properties": {}}
    assert job(pool) == job(defaults)
    container = job(pool)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "r/x@sha256:abc"
    assert container["resources"] == {"requests": {"cpu": "2"}, "limits": {"memory": "1Gi"}}
    assert "{{" not in str(pool["job_configuration"]), "every placeholder resolved or dropped"

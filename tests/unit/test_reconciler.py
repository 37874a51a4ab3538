"""Reconcile decisions that need no cluster: missing Prefect URL, bad specs, status round trip,
which batches need no reconcile at all."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from sierra_operator.cluster.reconciler import (
    batch_prefect,
    read_status,
    reconcile,
    status_document,
)
from sierra_operator.cluster.settings import OperatorSettings
from sierra_operator.core.idle import needs_reconcile
from sierra_operator.core.model import (
    BatchPhase,
    BatchStatus,
    Condition,
    ImageStatus,
    SpecError,
    parse_batch,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def body(**spec: object) -> dict:
    base = {
        "image": {"repository": "r/x", "tag": "1"},
        "experiments": [{"name": "e", "runs": [{"command": "true"}]}],
    }
    base.update(spec)
    return {
        "apiVersion": "sierra.research.io/v1alpha1",
        "kind": "SierraBatch",
        "metadata": {"name": "b", "namespace": "ns", "uid": "u1", "generation": 3},
        "spec": base,
    }


def run(b: dict, settings: OperatorSettings | None = None):
    # kube_api=None: these paths must decide before touching Kubernetes.
    return asyncio.run(reconcile(b, settings or OperatorSettings(), None, NOW))  # type: ignore[arg-type]


def test_no_prefect_url_is_a_condition_not_a_crash():
    out = run(body())
    assert out.status.phase is BatchPhase.PENDING
    cond = {c.type: c for c in out.status.conditions}["PoolReady"]
    assert cond.status == "False" and cond.reason == "NoPrefectApiUrl"
    assert "SIERRA_OPERATOR_PREFECT_API_URL" in cond.message
    assert out.events and out.events[0][1] == "NoPrefectApiUrl"
    assert out.status.observed_generation == 3


def test_same_condition_again_posts_no_second_event():
    first = run(body())
    again = body()
    again["status"] = status_document(first.status)
    assert run(again).events == []


def test_invalid_spec_fails_with_field_in_condition_and_event():
    out = run(body(execution={"retries": -1}))
    assert out.status.phase is BatchPhase.FAILED
    valid = {c.type: c for c in out.status.conditions}["Valid"]
    assert valid.status == "False" and "spec.execution.retries" in valid.message
    assert out.events[0][:2] == ("Warning", "InvalidSpec")


def test_sierra_stage_one_is_refused_clearly_for_now():
    b = body(sierra={"args": ["--project=p"]})
    del b["spec"]["experiments"]
    out = run(b, OperatorSettings(prefect_api_url="http://p/api"))
    assert out.status.phase is BatchPhase.FAILED
    assert "spec.sierra" in out.status.message and "spec.commandsFile" in out.status.message


def test_status_round_trip_ignores_unknown_fields():
    st = BatchStatus(phase=BatchPhase.RUNNING, work_pool="p")
    raw = {**status_document(st), "kopf": {"progress": {}}}
    assert read_status(raw) == st


def test_settings_from_env():
    s = OperatorSettings.from_env(
        {
            "PREFECT_API_URL": "http://a/api",
            "SIERRA_OPERATOR_NAMESPACES": "x, y",
            "SIERRA_OPERATOR_RECONCILE_SECONDS": "5",
            "SIERRA_OPERATOR_SUBMIT_CONCURRENCY": "16",
        }
    )
    assert s.prefect_api_url == "http://a/api" and s.namespaces == ["x", "y"]
    assert s.reconcile_seconds == 5 and s.submit_concurrency == 16
    assert OperatorSettings.from_env({}).submit_concurrency == 1, "safe on SQLite"
    with pytest.raises(ValueError, match="submit_concurrency"):
        OperatorSettings.from_env({"SIERRA_OPERATOR_SUBMIT_CONCURRENCY": "0"})
    assert (
        OperatorSettings.from_env(
            {"PREFECT_API_URL": "http://a/api", "SIERRA_OPERATOR_PREFECT_API_URL": "http://b/api"}
        ).prefect_api_url
        == "http://b/api"
    )


def test_api_key_and_docker_host_settings_never_show_the_key():
    s = OperatorSettings.from_env({"PREFECT_API_KEY": "pnu_abc123", "DOCKER_HOST": "tcp://d:2375"})
    assert s.prefect_api_key == "pnu_abc123" and s.docker_host == "tcp://d:2375"
    assert "pnu_abc123" not in repr(s) and "pnu_abc123" not in str(s.model_dump())
    assert OperatorSettings.from_env({}).prefect_api_key is None
    batch = batch_prefect(parse_batch(body()), "ns", "uid", "http://p/api", "pnu_abc123")
    assert "pnu_abc123" not in repr(batch)


def test_fixed_spec_recovers_from_a_validation_failure():
    failed = run(body(execution={"retries": -1}))
    fixed = body()
    fixed["status"] = status_document(failed.status)
    out = run(fixed)
    assert out.status.phase is BatchPhase.PENDING, "not stuck in Failed"
    valid = {c.type: c for c in out.status.conditions}["Valid"]
    assert valid.status == "True"


def test_completed_batch_is_left_alone():
    done = BatchStatus(phase=BatchPhase.SUCCEEDED).model_copy(
        update={"conditions": [Condition(type="Complete", status="True", reason="Succeeded")]}
    )
    b = body()
    b["status"] = status_document(done)
    out = run(b)  # no Prefect URL, no Kubernetes: it must not need them
    assert out.status.phase is BatchPhase.SUCCEEDED and out.events == []


def test_finished_batch_seeing_a_new_spec_records_it_and_stays_finished():
    done = BatchStatus(phase=BatchPhase.SUCCEEDED, observed_generation=2).model_copy(
        update={"conditions": [Condition(type="Complete", status="True", reason="Succeeded")]}
    )
    b = body()  # generation 3
    b["status"] = status_document(done)
    assert needs_reconcile(b), "a new generation is looked at once"
    out = run(b)
    assert out.status.phase is BatchPhase.SUCCEEDED and out.status.observed_generation == 3
    b["status"] = status_document(out.status)
    assert not needs_reconcile(b), "then the timer stops again"


def stored(phase: BatchPhase, generation: int = 3, **conditions: str) -> dict:
    """A batch (spec generation 3) whose stored status has ``phase`` and ``conditions``."""
    status = BatchStatus(phase=phase, observed_generation=generation).model_copy(
        update={
            "conditions": [Condition(type=t, status=s, reason="R") for t, s in conditions.items()]
        }
    )
    b = body()
    b["status"] = status_document(status)
    return b


def suspended(spec_suspend: bool, generation: int = 3) -> dict:
    b = stored(BatchPhase.SUSPENDED, generation)
    b["spec"]["suspend"] = spec_suspend
    return b


@pytest.mark.parametrize(
    ("batch", "needs"),
    [
        (body(), True),  # new: no status yet
        (stored(BatchPhase.PENDING), True),
        (stored(BatchPhase.RUNNING, Complete="False"), True),
        (stored(BatchPhase.SUCCEEDED, Complete="True"), False),
        (stored(BatchPhase.FAILED, Complete="True"), False),
        (stored(BatchPhase.SUCCEEDED, 2, Complete="True"), True),  # spec changed since
        (stored(BatchPhase.FAILED, Valid="False"), True),  # bad spec: fixing it must be seen
        (stored(BatchPhase.FAILED, Planned="False"), True),
        (suspended(True), False),
        (suspended(True, generation=2), True),
        (suspended(False), True),  # resumed
        (stored(BatchPhase.RUNNING), True),  # suspend asked, runs still active: not idle
    ],
    ids=[
        "new",
        "pending",
        "running",
        "succeeded",
        "failed-complete",
        "succeeded-new-spec",
        "invalid",
        "plan-failed",
        "suspended",
        "suspended-new-spec",
        "resumed",
        "suspending",
    ],
)
def test_needs_reconcile(batch: dict, needs: bool) -> None:
    assert needs_reconcile(batch) is needs


def test_needs_reconcile_without_generation_ticks():
    b = stored(BatchPhase.SUCCEEDED, Complete="True")
    del b["metadata"]["generation"]
    b["status"].pop("observedGeneration")
    assert needs_reconcile(b)


@pytest.mark.parametrize(
    ("previous", "spec_suspend", "phase", "previous_generation", "scaled"),
    [
        (BatchPhase.RUNNING, True, BatchPhase.SUSPENDED, 3, [0]),  # became Suspended
        (BatchPhase.PROVISIONING, True, BatchPhase.SUSPENDED, 3, [0]),  # suspended from the start
        (BatchPhase.SUSPENDED, True, BatchPhase.SUSPENDED, 3, []),  # still: not every tick
        (BatchPhase.SUSPENDED, True, BatchPhase.SUSPENDED, 2, [0]),  # spec changed: Deployment
        (BatchPhase.SUSPENDED, False, BatchPhase.RUNNING, 2, [4]),  # resumed
        (BatchPhase.RUNNING, True, BatchPhase.RUNNING, 3, []),  # suspending, runs still active
        (BatchPhase.RUNNING, False, BatchPhase.RUNNING, 3, []),
        (BatchPhase.SUSPENDED, False, BatchPhase.SUCCEEDED, 2, []),  # terminal: stays at 0
    ],
)
def test_workers_scaled_on_suspend_transitions_only(
    monkeypatch, previous, spec_suspend, phase, previous_generation, scaled
):
    from sierra_operator.cluster import kube, reconciler
    from sierra_operator.cluster.manifests import BatchRef

    calls: list[tuple[str, str, int]] = []

    async def scale(api, namespace, name, replicas):
        calls.append((namespace, name, replicas))

    monkeypatch.setattr(kube, "scale_workers", scale)
    b = body(suspend=spec_suspend, execution={"workers": 4})
    ctx = reconciler._Batch(
        parse_batch(b),
        BatchRef("b", "ns", "u1"),
        3,
        BatchStatus(phase=previous, observed_generation=previous_generation),
        OperatorSettings(),
        None,  # type: ignore[arg-type]
        NOW,
    )
    asyncio.run(reconciler._scale_for_suspend(ctx, BatchStatus(phase=phase)))
    assert calls == [("ns", "b-worker", n) for n in scaled]


def test_metadata_fields_of_a_newer_kubernetes_do_not_invalidate_a_batch():
    """The operator's bodies come from the API server, which validated their metadata: a
    field this version does not know is dropped, not refused (a local file still is)."""
    b = body()
    b["metadata"].update(
        finalizers=["sierra.research.io/finalizer"],
        managedFields=[{"manager": "kubectl"}],
        someFutureField={"x": 1},
    )
    out = run(b)
    assert {c.type: c.status for c in out.status.conditions}["Valid"] == "True"
    with pytest.raises(SpecError, match="someFutureField"):
        parse_batch(b)


def test_a_large_status_never_makes_a_valid_batch_invalid():
    """The status is the operator's, not the user's: it does not count against the size
    limits a batch file has (a 1,000-experiment batch's status is large)."""
    b = body()
    b["metadata"]["managedFields"] = [{"manager": "kopf", "fieldsV1": {"f": 1}}] * 20_000
    b["status"] = {"experiments": [{"name": f"e{i}", "total": 1} for i in range(60_000)]}
    out = run(b)
    assert {c.type: c.status for c in out.status.conditions}["Valid"] == "True"


def test_a_retry_waiting_for_the_previous_attempts_job_says_which(monkeypatch):
    """The previous attempt's Job must be gone before a retry (no overlap); while it is not
    (a pod stuck Terminating on a lost node), the wait is named, not silent. The Kubernetes
    call is replaced here (a Job that never goes away cannot be made in the emulator)."""
    import uuid
    from types import SimpleNamespace

    from sierra_operator.cluster import kube
    from sierra_operator.cluster.reconciler import _previous_attempts_left
    from sierra_operator.core.machine import RunAttempt, SubmitRuns
    from sierra_operator.runs.prefect_api import PrefectBatch

    asked: list[str] = []

    async def still_there(api: object, namespace: str, flow_run_id: str) -> bool:
        asked.append(flow_run_id)
        return False

    monkeypatch.setattr(kube, "delete_flow_run_jobs", still_there)
    prefect = PrefectBatch("http://127.0.0.1:9/api", "u1", "p", "q")
    old = uuid.uuid4()
    prefect.attempt_flow_runs[("e", 3, 1)] = old
    ctx = SimpleNamespace(kube_api=None, ref=SimpleNamespace(namespace="ns"))
    action = SubmitRuns("e", 0, (RunAttempt(3, "c", 2), RunAttempt(4, "c", 1)))
    assert asyncio.run(_previous_attempts_left(ctx, prefect, action)) == "run3 attempt 1"  # type: ignore[arg-type]
    assert asked == [str(old)], "only a retried run's previous attempt is asked about"


class _PoolOnly:
    """The pool calls of a PrefectBatch (a stand-in, say so: it counts what `_pool` asks
    for; the same path against a real server: test_operator.py, a changed spec)."""

    pool = "p"
    concurrency_limit = 4

    def __init__(self, existing: object) -> None:
        self.existing = existing
        self.updates: list[dict] = []
        self.deployed = 0

    async def ensure_pool(self, template: dict) -> object:
        return self.existing

    async def update_pool(self, template: dict, pool: object) -> bool:
        self.updates.append(template)
        return True

    async def ensure_deployment(self, mount_path: str) -> None:
        self.deployed += 1


def _pool_ctx(previous: BatchStatus):
    from sierra_operator.cluster.manifests import BatchRef
    from sierra_operator.cluster.reconciler import _Batch

    b = body()
    batch = parse_batch(b)
    return _Batch(batch, BatchRef("b", "ns", "u1"), 3, previous, OperatorSettings(), None, NOW)  # type: ignore[arg-type]


def test_a_pool_change_that_failed_once_is_applied_by_the_next_reconcile():
    """A reconcile that saw a new spec stores its generation even when Prefect then failed
    (PoolReady=False): the next one, seeing no new generation, must still bring the
    existing pool to the spec (its limit, its template), not leave it as it was."""
    from types import SimpleNamespace

    from sierra_operator.cluster.reconciler import _pool

    failed = BatchStatus(
        observed_generation=3,
        image=ImageStatus(ref="r/x:1", digest="sha256:" + "0" * 64),
        conditions=[Condition(type="PoolReady", status="False", reason="PrefectUnavailable")],
    )
    prefect = _PoolOnly(existing=SimpleNamespace(base_job_template={}, concurrency_limit=2))
    ctx = _pool_ctx(failed)
    image = "r/x@sha256:" + "0" * 64
    asyncio.run(_pool(ctx, failed, prefect, image, "http://x/api"))  # type: ignore[arg-type]
    assert len(prefect.updates) == 1, "the pool brought to the spec"
    assert [e[1] for e in ctx.events] == ["PoolUpdated", "PoolReady"]

    ready = failed.model_copy(
        update={"conditions": [Condition(type="PoolReady", status="True", reason="Created")]}
    )
    prefect = _PoolOnly(existing=None)
    ctx = _pool_ctx(ready)
    asyncio.run(_pool(ctx, ready, prefect, image, "http://x/api"))  # type: ignore[arg-type]
    assert prefect.updates == [] and ctx.events == [], "same spec, pool ready: no request"

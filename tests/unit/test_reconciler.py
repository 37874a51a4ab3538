"""Reconcile decisions that need no cluster: missing Prefect URL, bad specs, status round trip."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from sierra_operator.model import BatchPhase, BatchStatus, Condition, parse_batch
from sierra_operator.reconciler import batch_prefect, read_status, reconcile, status_patch
from sierra_operator.settings import OperatorSettings

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
    again["status"] = status_patch(first.status)
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
    raw = {**status_patch(st), "kopf": {"progress": {}}}
    assert read_status(raw) == st


def test_settings_from_env():
    s = OperatorSettings.from_env(
        {
            "PREFECT_API_URL": "http://a/api",
            "SIERRA_OPERATOR_NAMESPACES": "x, y",
            "SIERRA_OPERATOR_RECONCILE_SECONDS": "5",
        }
    )
    assert s.prefect_api_url == "http://a/api" and s.namespaces == ["x", "y"]
    assert s.reconcile_seconds == 5
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
    fixed["status"] = status_patch(failed.status)
    out = run(fixed)
    assert out.status.phase is BatchPhase.PENDING, "not stuck in Failed"
    valid = {c.type: c for c in out.status.conditions}["Valid"]
    assert valid.status == "True"


def test_completed_batch_is_left_alone():
    done = BatchStatus(phase=BatchPhase.SUCCEEDED).model_copy(
        update={"conditions": [Condition(type="Complete", status="True", reason="Succeeded")]}
    )
    b = body()
    b["status"] = status_patch(done)
    out = run(b)  # no Prefect URL, no Kubernetes: it must not need them
    assert out.status.phase is BatchPhase.SUCCEEDED and out.events == []

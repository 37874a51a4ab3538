"""`sierra-operator status`: the report printed from a stored SierraBatch, and what each API
failure tells the user to do (the emulated API server cannot lack the CRD: mapped here)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from sierra_operator.researcher.batch_status import (
    EXIT_CLUSTER,
    EXIT_NOT_FOUND,
    _serves_batches,
    api_error,
    exit_code,
    progress_line,
    render,
)

pytestmark = pytest.mark.unit


def batch(status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "forage", "namespace": "lab"}}
    if status is not None:
        obj["status"] = status
    return obj


def test_report_has_phase_counts_table_and_failed_runs() -> None:
    lines = render(
        batch(
            {
                "phase": "Running",
                "message": "experiment c1-exp1: 1 running",
                "currentExperimentName": "c1-exp1",
                "runs": {"total": 4, "succeeded": 2, "failed": 1, "running": 1},
                "experiments": [
                    {"name": "c1-exp0", "phase": "Failed", "total": 2, "succeeded": 1, "failed": 1},
                    {
                        "name": "c1-exp1",
                        "phase": "Running",
                        "total": 2,
                        "succeeded": 1,
                        "running": 1,
                    },
                ],
                "failedRuns": [
                    {
                        "experiment": "c1-exp0",
                        "run": 0,
                        "attempt": 3,
                        "reason": "exited 2;\nstderr ends: no such file",
                        "log": "/r/scratch/c1-exp0/run0.stderr",
                    }
                ],
            }
        )
    )
    assert lines[:4] == [
        "SierraBatch lab/forage",
        "phase: Running",
        "message: experiment c1-exp1: 1 running",
        "runs done: 3/4",
    ]
    assert lines[5:8] == [
        "EXPERIMENT  PHASE    TOTAL  SUCCEEDED  FAILED  RUNNING  PENDING",
        "c1-exp0     Failed   2      1          1       0        0",
        "c1-exp1     Running  2      1          0       1        0",
    ]
    assert lines[9:] == [
        "failed runs (1):",
        "  c1-exp0/run0 (attempt 3): exited 2; stderr ends: no such file",  # one line
        "    stderr: /r/scratch/c1-exp0/run0.stderr",
    ]
    assert progress_line(batch({"phase": "Running", "currentExperimentName": "c1-exp1"})) == (
        "Running  runs 0/0  experiment c1-exp1"
    )


def test_more_failures_than_listed_are_counted() -> None:
    listed = [{"experiment": "e", "run": i, "reason": "x"} for i in range(20)]
    lines = render(
        batch({"phase": "Failed", "runs": {"total": 50, "failed": 25}, "failedRuns": listed})
    )
    assert "failed runs (25):" in lines
    assert lines[-1] == "  ... and 5 more"
    only_counts = render(batch({"phase": "Failed", "runs": {"total": 3, "failed": 3}}))
    assert only_counts[-2:] == ["failed runs (3):", "  ... and 3 more"]


def test_a_batch_not_seen_yet_and_odd_values_still_render() -> None:
    assert render(batch(None)) == ["SierraBatch lab/forage", "phase: Pending", "runs done: 0/0"]
    odd = render(batch({"runs": {"total": "many", "failed": True}, "experiments": ["x", None]}))
    assert "runs done: 0/0" in odd


@pytest.mark.parametrize(
    ("phase", "code"),
    [("Succeeded", 0), ("Running", 0), ("Pending", 0), ("Suspended", 0), ("Failed", 1)],
)
def test_exit_code_is_1_only_for_failed(phase: str, code: int) -> None:
    assert exit_code(batch({"phase": phase})) == code


def test_api_errors_say_what_to_do() -> None:
    missing = api_error(404, "{}", "forage", "lab")
    assert missing.exit_code == EXIT_NOT_FOUND
    assert str(missing).startswith("SierraBatch forage not found in namespace lab")
    no_crd = api_error(404, "404 page not found", "forage", "lab", type_served=False)
    assert no_crd.exit_code == EXIT_CLUSTER
    assert "the SierraBatch CRD is not installed" in str(no_crd)
    assert "helm install sierra-operator charts/sierra-operator" in str(no_crd)
    forbidden = api_error(403, '{"kind": "Status", "message": "no"}', "forage", "lab")
    assert forbidden.exit_code == EXIT_CLUSTER
    assert str(forbidden).startswith(
        "forbidden: your user cannot get sierrabatches in namespace lab"
    )
    assert "get on sierrabatches.sierra.research.io" in str(forbidden)
    other = api_error(500, '{"kind": "Status", "message": "etcd\\nsick"}', "forage", "lab")
    assert other.exit_code == EXIT_CLUSTER and str(other).endswith(
        "answered 500 reading SierraBatch forage in namespace lab: etcd sick"
    )


class _Discovery:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def get_api_resources(self, group: str, version: str, **_: Any) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_the_crd_counts_as_missing_only_when_discovery_says_so() -> None:
    def served(answer: Any) -> bool:
        return asyncio.run(_serves_batches(_Discovery(answer)))

    assert served(SimpleNamespace(resources=[SimpleNamespace(name="sierrabatches")]))
    assert not served(SimpleNamespace(resources=[SimpleNamespace(name="other")]))
    assert not served(ApiException(status=404))
    assert served(ApiException(status=403))

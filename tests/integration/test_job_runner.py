"""tests/job_runner.py against the emulated API, with Jobs whose container is a shell command.

The operator tests trust the runner to behave like a cluster's Job controller and kubelet
(what Prefect's worker and the operator then see); these pin down the behaviours that
matter for exactly-once execution, without Prefect: a deleted pod is replaced by default
(the same command runs again), ``podReplacementPolicy: Failed`` or a podFailurePolicy makes
the Job fail instead, Pods are real objects, and a deleted Job takes its pods along.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import KubeAPI, dump, wait_for
from tests.job_runner import TRACKING_FINALIZER, JobRunner, container_pids

pytestmark = pytest.mark.integration

NS = "lab"
NAMESPACES = [NS]
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
# Appends its shell's pid to $OUT; the first pod of a Job then idles (a background child,
# so the container has a process besides its main one), every later pod exits 0 at once.
FIRST_RUN_LINGERS = 'echo $$ >> "$OUT"; [ "$(wc -l < "$OUT")" -gt 1 ] || { sleep 60 & wait; }'
DISRUPTION_FAILS_JOB = {
    "rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}]
}


@pytest.fixture(scope="module")
def runner(kube: KubeAPI, tmp_module: Path) -> Iterator[JobRunner]:
    jobs = JobRunner(
        kube.url, tmp_module / "pods", poll=0.2, grace_seconds=1.0, failure_backoff=0.5
    ).start()
    yield jobs
    jobs.stop()


def create_job(kube: KubeAPI, name: str, script: str, out: Path, **spec: Any) -> dict[str, Any]:
    """A Job shaped like Prefect's (one container, restartPolicy Never, backoffLimit 0)."""
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "runner-test"}},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": {"labels": {"app": "runner-test", "run": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "prefect-job",
                            "image": "probe:test",
                            "command": ["sh", "-c", script],
                            "env": [{"name": "OUT", "value": str(out)}],
                        }
                    ],
                },
            },
        },
    }
    with kube.http() as http:
        resp = http.post(JOBS, json=manifest)
    resp.raise_for_status()
    return dict(resp.json())


def job_status(kube: KubeAPI, name: str) -> dict[str, Any]:
    return dict((kube.get(f"{JOBS}/{name}") or {}).get("status") or {})


def job_condition(kube: KubeAPI, name: str, type_: str) -> dict[str, Any]:
    conditions = job_status(kube, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_ and c["status"] == "True"), {})


def pods_of(kube: KubeAPI, job: str) -> list[dict[str, Any]]:
    """The Job's Pod objects (filtered here: the emulator ignores label selectors)."""
    items = (kube.get(f"/api/v1/namespaces/{NS}/pods") or {}).get("items", [])
    return [p for p in items if p["metadata"].get("labels", {}).get("job-name") == job]


def pod(kube: KubeAPI, name: str) -> dict[str, Any] | None:
    return kube.get(f"/api/v1/namespaces/{NS}/pods/{name}")


def lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def test_a_deleted_pod_is_replaced_and_runs_the_command_again(kube, runner, tmp_module):
    """No podReplacementPolicy (TerminatingOrFailed): the deleted pod is replaced at once,
    though backoffLimit is 0: the same command runs a second time (the real defect)."""
    out = tmp_module / "replaced.pids"
    create_job(kube, "replaced", FIRST_RUN_LINGERS, out)
    wait_for(lambda: lines(out) == 1, 90, "the first pod to run")
    [first] = runner.pod_names("replaced")
    first_uid = pod(kube, first)["metadata"]["uid"]
    assert runner.delete_pod(NS, "replaced") == first
    wait_for(lambda: lines(out) == 2, 90, "a replacement pod to run the command again")
    wait_for(lambda: job_condition(kube, "replaced", "Complete"), 90, "the Job to complete")
    status = job_status(kube, "replaced")
    assert status.get("succeeded") == 1 and "failed" not in status, dump(status)
    assert runner.pods_started("replaced") == 2
    first_pid, second_pid = out.read_text().split()
    assert first_pid != second_pid, "a new process"
    second = runner.pod_names("replaced")[1]
    assert pod(kube, second)["status"]["phase"] == "Succeeded"
    wait_for(lambda: pod(kube, first) is None, 90, "the deleted pod to go once terminated")
    assert not container_pids(first_uid), "its background child died with the container"


def test_with_replacement_policy_failed_a_deleted_pod_fails_the_job(kube, runner, tmp_module):
    """podReplacementPolicy Failed + backoffLimit 0: the Job waits for the deleted pod to
    end (SIGTERM: exit 143, Failed), counts it, and fails; the command ran once."""
    out = tmp_module / "strict.pids"
    create_job(kube, "strict", FIRST_RUN_LINGERS, out, podReplacementPolicy="Failed")
    wait_for(lambda: lines(out) == 1, 90, "the pod to run")
    name = runner.delete_pod(NS, "strict")
    assert name is not None
    failed = wait_for(lambda: job_condition(kube, "strict", "Failed"), 90, "the Job to fail")
    assert failed["reason"] == "BackoffLimitExceeded", dump(failed)
    assert job_condition(kube, "strict", "FailureTarget")["reason"] == "BackoffLimitExceeded"
    status = job_status(kube, "strict")
    assert status["failed"] == 1 and "succeeded" not in status and "active" not in status
    time.sleep(1.5)  # several controller passes: still no replacement
    assert lines(out) == 1 and runner.pods_started("strict") == 1
    wait_for(lambda: pod(kube, name) is None, 90, "the deleted pod to go once counted")


def test_pods_are_objects_with_the_jobs_labels_owner_and_terminal_status(kube, runner, tmp_module):
    jobs = {
        "fine": create_job(kube, "fine", "echo hello", tmp_module / "fine.out"),
        "broken": create_job(kube, "broken", "echo oops; exit 3", tmp_module / "broken.out"),
    }
    wait_for(lambda: job_condition(kube, "fine", "Complete"), 90, "fine to complete")
    failed = wait_for(lambda: job_condition(kube, "broken", "Failed"), 90, "broken to fail")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert job_status(kube, "fine")["completionTime"]
    for name, (phase, code, reason, said) in {
        "fine": ("Succeeded", 0, "Completed", "hello"),
        "broken": ("Failed", 3, "Error", "oops"),
    }.items():
        job = jobs[name]
        [obj] = pods_of(kube, name)
        meta = obj["metadata"]
        assert re.fullmatch(rf"{name}-[bcdfghjklmnpqrstvwxz2456789]{{5}}", meta["name"])
        uid = job["metadata"]["uid"]
        assert meta["labels"] == {
            "app": "runner-test",
            "run": name,
            "job-name": name,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "batch.kubernetes.io/controller-uid": uid,
        }
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert TRACKING_FINALIZER not in (meta.get("finalizers") or []), "counted: released"
        template = job["spec"]["template"]["spec"]
        assert obj["spec"]["containers"] == template["containers"]
        status = obj["status"]
        assert status["phase"] == phase
        [container] = status["containerStatuses"]
        terminated = container["state"]["terminated"]
        assert (terminated["exitCode"], terminated["reason"]) == (code, reason), dump(status)
        assert container["name"] == "prefect-job" and not container["ready"]
        assert said in (tmp_module / "pods" / f"{meta['name']}.log").read_text()


def test_a_pod_failure_policy_fails_the_job_on_eviction_not_on_a_plain_delete(
    kube, runner, tmp_module
):
    """A FailJob rule on DisruptionTarget matches an eviction (the Eviction API sets the
    condition); a plain delete sets none, so that pod's failure is counted instead."""
    for name, evict, reason in (
        ("evicted", True, "PodFailurePolicy"),
        ("deleted", False, "BackoffLimitExceeded"),
    ):
        out = tmp_module / f"{name}.pids"
        create_job(kube, name, FIRST_RUN_LINGERS, out, podFailurePolicy=DISRUPTION_FAILS_JOB)
        wait_for(lambda out=out: lines(out) == 1, 90, f"{name}'s pod to run")
        assert runner.delete_pod(NS, name, evict=evict) is not None
        failed = wait_for(
            lambda name=name: job_condition(kube, name, "Failed"), 90, f"{name} to fail"
        )
        assert failed["reason"] == reason, dump(failed)
        if evict:
            assert (
                "has condition DisruptionTarget matching FailJob rule at index 0"
                in (failed["message"])
            )
        assert runner.pods_started(name) == 1 and lines(out) == 1


def test_a_killed_pod_is_a_failure_counted_against_the_backoff_limit(kube, runner, tmp_module):
    """kill_pod (OOM kill): backoffLimit 0 fails the Job; backoffLimit 1 replaces the pod
    after the failure backoff and the Job completes with one failure on record."""
    out = tmp_module / "oom.pids"
    create_job(kube, "oom", FIRST_RUN_LINGERS, out)
    wait_for(lambda: lines(out) == 1, 90, "oom's pod to run")
    assert runner.kill_pod(NS, "oom") == "oom"
    failed = wait_for(lambda: job_condition(kube, "oom", "Failed"), 90, "oom to fail")
    assert failed["reason"] == "BackoffLimitExceeded"
    [obj] = pods_of(kube, "oom")
    terminated = obj["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (obj["status"]["phase"], terminated["exitCode"], terminated["reason"]) == (
        "Failed",
        137,
        "OOMKilled",
    )

    out = tmp_module / "retried.pids"
    create_job(kube, "retried", FIRST_RUN_LINGERS, out, backoffLimit=1)
    wait_for(lambda: lines(out) == 1, 90, "retried's pod to run")
    assert runner.kill_pod(NS, "retried") == "retried"
    wait_for(lambda: job_condition(kube, "retried", "Complete"), 90, "retried to complete")
    status = job_status(kube, "retried")
    assert (status["failed"], status["succeeded"]) == (1, 1), dump(status)
    assert runner.pods_started("retried") == 2 and lines(out) == 2


def test_deleting_a_job_ends_its_pods_processes_and_objects(kube, runner, tmp_module):
    out = tmp_module / "doomed.pids"
    create_job(kube, "doomed", FIRST_RUN_LINGERS, out)
    wait_for(lambda: lines(out) == 1, 90, "the pod to run")
    [name] = runner.pod_names("doomed")
    uid = pod(kube, name)["metadata"]["uid"]
    with kube.http() as http:
        http.delete(f"{JOBS}/doomed").raise_for_status()
    wait_for(lambda: not pods_of(kube, "doomed"), 90, "the Job's pod to be collected")
    wait_for(lambda: not container_pids(uid), 10, "the pod's processes to end")
    assert runner.pods_started("doomed") == 1 and lines(out) == 1

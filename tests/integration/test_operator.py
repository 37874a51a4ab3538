"""The operator end to end, without a cluster (see tests/integration/cluster.py for what is real).

Real: kopf operator process, Prefect server, Prefect Kubernetes worker process (from the
rendered Deployment), `prefect flow-run execute` per Job, the runs' commands and files.
Stand-ins: the Kubernetes API (tests/kube_api.py) and kubelet/Job controller
(tests/job_runner.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.cluster import (
    KubeAPI,
    Operator,
    Workers,
    batch_doc,
    dump,
    start_kube_api,
    wait_for,
)
from tests.integration.helpers import events, intervals, max_overlap, probe
from tests.job_runner import JobRunner

pytestmark = pytest.mark.integration

NAMESPACES = ["lab-a", "lab-b", "lab-c"]


@pytest.fixture(scope="module")
def tmp_module() -> Iterator[Path]:
    # /tmp/… keeps the mount paths short and the same "inside" Jobs and outside.
    path = Path(tempfile.mkdtemp(prefix="sierra-op-test-"))
    yield path
    if not os.environ.get("SIERRA_TEST_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def kube(tmp_module: Path) -> Iterator[KubeAPI]:
    api = start_kube_api(tmp_module, NAMESPACES)
    yield api
    api.proc.kill()
    api.proc.wait()


@pytest.fixture(scope="module")
def jobs(kube: KubeAPI, tmp_module: Path) -> Iterator[JobRunner]:
    runner = JobRunner(kube.url, tmp_module / "jobs").start()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def operator(kube: KubeAPI, prefect_api_url: str, tmp_module: Path) -> Iterator[Operator]:
    op = Operator(kube, prefect_api_url, tmp_module / "operator.log").start()
    yield op
    op.stop()


@pytest.fixture()
def workers(kube: KubeAPI, tmp_module: Path) -> Iterator[Workers]:
    w = Workers(kube, tmp_module / "workers")
    yield w
    w.stop()


def pool_exists(api_url: str, name: str) -> bool:
    from prefect.client.orchestration import PrefectClient
    from prefect.exceptions import ObjectNotFound

    async def read() -> bool:
        async with PrefectClient(api=api_url) as client:
            try:
                await client.read_work_pool(name)
                return True
            except ObjectNotFound:
                return False

    return asyncio.run(read())


def flow_run_count(api_url: str, batch_uid: str) -> int:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    async def read() -> int:
        async with PrefectClient(api=api_url) as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"sierra-batch:{batch_uid}"])
                ),
                limit=200,
            )
            return len(runs)

    return asyncio.run(read())


def conditions(obj: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in obj["status"].get("conditions", [])}


def test_batches_in_two_namespaces_run_end_to_end(
    kube, jobs, operator, workers, prefect_api_url, tmp_module
):
    mounts = {ns: tmp_module / f"root-e2e-{ns}" for ns in ("lab-a", "lab-b")}
    uids = {
        ns: kube.create_batch(
            ns,
            batch_doc(
                "forage", m, [[probe(1.0)] * 3, [probe(0.5)] * 2, [probe(0.5)]], parallelism=2
            ),
        )["metadata"]["uid"]
        for ns, m in mounts.items()
    }
    for ns in uids:
        workers.start_from_deployment(ns, "forage-worker")
    for ns in uids:
        wait_for(
            lambda ns=ns: kube.phase(ns, "forage") in ("Succeeded", "Failed"),
            300,
            f"{ns}/forage to finish: {dump((kube.batch(ns, 'forage') or {}).get('status'))}",
        )
    obj = kube.batch("lab-a", "forage")
    assert obj["status"]["phase"] == "Succeeded", dump(obj["status"])
    assert kube.phase("lab-b", "forage") == "Succeeded"
    assert obj["status"]["runs"] == {
        "total": 6,
        "succeeded": 6,
        "failed": 0,
        "running": 0,
        "pending": 0,
    }
    assert obj["status"]["runsDone"] == "6/6"
    assert conditions(obj) == {
        "Valid": "True",
        "StorageReady": "True",
        "PoolReady": "True",
        "Complete": "True",
    }
    assert obj["status"]["workPool"] == "sierra-lab-a-forage"
    assert pool_exists(prefect_api_url, "sierra-lab-a-forage")
    assert pool_exists(prefect_api_url, "sierra-lab-b-forage"), "one pool per batch"
    for ns, mount in mounts.items():
        spans = intervals(events(mount / "forage"))
        assert len(spans) == 6, f"{ns}: every run executed exactly once"
        assert (mount / "forage/exp-outputs/c1-exp2/run0/result.json").exists()
    assert flow_run_count(prefect_api_url, uids["lab-a"]) == 6, "one flow run per run, no duplicate"

    dep = kube.get("/apis/apps/v1/namespaces/lab-a/deployments/forage-worker")
    assert dep["spec"]["replicas"] == 0, "workers scaled to zero when done"
    pvc = kube.get("/api/v1/namespaces/lab-a/persistentvolumeclaims/forage-sierra-root")
    assert pvc is not None and "ownerReferences" not in pvc["metadata"]
    reasons = {e.get("reason") for e in kube.events("lab-a")}
    assert {"Created", "PoolReady", "ExperimentStarted", "Succeeded"} <= reasons
    health = httpx.get(f"http://127.0.0.1:{workers.health_ports[0]}/health", timeout=5)
    assert health.status_code == 200, "the worker's health endpoint (the probes') answers"
    alive = httpx.get(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=5)
    assert alive.status_code == 200, "`sierra-operator run --liveness` serves kopf's probe"


def test_experiments_in_order_with_bounded_parallelism(kube, jobs, operator, workers, tmp_module):
    mount = tmp_module / "root-order"
    kube.create_batch(
        "lab-c", batch_doc("ordered", mount, [[probe(2.0)] * 3, [probe(0.5)] * 2], parallelism=2)
    )
    workers.start_from_deployment("lab-c", "ordered-worker")
    wait_for(lambda: kube.phase("lab-c", "ordered") == "Succeeded", 300, "lab-c/ordered to succeed")
    spans = intervals(events(mount / "ordered"))
    assert len(spans) == 5
    exp0_end = max(end for (e, _, _), (_, end) in spans.items() if e == "c1-exp0")
    exp1_start = min(start for (e, _, _), (start, _) in spans.items() if e == "c1-exp1")
    assert exp0_end <= exp1_start, "c1-exp1 starts after every run of c1-exp0 ended"
    assert max_overlap(list(spans.values())) <= 2, "pool concurrency limit = parallelism"


def test_invalid_spec_creates_nothing_and_says_why(kube, operator, prefect_api_url):
    """The API server's schema would reject parallelism 0 at admission; the emulator does not
    enforce schemas, which shows the operator's own validation (the second line)."""
    bad = batch_doc("broken", Path("/tmp/never"), [[probe(0.1)]], parallelism=0)
    kube.create_batch("lab-a", bad)
    no_image = batch_doc("imageless", Path("/tmp/never"), [[probe(0.1)]])
    del no_image["spec"]["image"]
    kube.create_batch("lab-a", no_image)
    for name, field in (("broken", "spec.execution.parallelism"), ("imageless", "spec.image")):
        wait_for(lambda name=name: kube.phase("lab-a", name) == "Failed", 60, f"{name} Failed")
        obj = kube.batch("lab-a", name)
        valid = next(c for c in obj["status"]["conditions"] if c["type"] == "Valid")
        assert valid["status"] == "False" and field in valid["message"], dump(valid)
        assert kube.get(f"/apis/apps/v1/namespaces/lab-a/deployments/{name}-worker") is None
        assert (
            kube.get(f"/api/v1/namespaces/lab-a/persistentvolumeclaims/{name}-sierra-root") is None
        )
        assert not pool_exists(prefect_api_url, f"sierra-lab-a-{name}")
        warned = [
            e
            for e in kube.events("lab-a")
            if e.get("reason") in ("InvalidSpec",)
            and e.get("involvedObject", {}).get("name") == name
        ]
        assert warned and field in warned[0]["message"]


def test_operator_killed_mid_experiment_runs_everything_exactly_once(
    kube, jobs, operator, workers, prefect_api_url, tmp_module
):
    mount = tmp_module / "root-restart"
    uid = kube.create_batch(
        "lab-b",
        batch_doc(
            "phoenix", mount, [[probe(0.5)] * 2, [probe(3.0)] * 3, [probe(0.5)]], parallelism=3
        ),
    )["metadata"]["uid"]
    workers.start_from_deployment("lab-b", "phoenix-worker")
    wait_for(
        lambda: any(
            e.kind == "start" and e.experiment == "c1-exp1" for e in events(mount / "phoenix")
        ),
        240,
        "c1-exp1 to start",
    )
    operator.kill()
    operator.start(via_kopf=True)
    wait_for(lambda: kube.phase("lab-b", "phoenix") == "Succeeded", 300, "lab-b/phoenix to succeed")
    ends = [(e.experiment, e.run) for e in events(mount / "phoenix") if e.kind == "end"]
    assert sorted(ends) == sorted(set(ends)) and len(ends) == 6, ends
    assert flow_run_count(prefect_api_url, uid) == 6, "the restarted operator duplicated nothing"


def test_delete_mid_batch_cancels_runs_keeps_data(
    kube, jobs, operator, workers, prefect_api_url, tmp_module
):
    mount = tmp_module / "root-delete"
    kube.create_batch("lab-c", batch_doc("doomed", mount, [[probe(120)] * 2, [probe(0.1)]]))
    workers.start_from_deployment("lab-c", "doomed-worker")
    wait_for(
        lambda: any(e.kind == "start" for e in events(mount / "doomed")), 240, "a run to start"
    )
    assert pool_exists(prefect_api_url, "sierra-lab-c-doomed")
    kube.delete_batch("lab-c", "doomed")
    wait_for(lambda: kube.batch("lab-c", "doomed") is None, 90, "the finalizer to be removed")
    assert not pool_exists(prefect_api_url, "sierra-lab-c-doomed"), "pool deleted in Prefect"
    assert (
        kube.get("/api/v1/namespaces/lab-c/persistentvolumeclaims/doomed-sierra-root") is not None
    )
    assert not any(e.experiment == "c1-exp1" for e in events(mount / "doomed"))
    wait_for(lambda: jobs.running() == 0, 60, "the runs' Jobs to stop")


def test_suspend_starts_nothing_until_resumed(kube, jobs, operator, workers, tmp_module):
    mount = tmp_module / "root-suspend"
    doc = batch_doc("sleeper", mount, [[probe(0.3)] * 2, [probe(0.3)]], parallelism=2)
    doc["spec"]["suspend"] = True
    kube.create_batch("lab-a", doc)
    workers.start_from_deployment("lab-a", "sleeper-worker")
    wait_for(lambda: kube.phase("lab-a", "sleeper") == "Suspended", 60, "Suspended")
    time.sleep(5)
    assert events(mount / "sleeper") == [], "nothing runs while suspended"
    kube.patch_batch("lab-a", "sleeper", {"spec": {"suspend": False}})
    wait_for(lambda: kube.phase("lab-a", "sleeper") == "Succeeded", 240, "sleeper to succeed")
    assert len(intervals(events(mount / "sleeper"))) == 3


def test_failing_run_is_retried_then_stops_the_batch(kube, jobs, operator, workers, tmp_module):
    mount = tmp_module / "root-flaky"
    doc = batch_doc("flaky", mount, [[probe(0.2), probe(0.2, fail=True)], [probe(0.2)]], retries=1)
    kube.create_batch("lab-b", doc)
    workers.start_from_deployment("lab-b", "flaky-worker")
    wait_for(lambda: kube.phase("lab-b", "flaky") == "Failed", 240, "flaky to fail")
    evs = events(mount / "flaky")
    tries = sorted(
        e.attempt for e in evs if e.kind == "end" and (e.experiment, e.run) == ("c1-exp0", 1)
    )
    assert tries == [1, 2], "retries: 1 -> a second attempt, as its own flow run"
    assert not any(e.experiment == "c1-exp1" for e in evs), "StopBatch: c1-exp1 never starts"
    obj = kube.batch("lab-b", "flaky")
    assert "c1-exp0/run1" in obj["status"]["message"]
    assert obj["status"]["runs"]["failed"] == 1
    warned = [e for e in kube.events("lab-b") if e.get("reason") == "Failed"]
    assert warned and warned[0]["type"] == "Warning"

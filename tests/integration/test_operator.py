"""The operator end to end, without a cluster (see tests/integration/cluster.py for what is real).

Real: kopf operator process, Prefect server, Prefect Kubernetes worker process (from the
rendered Deployment), `prefect flow-run execute` per Job, the runs' commands and files.
Stand-ins: the Kubernetes API (tests/kube_api.py) and kubelet/Job controller
(tests/job_runner.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sierra_operator.cluster import rbac
from sierra_operator.core import names
from sierra_operator.local.server import free_port
from tests.image_env import BASE_IMAGE, PASSWORD, ImageEnv, missing_tools
from tests.integration.cluster import (
    OPERATOR_USER,
    KubeAPI,
    Operator,
    Workers,
    audit,
    batch_doc,
    dump,
    wait_for,
    worker_user,
)
from tests.integration.helpers import (
    assert_only_sierra_outputs,
    events,
    intervals,
    max_overlap,
    probe,
)
from tests.job_runner import JobRunner

pytestmark = pytest.mark.integration

NAMESPACES = ["lab-a", "lab-b", "lab-c"]


@pytest.fixture(scope="module")
def jobs(kube: KubeAPI, tmp_module: Path) -> Iterator[JobRunner]:
    runner = JobRunner(kube.url, tmp_module / "jobs").start()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def operator(
    kube: KubeAPI, prefect_api_url: str, tmp_module: Path, request: pytest.FixtureRequest
) -> Iterator[Operator]:
    # With the image tools installed the operator gets their engine (DOCKER_HOST); without
    # them only the image tests skip, not the whole module.
    docker_host = None if missing_tools() else request.getfixturevalue("image_env").docker_host
    op = Operator(kube, prefect_api_url, tmp_module / "operator.log", docker_host=docker_host)
    yield op.start()
    op.stop()


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


def flow_runs(api_url: str, batch_uid: str) -> list[Any]:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    async def read() -> list[Any]:
        async with PrefectClient(api=api_url) as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"sierra-batch:{batch_uid}"])
                ),
                limit=200,
            )

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
        "ImageReady": "True",
        "StorageReady": "True",
        "PoolReady": "True",
        "Complete": "True",
    }
    assert obj["status"]["workPool"] == "sierra-lab-a-forage"
    ready = kube.condition("lab-a", "forage", "ImageReady")
    assert ready["reason"] == "Unverified", "no registry at localhost:5001: run by tag, said so"
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


def test_experiments_in_order_with_bounded_parallelism(
    kube, jobs, operator, workers, prefect_api_url, tmp_module
):
    """Experiments one after the other, at most ``parallelism`` runs at once; the next
    experiment is held ahead (created in a paused queue while the current one runs: runs/
    held.py) and still starts only after the current one ended, each run once."""
    mount = tmp_module / "root-order"
    uid = kube.create_batch(
        "lab-c", batch_doc("ordered", mount, [[probe(2.0)] * 3, [probe(0.5)] * 2], parallelism=2)
    )["metadata"]["uid"]
    workers.start_from_deployment("lab-c", "ordered-worker")
    wait_for(lambda: kube.phase("lab-c", "ordered") == "Succeeded", 300, "lab-c/ordered to succeed")
    spans = intervals(events(mount / "ordered"))
    assert len(spans) == 5
    exp0_end = max(end for (e, _, _), (_, end) in spans.items() if e == "c1-exp0")
    exp1_start = min(start for (e, _, _), (start, _) in spans.items() if e == "c1-exp1")
    assert exp0_end <= exp1_start, "c1-exp1 starts after every run of c1-exp0 ended"
    assert max_overlap(list(spans.values())) <= 2, "pool concurrency limit = parallelism"
    runs = flow_runs(prefect_api_url, uid)
    assert len(runs) == 5, "held or not, one flow run per run"
    exp0_ended = max(r.end_time for r in runs if r.parameters["experiment"] == "c1-exp0")
    exp1 = [r for r in runs if r.parameters["experiment"] == "c1-exp1"]
    assert all(r.created < exp0_ended for r in exp1), "c1-exp1 was created ahead, held"
    held_in = {names.held_experiment(names.DEFAULT_QUEUE, r.work_queue_name) for r in exp1}
    assert held_in == {"c1-exp1"}, "in a hold queue of its own"


def test_runs_per_pod_packs_runs_into_fewer_jobs(
    kube, jobs, operator, workers, prefect_api_url, tmp_module
):
    """runsPerPod 3: c1-exp0's 5 runs execute in 2 Jobs (runs 0-2, 3-4), c1-exp1's 2 in one;
    each run still once, with its own output and status count, at most parallelism at once."""
    mount = tmp_module / "root-packed"
    before = set(jobs.started)
    doc = batch_doc(
        "packed", mount, [[probe(0.5)] * 5, [probe(0.3)] * 2], parallelism=2, runsPerPod=3
    )
    uid = kube.create_batch("lab-b", doc)["metadata"]["uid"]
    workers.start_from_deployment("lab-b", "packed-worker")
    wait_for(
        lambda: kube.phase("lab-b", "packed") in ("Succeeded", "Failed"),
        300,
        f"lab-b/packed to finish: {dump((kube.batch('lab-b', 'packed') or {}).get('status'))}",
    )
    obj = kube.batch("lab-b", "packed")
    assert obj["status"]["phase"] == "Succeeded", dump(obj["status"])
    assert obj["status"]["runs"]["succeeded"] == 7
    started = [
        job
        for job_uid, job in jobs.started.items()
        if job_uid not in before and job["metadata"]["namespace"] == "lab-b"
    ]
    assert len(started) == 3, f"3 Jobs for 7 runs: {[j['metadata']['name'] for j in started]}"
    assert flow_run_count(prefect_api_url, uid) == 3, "one flow run per pod, no duplicate"
    spans = intervals(events(mount / "packed"))
    assert len(spans) == 7, "every run executed exactly once"
    assert max_overlap(list(spans.values())) <= 2, "pods share execution.parallelism"
    for exp, n in (("c1-exp0", 5), ("c1-exp1", 2)):
        for k in range(n):
            assert (mount / f"packed/exp-outputs/{exp}/run{k}/result.json").exists(), (exp, k)


def test_a_killed_packed_pod_fails_exactly_the_runs_it_held(
    kube, jobs, operator, workers, prefect_api_url, tmp_module
):
    """runsPerPod 2: the pod of runs 0 and 1 is SIGKILLed (OOM, lost node) after run 0
    succeeded, while run 1 executes. Run 0 stays succeeded (never retried); run 1 is
    retried once the packed Job is gone, in a pod of its own."""
    mount = tmp_module / "root-packed-crash"
    doc = batch_doc(
        "packcrash", mount, [[probe(0.2), probe(30.0)]], parallelism=1, runsPerPod=2, retries=1
    )
    uid = kube.create_batch("lab-a", doc)["metadata"]["uid"]
    workers.start_from_deployment("lab-a", "packcrash-worker")
    wait_for(
        lambda: any(e.kind == "start" and e.run == 1 for e in events(mount / "packcrash")),
        240,
        "run 1 to start after run 0",
    )
    time.sleep(2)  # run 0's Completed reaches Prefect (events) before the pod dies
    assert jobs.kill_pod("lab-a") is not None
    wait_for(lambda: kube.phase("lab-a", "packcrash") in ("Succeeded", "Failed"), 300, "the end")
    obj = kube.batch("lab-a", "packcrash")
    assert obj["status"]["phase"] == "Succeeded", dump(obj["status"])
    starts = sorted((e.run, e.attempt) for e in events(mount / "packcrash") if e.kind == "start")
    assert starts == [(0, 1), (1, 1), (1, 2)], "run 0 once; run 1 retried as attempt 2"
    assert flow_run_count(prefect_api_url, uid) == 2, "the packed pod, then run 1 alone"


def test_invalid_spec_creates_nothing_and_says_why(kube, operator, prefect_api_url, tmp_path):
    """The API server's schema would reject parallelism 0 at admission; the emulator does not
    enforce schemas, which shows the operator's own validation (the second line). The
    condition says what ``sierra-operator validate`` says of the same document, word for
    word: a researcher who checks a batch before applying it sees the same errors."""
    bad = batch_doc("broken", Path("/tmp/never"), [[probe(0.1)]], parallelism=0)
    kube.create_batch("lab-a", bad)
    no_image = batch_doc("imageless", Path("/tmp/never"), [[probe(0.1)]])
    del no_image["spec"]["image"]
    kube.create_batch("lab-a", no_image)
    for name, field in (("broken", "spec.execution.parallelism"), ("imageless", "spec.image")):
        wait_for(lambda name=name: kube.phase("lab-a", name) == "Failed", 60, f"{name} Failed")
        valid = kube.condition("lab-a", name, "Valid")
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
    doc_file = tmp_path / "broken.yaml"
    doc_file.write_text(json.dumps(bad))
    checked = subprocess.run(
        [sys.executable, "-m", "sierra_operator.cli", "validate", str(doc_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "1000"},
        timeout=120,
    )
    assert checked.returncode == 2, checked.stdout + checked.stderr
    message = kube.condition("lab-a", "broken", "Valid")["message"]
    lines = [line for line in message.splitlines() if line.startswith("spec.")]
    assert lines, message
    for line in lines:
        assert f"{doc_file}: {line}" in checked.stdout + checked.stderr, (line, checked)


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
    """Nothing runs while suspended and the worker Deployment is scaled to 0 (no worker pod
    polls Prefect for nothing); resuming scales it back to spec.execution.workers."""
    mount = tmp_module / "root-suspend"
    doc = batch_doc("sleeper", mount, [[probe(0.3)] * 2, [probe(0.3)]], parallelism=2, workers=2)
    doc["spec"]["suspend"] = True
    kube.create_batch("lab-a", doc)
    workers.start_from_deployment("lab-a", "sleeper-worker")

    def replicas() -> int | None:
        dep = kube.get("/apis/apps/v1/namespaces/lab-a/deployments/sleeper-worker") or {}
        return (dep.get("spec") or {}).get("replicas")

    wait_for(lambda: kube.phase("lab-a", "sleeper") == "Suspended", 60, "Suspended")
    wait_for(lambda: replicas() == 0, 30, "workers scaled to 0 while Suspended")
    time.sleep(5)
    assert events(mount / "sleeper") == [], "nothing runs while suspended"
    assert replicas() == 0
    kube.patch_batch("lab-a", "sleeper", {"spec": {"suspend": False}})
    wait_for(lambda: replicas() == 2, 60, "workers scaled back to execution.workers on resume")
    wait_for(lambda: kube.phase("lab-a", "sleeper") == "Succeeded", 240, "sleeper to succeed")
    assert len(intervals(events(mount / "sleeper"))) == 3
    assert replicas() == 0, "and to 0 again at the end"
    kube.delete_batch("lab-a", "sleeper")  # its Prefect pool too: the test can run again
    wait_for(lambda: kube.batch("lab-a", "sleeper") is None, 60, "sleeper deleted")


def read_pool(api_url: str, name: str) -> Any:
    from prefect.client.orchestration import PrefectClient

    async def read() -> Any:
        async with PrefectClient(api=api_url) as client:
            return await client.read_work_pool(name)

    return asyncio.run(read())


def test_a_changed_spec_reaches_the_work_pool(kube, operator, prefect_api_url, tmp_module):
    """Parallelism and resources edited on a provisioned batch reach its pool: the pool's
    concurrency limit is what workers enforce, so a raised parallelism left there would
    keep runs waiting; the job template is what new run pods are made from."""
    doc = batch_doc("edited", tmp_module / "root-edited", [[probe(0.1)] * 4], parallelism=2)
    doc["spec"]["suspend"] = True  # provisioned, nothing run
    kube.create_batch("lab-b", doc)
    wait_for(lambda: kube.phase("lab-b", "edited") == "Suspended", 60, "Suspended")
    pool = kube.batch("lab-b", "edited")["status"]["workPool"]
    assert read_pool(prefect_api_url, pool).concurrency_limit == 2
    assert "750m" not in json.dumps(read_pool(prefect_api_url, pool).base_job_template)

    def updated() -> int:
        return sum(e.get("reason") == "PoolUpdated" for e in kube.events("lab-b"))

    changed = {"parallelism": 4, "resources": {"requests": {"cpu": "750m"}}}
    kube.patch_batch("lab-b", "edited", {"spec": {"execution": changed}})
    wait_for(
        lambda: read_pool(prefect_api_url, pool).concurrency_limit == 4,
        60,
        "the pool's limit raised with parallelism",
    )
    assert "750m" in json.dumps(read_pool(prefect_api_url, pool).base_job_template)
    wait_for(lambda: updated() == 1, 30, "a PoolUpdated Event")
    limit = read_pool(prefect_api_url, pool)
    # A change that leaves the pool as it was (a label of the spec: workers) updates nothing.
    kube.patch_batch("lab-b", "edited", {"spec": {"execution": {"workers": 2}}})
    wait_for(
        lambda: kube.batch("lab-b", "edited")["status"].get("observedGeneration") == 3,
        30,
        "the third generation seen",
    )
    assert read_pool(prefect_api_url, pool).updated == limit.updated
    assert updated() == 1
    kube.delete_batch("lab-b", "edited")
    wait_for(lambda: kube.batch("lab-b", "edited") is None, 60, "edited deleted")


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


def batch_events(kube: KubeAPI, namespace: str, name: str) -> list[dict]:
    return [e for e in kube.events(namespace) if e.get("involvedObject", {}).get("name") == name]


def pool_image(api_url: str, pool: str) -> str:
    from prefect.client.orchestration import PrefectClient

    async def read() -> str:
        async with PrefectClient(api=api_url) as client:
            found = await client.read_work_pool(pool)
        job = found.base_job_template["job_configuration"]["job_manifest"]
        return str(job["spec"]["template"]["spec"]["containers"][0]["image"])

    return asyncio.run(read())


def built_batch(env: ImageEnv, name: str, greeting: str, secret: str, **extra) -> dict:
    dockerfile = f'FROM {BASE_IMAGE}\nARG GREETING\nRUN echo "$GREETING" > /greeting\n'
    doc = batch_doc(name, extra.pop("mount", Path("/tmp/never")), extra.pop("runs", [[probe(0.1)]]))
    doc["spec"]["image"] = {
        "repository": f"{env.registry}/{name}",
        "tag": "v1",
        "build": {
            "context": env.context(name, {"Dockerfile": extra.pop("dockerfile", dockerfile)}),
            "buildArgs": {"GREETING": greeting},
        },
        "pushSecret": secret,
    }
    doc["spec"].update(extra)
    return doc


def image_status(kube: KubeAPI, ns: str, name: str) -> dict:
    return (kube.batch(ns, name) or {}).get("status", {}).get("image") or {}


def test_built_image_is_pushed_pinned_and_rebuilt_only_when_inputs_change(
    kube, jobs, operator, workers, image_env, prefect_api_url, tmp_module
):
    kube.create_secret("lab-a", "regcred", image_env.dockerconfigjson())
    mount = tmp_module / "root-built"
    doc = built_batch(image_env, "built", "one", "regcred", mount=mount, suspend=True)
    kube.create_batch("lab-a", doc)
    first = wait_for(
        lambda: image_status(kube, "lab-a", "built").get("digest"), 120, "the image to be pushed"
    )
    assert first == image_env.registry_digest("built", "v1"), "status has the registry's digest"
    wait_for(lambda: kube.phase("lab-a", "built") == "Suspended", 60, "Suspended")
    obj = kube.batch("lab-a", "built")
    ready = kube.condition("lab-a", "built", "ImageReady")
    assert (ready["status"], ready["reason"]) == ("True", "Pushed")
    pool = obj["status"]["workPool"]
    assert pool_image(prefect_api_url, pool) == f"{image_env.registry}/built@{first}"
    reasons = [e["reason"] for e in batch_events(kube, "lab-a", "built")]
    assert "Building" in reasons and "Pushed" in reasons
    builds = reasons.count("Pushed")

    operator.kill()
    operator.start(via_kopf=True)
    time.sleep(8)  # several reconciles of the restarted operator
    assert image_status(kube, "lab-a", "built")["digest"] == first
    assert [e["reason"] for e in batch_events(kube, "lab-a", "built")].count("Pushed") == builds, (
        "same spec after a restart: no rebuild"
    )

    kube.patch_batch(
        "lab-a", "built", {"spec": {"image": {"build": {"buildArgs": {"GREETING": "two"}}}}}
    )
    second = wait_for(
        lambda: (d := image_status(kube, "lab-a", "built").get("digest")) != first and d,
        120,
        "a rebuild after buildArgs changed",
    )
    assert second == image_env.registry_digest("built", "v1")
    wait_for(
        lambda: pool_image(prefect_api_url, pool) == f"{image_env.registry}/built@{second}",
        30,
        "the pool's job template to pin the new digest",
    )
    kube.patch_batch("lab-a", "built", {"spec": {"suspend": False}})
    workers.start_from_deployment("lab-a", "built-worker")
    wait_for(lambda: kube.phase("lab-a", "built") == "Succeeded", 240, "built to succeed")

    secret_forms = [PASSWORD, image_env.dockerconfigjson()]
    seen = operator.log.read_text() + dump(kube.batch("lab-a", "built"))
    seen += dump(kube.events("lab-a"))
    assert not [s for s in secret_forms if s in seen], "credentials leaked into logs/status/Events"


def test_build_and_push_failures_are_conditions_that_say_why(kube, operator, image_env):
    kube.create_secret("lab-b", "badcred", image_env.dockerconfigjson(password="not-it-42"))
    kube.create_batch("lab-b", built_batch(image_env, "denied", "x", "badcred"))
    broken = f"FROM {BASE_IMAGE}\nRUN exit 7\nRUN echo unreachable\n"
    kube.create_batch(
        "lab-b", built_batch(image_env, "broken-build", "x", "badcred", dockerfile=broken)
    )

    def condition(name: str) -> dict | None:
        found = kube.condition("lab-b", name, "ImageReady")
        return found if found and found["reason"] not in ("Building",) else None

    denied = wait_for(lambda: condition("denied"), 120, "the push to be refused")
    assert denied["status"] == "False" and denied["reason"] == "PushFailed", dump(denied)
    assert image_env.registry in denied["message"] and "'badcred'" in denied["message"]
    assert "not-it-42" not in denied["message"]
    failed = wait_for(lambda: condition("broken-build"), 120, "the build to fail")
    assert failed["reason"] == "BuildFailed" and "RUN exit 7" in failed["message"], dump(failed)
    assert kube.phase("lab-b", "broken-build") == "Failed"
    kube.create_secret("lab-b", "goodcred", image_env.dockerconfigjson())
    ghost = batch_doc("ghost", Path("/tmp/never"), [[probe(0.1)]])
    ghost["spec"]["image"] = {"repository": f"{image_env.registry}/ghost", "tag": "v9"}
    ghost["spec"]["image"]["pushSecret"] = "goodcred"
    kube.create_batch("lab-b", ghost)
    missing = wait_for(lambda: condition("ghost"), 60, "the image lookup")
    assert missing["reason"] == "ImageNotFound" and "no such tag" in missing["message"]
    assert "spec.image.build" in missing["message"], "says how to fix it"
    for name in ("denied", "broken-build", "ghost"):
        assert kube.get(f"/apis/apps/v1/namespaces/lab-b/deployments/{name}-worker") is None
        kube.delete_batch("lab-b", name)
    assert "not-it-42" not in operator.log.read_text()


def test_api_key_secret_and_prefect_outage_are_conditions_that_recover(
    kube, operator, prefect_api_url, tmp_module
):
    """A missing key Secret, then an unreachable Prefect API: conditions naming the fix; each
    fixed, the batch goes on (its worker Deployment follows the new URL). The key itself
    never shows. (The test server accepts any key: that it is sent is not observable here.)"""
    key = "pnu_Secret-Key-0042"

    def pool_condition() -> dict:
        return kube.condition("lab-c", "keyed", "PoolReady")

    dead = f"http://127.0.0.1:{free_port()}/api"
    doc = batch_doc("keyed", tmp_module / "root-keyed", [[probe(0.1)]])
    doc["spec"]["prefect"] = {"apiUrl": dead, "apiKeySecret": {"name": "prefect", "key": "k"}}
    kube.create_batch("lab-c", doc)
    missing = wait_for(
        lambda: (c := pool_condition()).get("reason") == "PrefectApiKeyMissing" and c, 60, "key"
    )
    assert "kubectl create secret generic prefect --from-literal=k=" in missing["message"]
    kube.create_generic_secret("lab-c", "prefect", {"k": key})
    outage = wait_for(
        lambda: (c := pool_condition()).get("reason") == "PrefectUnavailable" and c, 60, "outage"
    )
    assert outage["status"] == "False" and dead in outage["message"]
    kube.patch_batch("lab-c", "keyed", {"spec": {"prefect": {"apiUrl": prefect_api_url}}})
    wait_for(lambda: pool_condition().get("status") == "True", 60, "PoolReady after the fix")
    uid = kube.batch("lab-c", "keyed")["metadata"]["uid"]
    wait_for(lambda: flow_run_count(prefect_api_url, uid) == 1, 60, "the run to be submitted")
    dep = kube.get("/apis/apps/v1/namespaces/lab-c/deployments/keyed-worker")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PREFECT_API_URL"]["value"] == prefect_api_url, "the workers follow the spec"
    assert env["PREFECT_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "prefect", "key": "k"}
    seen = (
        operator.log.read_text() + dump(kube.batch("lab-c", "keyed")) + dump(kube.events("lab-c"))
    )
    assert key not in seen
    kube.delete_batch("lab-c", "keyed")
    wait_for(lambda: kube.batch("lab-c", "keyed") is None, 90, "keyed to be deleted")


def test_commands_file_is_planned_in_a_pod_then_run(kube, jobs, operator, workers, tmp_module):
    """spec.commandsFile: the operator cannot read the PVC, so a planning flow run (a Job
    mounting it) reads SIERRA's exp-inputs/<exp>/commands.txt and publishes the plan."""
    mount = tmp_module / "root-sierra"
    batch_dir = mount / "proj" / "batch"
    for exp, n in (("c1-exp0", 2), ("c1-exp1", 1)):
        (batch_dir / "exp-inputs" / exp).mkdir(parents=True)
        lines = "\n".join([probe(0.2)] * n)
        (batch_dir / "exp-inputs" / exp / "commands.txt").write_text(f"# stage 1\n{lines}\n")
    for name, commands_file in (("sierra", "proj/batch"), ("nofile", "proj/none/commands.txt")):
        doc = batch_doc(name, mount, [[probe(0.1)]])
        del doc["spec"]["experiments"]
        doc["spec"]["commandsFile"] = commands_file
        kube.create_batch("lab-b", doc)
        workers.start_from_deployment("lab-b", f"{name}-worker")
    wait_for(lambda: kube.phase("lab-b", "sierra") == "Succeeded", 240, "sierra to succeed")
    obj = kube.batch("lab-b", "sierra")
    assert [e["name"] for e in obj["status"]["experiments"]] == ["c1-exp0", "c1-exp1"]
    assert obj["status"]["runs"]["succeeded"] == 3 and obj["status"]["planKey"]
    assert conditions(obj)["Planned"] == "True"
    spans = intervals(events(batch_dir))
    assert len(spans) == 3, "outputs under SIERRA's batch root, each run once"
    assert_only_sierra_outputs(batch_dir)

    wait_for(lambda: kube.phase("lab-b", "nofile") == "Failed", 240, "nofile to fail planning")
    planned = kube.condition("lab-b", "nofile", "Planned")
    assert planned["reason"] == "PlanFailed", dump(planned)
    assert "proj/none/commands.txt does not exist" in planned["message"]


def test_a_killed_pod_is_noticed_and_its_run_retried(kube, jobs, operator, workers, tmp_module):
    """The run's pod dies under it (SIGKILL: what an OOM kill or a lost node does). Its flow
    run never reports an end; Prefect's Kubernetes worker observer sees the failed Job and
    marks the flow run Crashed, and the operator retries the run."""
    mount = tmp_module / "root-crash"
    doc = batch_doc("crashy", mount, [[probe(30.0)], [probe(0.1)]], retries=1)
    kube.create_batch("lab-c", doc)
    workers.start_from_deployment("lab-c", "crashy-worker")
    wait_for(lambda: any(e.kind == "start" for e in events(mount / "crashy")), 240, "the run")
    assert jobs.kill_pod("lab-c") is not None
    wait_for(lambda: kube.phase("lab-c", "crashy") in ("Succeeded", "Failed"), 300, "the end")
    obj = kube.batch("lab-c", "crashy")
    assert obj["status"]["phase"] == "Succeeded", dump(obj["status"])
    starts = sorted(
        e.attempt
        for e in events(mount / "crashy")
        if e.kind == "start" and e.experiment == "c1-exp0"
    )
    assert starts[:2] == [1, 2], "the killed attempt was retried as attempt 2"


def test_rbac_allows_every_call_the_operator_and_workers_make(
    kube, jobs, operator, workers, tmp_module
):
    """The emulator's audit log (one identity per kubeconfig token) against
    sierra_operator.cluster.rbac: what the chart's ClusterRole grants the operator, and what the
    per-batch Role grants the worker. This test runs a small batch to completion itself, so it
    holds on its own too."""
    mount = tmp_module / "root-rbac"
    kube.create_secret("lab-c", "pullcred", json.dumps({"auths": {"localhost:5001": {"auth": ""}}}))
    doc = batch_doc("audited", mount, [[probe(0.2)], [probe(0.2)]])
    doc["spec"]["image"]["pushSecret"] = "pullcred"  # read to resolve the image's digest
    kube.create_batch("lab-c", doc)
    workers.start_from_deployment("lab-c", "audited-worker")
    wait_for(lambda: kube.phase("lab-c", "audited") == "Succeeded", 240, "audited to succeed")
    log = audit(tmp_module)
    made = {
        user: {(e["group"], e["resource"], e["verb"]) for e in log if e["user"] == user}
        for user in {e["user"] for e in log}
    }
    by_operator = made.get(OPERATOR_USER, set())
    assert by_operator - rbac.operator_calls() == set(), "calls the ClusterRole does not allow"
    assert rbac.OPERATOR_CALLS <= by_operator, "OPERATOR_CALLS lists calls the code never makes"
    assert rbac.KOPF_CALLS <= by_operator, "KOPF_CALLS lists calls kopf never makes"

    worker = worker_user("lab-c", "audited-worker")
    assert made.get(worker), f"the worker made no API call as {worker}: {sorted(made)}"
    assert made[worker] - rbac.calls_of(rbac.WORKER_RULES) == set(), "beyond the worker Role"
    assert {e["namespace"] for e in log if e["user"] == worker} == {"lab-c"}, (
        "the worker's Role is namespaced: every call in its own namespace"
    )


def test_finished_invalid_and_suspended_batches_cost_no_requests(
    kube, jobs, operator, workers, tmp_module
):
    """Issue 9 (measured on a real API server: every batch PATCHed its status every second,
    forever). Over >= 10 reconcile intervals, once settled:

    - a finished batch and an idle suspended one make no Kubernetes request at all (no status
      PATCH, no kopf annotation, no Event, no child read) and are not reconciled (no `tick` in
      the operator log, so no Prefect request: reconcile is what calls a batch's Prefect API);
    - a batch that failed validation is still reconciled every interval (so fixing its spec is
      seen) but, its status being unchanged, writes nothing.

    The emulator stores a merge patch as the API server does (null deletes the key), so a
    status compared with nulls in it, as before, would PATCH on every tick here. The operator
    is restarted as `kopf run` (its log names the object of each handler call), which also
    shows that a restarted operator leaves finished and suspended batches alone.
    """
    ns = "lab-b"
    # Unique names: the session's Prefect server may keep pools of an earlier run of this test.
    done, idle, bad = batches = tuple(f"quiet-{k}-{secrets.token_hex(2)}" for k in "dib")
    docs = {b: batch_doc(b, tmp_module / f"root-{b}", [[probe(0.1)]]) for b in batches}
    docs[idle]["spec"]["suspend"] = True
    docs[bad]["spec"]["execution"]["parallelism"] = 0
    for doc in docs.values():
        kube.create_batch(ns, doc)
    try:
        _measure_quiet_batches(kube, operator, workers, tmp_module, ns, done, idle, bad)
    finally:  # the operator deletes their Prefect pools
        for b in batches:
            kube.delete_batch(ns, b)
        for b in batches:
            wait_for(lambda b=b: kube.batch(ns, b) is None, 60, f"{b} deleted")


def _measure_quiet_batches(
    kube: KubeAPI,
    operator: Operator,
    workers: Workers,
    tmp_module: Path,
    ns: str,
    done: str,
    idle: str,
    bad: str,
) -> None:
    batches = (done, idle, bad)
    workers.start_from_deployment(ns, f"{done}-worker")
    wait_for(lambda: kube.phase(ns, done) == "Succeeded", 240, f"{done} to succeed")
    wait_for(lambda: kube.phase(ns, idle) == "Suspended", 60, f"{idle} Suspended")
    wait_for(lambda: kube.phase(ns, bad) == "Failed", 60, f"{bad} Failed")

    def about(entry: dict) -> str | None:
        """Which of these batches an audit entry is about (the batch, a child, or an Event)."""
        if entry["user"] != OPERATOR_USER or entry["namespace"] != ns:
            return None
        name = entry.get("name") or entry.get("involvedObject") or ""
        return next((b for b in batches if name == b or name.startswith(b + "-")), None)

    def theirs(since: int) -> list[dict]:
        return [e for e in audit(tmp_module)[since:] if about(e)]

    def log_since(offset: int) -> str:
        with operator.log.open() as log:
            log.seek(offset)
            return log.read()

    def ticks(text: str) -> dict[str, int]:
        lines = [line for line in text.splitlines() if "Timer 'tick'" in line]
        return {b: sum(f"[{ns}/{b}]" in line for line in lines) for b in batches}

    def quiet_window() -> tuple[list[dict], str]:
        """Once settled (three intervals in a row without a request about them: kopf stops a
        timer on the watch event of the status write that made its filter false), what they
        cost over 12 intervals: Kubernetes requests about them, and the operator's log."""
        deadline = time.monotonic() + 60
        while True:
            mark = len(audit(tmp_module))
            time.sleep(3 * interval)
            if not theirs(mark):
                break
            assert time.monotonic() < deadline, f"still making requests: {dump(theirs(mark))}"
        log_from, mark = operator.log.stat().st_size, len(audit(tmp_module))
        time.sleep(window)
        return theirs(mark), log_since(log_from)

    interval = operator.reconcile_seconds
    window = 12 * interval
    status_writes = {
        b: sum(
            e["resource"] == "sierrabatches/status" and e["verb"] == "patch"
            for e in theirs(0)
            if about(e) == b
        )
        for b in batches
    }
    during, text = quiet_window()
    print(
        f"\nover {window:.0f}s ({window / interval:.0f} reconcile intervals) after settling: "
        f"{len(during)} Kubernetes requests about these batches; Prefect API requests by the "
        f"operator in all (any batch): {text.count('HTTP Request:')}; status PATCHes per batch "
        f"before, over their whole life: {status_writes}"
    )
    assert during == [], f"a finished, invalid or suspended batch made requests: {dump(during)}"
    assert status_writes[bad] <= 2, "the invalid batch's unchanged status is not written again"

    operator.kill()
    restarted = operator.log.stat().st_size
    operator.start(via_kopf=True)
    wait_for(lambda: ticks(log_since(restarted))[bad], 120, "the restarted operator")
    during, text = quiet_window()
    counted = ticks(text)
    print(
        f"restarted as `kopf run`, over {window:.0f}s: {len(during)} Kubernetes requests about "
        f"these batches; Prefect API requests by the operator in all (any batch): "
        f"{text.count('HTTP Request:')}; tick runs per batch: {counted}"
    )
    assert during == [], f"a finished, invalid or suspended batch made requests: {dump(during)}"
    assert counted[done] == 0 and counted[idle] == 0, "reconciled at rest"
    assert counted[bad] >= 5, "the invalid batch is still reconciled (a fix is seen)"

    # A spec change wakes them: the invalid batch, fixed, is validated and goes on; the
    # finished one records the generation it saw and stays finished (and then at rest again).
    kube.patch_batch(ns, bad, {"spec": {"execution": {"parallelism": 1}}})
    wait_for(lambda: kube.condition(ns, bad, "Valid").get("status") == "True", 60, "the fix")
    kube.patch_batch(ns, done, {"spec": {"execution": {"retries": 2}}})
    wait_for(
        lambda: (kube.batch(ns, done) or {}).get("status", {}).get("observedGeneration") == 2,
        60,
        "the finished batch to see its new spec",
    )
    assert kube.phase(ns, done) == "Succeeded"

"""Fault injection: the invariants hold whatever fails around a batch.

Emulated Kubernetes API (tests/kube_api.py) + a Job controller and kubelet stand-in
(tests/job_runner.py, which replaces a deleted pod unless the Job spec says not to, as the
real one does) + the real operator, Prefect Kubernetes workers and Prefect server. Each test
injects one kind of fault and ends with :func:`check_invariants` on what the runs recorded:
every run succeeded exactly once, each attempt executed at most once, no two attempts of a
run overlapped, no run lost, and the batch phase right. The counts are printed (`-s`).

(A flow run read COMPLETED before its task run is in Prefect's database is covered against
the real server in test_prefect_api.py and at unit level in test_exactly_once.py.)
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sierra_operator.local.server import LocalPrefectServer, free_port
from tests.integration.cluster import (
    KubeAPI,
    Operator,
    batch_doc,
    dump,
    wait_for,
)
from tests.integration.helpers import (
    check_invariants,
    events,
    probe,
    start_local,
    write_batch,
)
from tests.job_runner import JobRunner

pytestmark = pytest.mark.integration

NAMESPACES = ["faults"]
SEED = 20261125


@pytest.fixture()
def jobs(kube: KubeAPI, tmp_module: Path) -> Iterator[JobRunner]:
    runner = JobRunner(kube.url, tmp_module / "jobs").start()
    yield runner
    runner.stop()


def report(name: str, counts: dict) -> None:
    print(f"\n[faults] {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def finish(kube: KubeAPI, name: str, timeout: float = 400) -> dict:
    wait_for(
        lambda: kube.phase("faults", name) in ("Succeeded", "Failed"),
        timeout,
        f"{name} to finish: {dump((kube.batch('faults', name) or {}).get('status'))}",
    )
    obj = kube.batch("faults", name)
    assert obj is not None
    assert obj["status"]["phase"] == "Succeeded", dump(obj["status"])
    return obj


def test_operator_killed_at_ten_random_points(kube, jobs, workers, prefect_api_url, tmp_module):
    """SIGKILL the operator 10 times at random moments of a 3x3 batch (seeded), restarting
    it each time: nothing re-runs, nothing is dropped, nothing is submitted twice."""
    mount = tmp_module / "root-kills"
    op = Operator(kube, prefect_api_url, tmp_module / "operator-kills.log").start()
    try:
        kube.create_batch(
            "faults",
            batch_doc("kills", mount, [[probe(1.5)] * 3 for _ in range(3)], parallelism=3),
        )
        workers.start_from_deployment("faults", "kills-worker")
        rng = random.Random(SEED)
        kills = 0
        while kills < 10 and kube.phase("faults", "kills") not in ("Succeeded", "Failed"):
            deadline = rng.uniform(0.5, 5.0)
            try:
                wait_for(
                    lambda: kube.phase("faults", "kills") in ("Succeeded", "Failed"),
                    deadline,
                    "",
                )
            except AssertionError:
                pass
            op.kill()
            op.start(via_kopf=kills % 2 == 1)
            kills += 1
        finish(kube, "kills")
    finally:
        op.stop()
    counts = check_invariants(mount / "kills", runs=9)
    report("operator killed", {"kills": kills, **counts})
    assert kills >= 5, "most kills landed while the batch was running"
    assert counts["attempts started"] == 9, "no attempt was needed twice"


def test_prefect_server_restarted_mid_batch(kube, jobs, workers, tmp_module):
    """The Prefect server (its own, SQLite on disk) is stopped while runs execute and started
    again on the same port: the batch completes, every run once.

    A run pod that starts while the server is down cannot even begin its flow run (it
    crashes before its command runs): that costs an attempt, hence ``retries: 1``. A run
    that succeeded while Prefect could not hear it is not executed again by its retry (its
    durable record says it succeeded)."""
    home = tmp_module / "prefect-home"
    home.mkdir()
    port = free_port()
    server = LocalPrefectServer(home, port)
    server.start()
    op = None
    try:
        server.wait_ready(timeout=300)
        op = Operator(kube, server.api_url, tmp_module / "operator-prefect.log").start()
        mount = tmp_module / "root-prefect"
        kube.create_batch(
            "faults",
            batch_doc(
                "outage", mount, [[probe(8.0)] * 2, [probe(0.5)] * 2], parallelism=2, retries=1
            ),
        )
        workers.start_from_deployment("faults", "outage-worker")
        wait_for(
            lambda: any(e.kind == "start" for e in events(mount / "outage")), 300, "a run start"
        )
        server.stop()
        server = LocalPrefectServer(home, port)
        server.start()
        server.wait_ready(timeout=300)
        finish(kube, "outage", timeout=500)
    finally:
        if op is not None:
            op.stop()
        server.stop()
    counts = check_invariants(mount / "outage", runs=4)
    report("Prefect server restarted", counts)


def _flow_run_process(pid: int) -> int:
    """The flow-run process above a run's command (its parent, or the shell's): a Prefect
    engine process, or in local mode a child forked by the flow-run executor."""
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"prefect" in cmdline or b"sierra_operator.local.executor" in cmdline:
            return pid
    raise AssertionError("no flow-run process above the run")


def test_local_flow_run_process_killed_mid_run(tmp_path, prefect_api_url):
    """Local mode: the flow-run process of a wave is SIGKILLed while its run executes (its
    command lives on in its own process group). The retry must not overlap with that
    leftover: the new attempt kills it first. The run succeeds exactly once."""
    batch = write_batch(tmp_path / "b.yaml", "orphan", [[probe(15.0)]], retries=1)
    root = tmp_path / "root"
    proc = start_local(batch, root, prefect_api_url)
    broot = root / "orphan"
    try:
        pidfile = wait_for(
            lambda: (
                next((broot / "probe-pids").glob("c1-exp0.0.1.*"), None)
                if (broot / "probe-pids").is_dir()
                else None
            ),
            240,
            "attempt 1 to start",
        )
        probe_pid = int(pidfile.name.rsplit(".", 1)[1])
        os.kill(_flow_run_process(probe_pid), signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    counts = check_invariants(broot, runs=1)
    report("local flow-run process killed", counts)
    assert counts["attempts started"] == 2, "attempt 2 ran after attempt 1's process died"
    with pytest.raises(ProcessLookupError):
        os.kill(probe_pid, 0)  # attempt 1's leftover command was stopped, not left running


def _job_of_attempt(jobs: JobRunner, run: str) -> str:
    """The Job (name) that executes e.g. ``c1-exp0-run0-try1``."""
    return wait_for(
        lambda: next(
            (
                str(m["metadata"]["name"])
                for m in list(jobs.started.values())
                if str(m["metadata"]["name"]).startswith(run + "-")
            ),
            None,
        ),
        120,
        f"the Job of {run}",
    )


def test_run_pod_deleted_mid_run(kube, jobs, workers, prefect_api_url, tmp_module):
    """`kubectl delete pod` (a drain, an eviction, a preemption) while a run executes: the
    Job does not replace the pod (on a real cluster the default would), the attempt is not
    executed again, and the run is retried as attempt 2 once attempt 1's Job is gone."""
    mount = tmp_module / "root-podgone"
    op = Operator(kube, prefect_api_url, tmp_module / "operator-podgone.log").start()
    try:
        kube.create_batch(
            "faults", batch_doc("podgone", mount, [[probe(8.0)], [probe(0.5)]], retries=1)
        )
        workers.start_from_deployment("faults", "podgone-worker")
        wait_for(
            lambda: any(e.kind == "start" for e in events(mount / "podgone")), 240, "attempt 1"
        )
        job = _job_of_attempt(jobs, "c1-exp0-run0-try1")
        assert jobs.delete_pod("faults", job) is not None
        obj = finish(kube, "podgone")
    finally:
        op.stop()
    counts = check_invariants(mount / "podgone", runs=2)
    counts["pods of attempt 1"] = jobs.pods_started(job, "faults")
    report("run pod deleted", counts)
    assert counts["pods of attempt 1"] == 1, "the deleted pod was not replaced"
    assert counts["runs retried"] == 1
    assert obj["status"]["runs"]["succeeded"] == 2


def test_pod_replaced_by_a_cluster_that_ignores_the_policy(
    kube, jobs, workers, prefect_api_url, tmp_module
):
    """Defence in depth: a cluster that drops podReplacementPolicy/podFailurePolicy (older
    than 1.29) replaces the deleted pod, and the replacement runs `prefect flow-run execute`
    for the same flow run again. The run flow refuses that re-execution (run_count > 1, or
    the attempt's claim on sierra-root): attempt 1's command still executed once, and the
    retry never overlaps with it."""
    mount = tmp_module / "root-oldk8s"
    op = Operator(kube, prefect_api_url, tmp_module / "operator-oldk8s.log").start()
    try:
        kube.create_batch("faults", batch_doc("oldk8s", mount, [[probe(8.0)]], retries=1))
        wait_for(
            lambda: kube.condition("faults", "oldk8s", "PoolReady").get("status") == "True",
            120,
            "the work pool",
        )
        _drop_pod_policies(prefect_api_url, "sierra-faults-oldk8s")
        workers.start_from_deployment("faults", "oldk8s-worker")
        wait_for(lambda: any(e.kind == "start" for e in events(mount / "oldk8s")), 240, "run")
        job = _job_of_attempt(jobs, "c1-exp0-run0-try1")
        assert jobs.delete_pod("faults", job) is not None
        wait_for(lambda: jobs.pods_started(job, "faults") >= 2, 60, "the replacement pod")
        finish(kube, "oldk8s")
    finally:
        op.stop()
    counts = check_invariants(mount / "oldk8s", runs=1)
    counts["pods of attempt 1"] = jobs.pods_started(job, "faults")
    report("pod replaced by an old cluster", counts)
    assert counts["pods of attempt 1"] >= 2, "this cluster did replace the pod"


def _drop_pod_policies(api_url: str, pool: str) -> None:
    """What an API server older than 1.29 does with fields it does not know: drops them."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolUpdate

    async def update() -> None:
        async with PrefectClient(api=api_url) as client:
            template = (await client.read_work_pool(pool)).base_job_template
            spec = template["job_configuration"]["job_manifest"]["spec"]
            spec.pop("podReplacementPolicy")
            spec.pop("podFailurePolicy")
            await client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))

    asyncio.run(update())

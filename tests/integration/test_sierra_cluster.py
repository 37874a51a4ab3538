"""``sierra --execenv=sierraop.cluster``: SIERRA's stage 2 in the (emulated) cluster, with the
real ``sierra`` command (sierra-research 1.5.16) on the tiny project of tests/sierra_project.

Stage 1 runs here; stage 2 (the plugin, as a researcher's kubeconfig user) pushes the inputs
to a PVC, creates the SierraBatch, follows it and fetches ``exp-outputs/``; stages 3 and 4
then run here. Real: SIERRA, the kopf operator process, the Prefect server, Prefect's
Kubernetes worker (started from the Deployment the operator rendered), ``prefect flow-run
execute`` in every Job, the runs, tar over websockets. Stand-ins: tests/kube_api.py (API
server) and tests/job_runner.py (Job controller + kubelet, with the PVC a directory
bind-mounted at ``--sierra-root`` in every pod, so the runs write on the "PVC" and not into
the local sierra-root, and fetch has something to do).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sierra_operator.core import names
from tests.integration.cluster import KubeAPI, Operator, Workers, wait_for, write_kubeconfig
from tests.integration.helpers import (
    assert_only_sierra_outputs,
    require,
    require_mount_namespaces,
)
from tests.integration.test_sierra import BATCH, EXPERIMENTS, _sierra_cmd, files, stage1
from tests.integration.test_sierra import _env as sierra_env
from tests.job_runner import JobRunner

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _mount_namespaces() -> None:
    require_mount_namespaces()


NAMESPACES = ["research", "fails"]
CLAIMS = {"research": "sierra-root", "fails": "other-root"}
NAME = "template-speed-1-3-c3"  # the SierraBatch the plugin names after SIERRA's batch root


@pytest.fixture(scope="module")
def cluster(kube: KubeAPI, prefect_api_url: str, tmp_module: Path) -> Iterator[dict[str, Path]]:
    """A PVC per namespace (a directory each), the kubelet stand-in, the operator."""
    pvcs = {ns: tmp_module / f"pvc-{ns}" for ns in NAMESPACES}
    for ns, claim in CLAIMS.items():
        kube.create_pvc(ns, claim)
    runner = JobRunner(
        kube.url, tmp_module / "pods", claims={CLAIMS[ns]: pvcs[ns] for ns in NAMESPACES}
    ).start()
    op = Operator(kube, prefect_api_url, tmp_module / "operator.log").start()
    kubeconfig = write_kubeconfig(tmp_module / "kubeconfig-researcher", kube.url, "researcher")
    yield {**pvcs, "kubeconfig": kubeconfig}
    op.stop()
    runner.stop()


def stage2_in_cluster(
    kube: KubeAPI,
    workers: Workers,
    cluster: dict[str, Path],
    root: Path,
    namespace: str,
    *extra: str,
    stages: tuple[str, ...] = ("2", "3", "4"),
    new_batch: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``sierra --pipeline 2 3 4 --execenv sierraop.cluster`` as a subprocess; for a
    ``new_batch`` the worker "pod" is started once the operator rendered its Deployment
    (nothing runs Deployments here)."""
    args = ("--execenv", "sierraop.cluster", "--image", "localhost:5001/sierra:test")
    args += ("--claim", CLAIMS[namespace], "--namespace", namespace, *extra)
    env = sierra_env({"KUBECONFIG": str(cluster["kubeconfig"])})
    out = root.parent / f"sierra-{namespace}-{len(list(root.parent.glob('sierra-*.out')))}.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            _sierra_cmd(root, "--pipeline", *stages, *args),
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            wait_for(
                lambda: (
                    not new_batch
                    or proc.poll() is not None
                    or kube.get(
                        f"/apis/apps/v1/namespaces/{namespace}/deployments/{names.worker_name(NAME)}"
                    )
                ),
                300,
                "the batch's worker Deployment",
            )
            if new_batch and proc.poll() is None:
                workers.start_from_deployment(namespace, names.worker_name(NAME))
            code = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    return subprocess.CompletedProcess(proc.args, code, out.read_text(), "")


@pytest.fixture(autouse=True)
def _sierra_installed() -> None:
    require("sierra-research (the dev extra)", Path(shutil.which("sierra") or "").exists())


def test_stage2_in_the_cluster_then_stages_3_and_4_here(
    kube: KubeAPI, workers: Workers, cluster: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    batch_root = stage1(root)
    assert not (batch_root / "exp-outputs").exists() or not any(
        (batch_root / "exp-outputs").rglob("*_output")
    )
    proc = stage2_in_cluster(kube, workers, cluster, root, "research", "--exec-jobs-per-node", "2")
    assert proc.returncode == 0, proc.stdout
    assert "pushing the batch's inputs to PVC sierra-root" in proc.stdout
    assert "Succeeded  runs 9/9" in proc.stdout, proc.stdout

    pvc_batch = cluster["research"] / BATCH
    assert (pvc_batch / "commands.txt").read_text() == (batch_root / "commands.txt").read_text()
    outputs = files(batch_root / "exp-outputs")
    assert len([p for p in outputs if p.endswith(".csv")]) >= 9, outputs.keys()
    assert outputs == files(pvc_batch / "exp-outputs"), "fetched exactly what the runs wrote"
    assert_only_sierra_outputs(batch_root)
    for exp in EXPERIMENTS:
        assert (batch_root / "statistics" / exp / "motion.mean").exists(), "stage 3 ran here"
        assert list((batch_root / "graphs" / exp).glob("*.html")), f"stage 4 graphs of {exp}"

    obj = kube.batch("research", NAME)
    assert obj is not None
    spec = obj["spec"]
    assert spec["commandsFile"] == str(BATCH / "commands.txt")
    assert spec["sierraRoot"] == {"claimName": "sierra-root", "mountPath": str(root.resolve())}
    assert spec["execution"]["parallelism"] == 2
    assert spec["image"] == {"repository": "localhost:5001/sierra", "tag": "test"}

    # Stage 2 again: a Succeeded batch is not run twice; --exec-resume fetches its outputs.
    again = stage2_in_cluster(
        kube, workers, cluster, root, "research", stages=("2",), new_batch=False
    )
    assert again.returncode == 2, again.stdout
    assert f"SierraBatch research/{NAME} already Succeeded: pass --exec-resume" in again.stdout
    shutil.rmtree(batch_root / "exp-outputs")
    again = stage2_in_cluster(
        kube, workers, cluster, root, "research", "--exec-resume", stages=("2",), new_batch=False
    )
    assert again.returncode == 0, again.stdout
    assert "exists (Succeeded): following it" in again.stdout
    assert "pushing" not in again.stdout
    assert files(batch_root / "exp-outputs") == outputs
    pods = kube.get("/api/v1/namespaces/research/pods") or {}
    assert not [
        p
        for p in pods.get("items", [])
        if p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "transfer"
    ], "transfer pods deleted"


def test_a_failed_run_fails_stage2_naming_it(
    kube: KubeAPI,
    workers: Workers,
    cluster: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "root"
    batch_root = stage1(root)
    # The run pods get this machine's environment (the job runner's "image"): fail one run.
    monkeypatch.setenv("TINYSIM_FAIL", "c1-exp1/template_run1.json")
    proc = stage2_in_cluster(kube, workers, cluster, root, "fails")
    assert proc.returncode == 1, proc.stdout
    assert f"stage 2 failed: SierraBatch fails/{NAME} 1 of 9 run(s) failed" in proc.stdout
    assert re.search(r"c1-exp1/run1 \(attempt 1\): exited 3", proc.stdout), proc.stdout
    assert f"sierra-operator logs {NAME}" in proc.stdout
    assert not (batch_root / "statistics" / "c1-exp0").exists(), "SIERRA stopped before stage 3"
    assert not (batch_root / "exp-outputs").exists() or not any(
        (batch_root / "exp-outputs").rglob("*_output")
    ), "nothing fetched from a failed batch"

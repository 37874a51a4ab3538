"""`sierra-operator status` as a researcher runs it: a subprocess with only a kubeconfig,
against the emulated API server (tests/kube_api.py); no operator, no Prefect. The status is
written the way the operator writes it (merge patch of the status subresource)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.cluster import BATCHES, REPO, KubeAPI, batch_doc

pytestmark = pytest.mark.integration
NAMESPACES = ["research", "other"]


def status_cmd(
    kube: KubeAPI, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=str(kubeconfig or kube.kubeconfig), COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "sierra_operator.cli", "status", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def patch_status(kube: KubeAPI, namespace: str, name: str, status: dict[str, Any]) -> None:
    with kube.http() as http:
        http.patch(
            f"{BATCHES}/namespaces/{namespace}/sierrabatches/{name}/status",
            json={"status": status},
            headers={"content-type": "application/merge-patch+json"},
        ).raise_for_status()


FAILED_STATUS: dict[str, Any] = {
    "phase": "Failed",
    "message": "1 of 4 run(s) failed [/x] [bold]",
    "runs": {"total": 4, "succeeded": 3, "failed": 1, "running": 0, "pending": 0},
    "experiments": [
        {"name": "c1-exp0", "phase": "Succeeded", "total": 2, "succeeded": 2},
        {"name": "c1-exp1", "phase": "Failed", "total": 2, "succeeded": 1, "failed": 1},
    ],
    "failedRuns": [
        {
            "experiment": "c1-exp1",
            "run": 1,
            "attempt": 2,
            "reason": "exited 3; stderr ends: boom",
            "log": "/data/root/scratch/sierra-operator/c1-exp1/run1.stderr",
        }
    ],
}


def test_status_of_a_failed_batch(kube: KubeAPI, tmp_module: Path) -> None:
    kube.create_batch("research", batch_doc("failing", tmp_module, [["true"] * 2] * 2))
    patch_status(kube, "research", "failing", FAILED_STATUS)
    done = status_cmd(kube, "failing", "-n", "research")
    assert done.returncode == 1, done
    out = done.stdout
    assert "SierraBatch research/failing" in out
    assert "phase: Failed" in out
    assert "message: 1 of 4 run(s) failed [/x] [bold]" in out  # never read as markup
    assert "runs done: 4/4" in out
    assert re.search(r"^c1-exp1 +Failed +2 +1 +1 +0 +0$", out, re.MULTILINE), out
    assert "c1-exp1/run1 (attempt 2): exited 3; stderr ends: boom" in out
    assert "stderr: /data/root/scratch/sierra-operator/c1-exp1/run1.stderr" in out


def test_running_batch_exits_0_and_namespace_comes_from_the_context(
    kube: KubeAPI, tmp_module: Path
) -> None:
    kube.create_batch("other", batch_doc("going", tmp_module, [["true"] * 3]))
    patch_status(
        kube,
        "other",
        "going",
        {
            "phase": "Running",
            "runs": {"total": 30, "succeeded": 5, "failed": 22, "running": 3},
            "failedRuns": [
                {"experiment": "c1-exp0", "run": i, "reason": f"exited {i}"} for i in range(20)
            ],
        },
    )
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["contexts"][0]["context"]["namespace"] = "other"
    kubeconfig = tmp_module / "kubeconfig-other"
    kubeconfig.write_text(yaml.safe_dump(config))
    done = status_cmd(kube, "going", kubeconfig=kubeconfig)
    assert done.returncode == 0, done
    assert "phase: Running" in done.stdout
    assert "runs done: 27/30" in done.stdout
    assert "... and 2 more" in done.stdout


def test_watch_follows_the_batch_until_it_ends(kube: KubeAPI, tmp_module: Path) -> None:
    kube.create_batch("research", batch_doc("ended", tmp_module, [["true"]]))
    patch_status(kube, "research", "ended", {"phase": "Running", "runs": {"total": 1}})
    env = dict(os.environ, KUBECONFIG=str(kube.kubeconfig))
    argv = [sys.executable, "-m", "sierra_operator.cli", "status", "ended", "-n", "research"]
    with subprocess.Popen(
        [*argv, "--watch"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Running  runs 0/1")
        patch_status(kube, "research", "ended", {"phase": "Succeeded", "runs": {"succeeded": 1}})
        out = proc.stdout.read()
        assert proc.wait(timeout=30) == 0
    assert "phase: Succeeded" in out
    assert "runs done: 1/1" in out


def test_missing_batch_is_exit_2(kube: KubeAPI) -> None:
    done = status_cmd(kube, "nope", "-n", "research")
    assert done.returncode == 2, done
    assert "SierraBatch nope not found in namespace research" in done.stderr


def test_unreachable_api_server_and_no_kubeconfig_are_exit_3(
    kube: KubeAPI, tmp_module: Path
) -> None:
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # discard: refused
    dead = tmp_module / "kubeconfig-dead"
    dead.write_text(yaml.safe_dump(config))
    done = status_cmd(kube, "failing", "-n", "research", kubeconfig=dead)
    assert done.returncode == 3, done
    assert "cannot reach the Kubernetes API server at http://127.0.0.1:9" in done.stderr
    done = status_cmd(kube, "failing", kubeconfig=tmp_module / "no-such-kubeconfig")
    assert done.returncode == 3, done
    assert "no usable kubeconfig" in done.stderr
    assert "Traceback" not in done.stderr

"""The whole thing on a real kind cluster: what a user does after `git clone`.

`make kind-up image kind-load deploy` (cluster from kind-config.yaml, local registry, the
operator image built and pushed, the chart installed and `helm test`ed), then the minimal
example: it must reach Succeeded, leave its files on the shared sierra-root, and on delete
leave nothing behind but its data. Needs a Docker engine; skipped (saying so) without one.
`SIERRA_E2E_KEEP=1` keeps the cluster afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_ROOT = Path("/tmp/sierra-kind-root")
NAMESPACE = "sierra-system"


def _docker_engine() -> str | None:
    """Why the engine is unusable, or None if it answers."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    return None if info.returncode == 0 else f"no Docker engine: {info.stderr.strip()[:200]}"


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(_docker_engine()), reason=f"kind needs Docker ({_docker_engine()})"),
]


def sh(*args: str, timeout: float = 600) -> str:
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(args)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"
    )
    return out.stdout


def kubectl(*args: str) -> str:
    return sh(os.environ.get("KUBECTL", "kubectl"), *args)


def wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    sh("make", "kind-up", "image", "kind-load", "deploy", timeout=1800)
    yield
    if not os.environ.get("SIERRA_E2E_KEEP"):
        sh("make", "kind-down")


def batch(name: str) -> dict | None:
    out = subprocess.run(
        ["kubectl", "get", "sierrabatch", name, "-o", "json"], capture_output=True, text=True
    )
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_minimal_example_runs_to_success_and_cleans_up(cluster: None) -> None:
    kubectl("apply", "-f", "examples/minimal.yaml")
    wait(
        lambda: (batch("minimal") or {}).get("status", {}).get("phase") in ("Succeeded", "Failed"),
        900,
        "the minimal batch to finish",
    )
    obj = batch("minimal")
    assert obj is not None and obj["status"]["phase"] == "Succeeded", json.dumps(obj["status"])
    assert obj["status"]["runs"]["succeeded"] == 4
    for exp, robots in (("c1-exp0", 2), ("c1-exp1", 4)):
        for run, seed in ((0, 1), (1, 2)):
            result = SHARED_ROOT / "minimal" / "exp-outputs" / exp / f"run{run}" / "result.txt"
            assert result.read_text().strip() == f"robots={robots} seed={seed}"
    pool = obj["status"]["workPool"]

    kubectl("delete", "sierrabatch", "minimal", "--timeout=180s")
    wait(
        lambda: (
            subprocess.run(
                ["kubectl", "get", "deployment", "minimal-worker"], capture_output=True
            ).returncode
            != 0
        ),
        180,
        "the worker Deployment to be garbage-collected",
    )
    kubectl("get", "pvc", "sierra-root")  # adopted claim: never deleted with the batch
    assert (SHARED_ROOT / "minimal" / "exp-outputs").exists(), "data outlives the batch"
    check = (
        "import asyncio, os, sys\n"
        "from prefect.client.orchestration import PrefectClient\n"
        "async def main():\n"
        "    async with PrefectClient(api=os.environ['SIERRA_OPERATOR_PREFECT_API_URL']) as c:\n"
        "        pools = {p.name for p in await c.read_work_pools()}\n"
        f"    sys.exit(1 if {pool!r} in pools else 0)\n"
        "asyncio.run(main())\n"
    )
    kubectl("-n", NAMESPACE, "exec", "deploy/sierra-operator", "--", "python", "-c", check)

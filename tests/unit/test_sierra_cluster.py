"""The ``sierraop.cluster`` plugin's own logic: SIERRA's options -> the SierraBatch it
creates, and a Failed batch -> stage 2's message (tests/integration/test_sierra_cluster.py
runs the whole thing with the real SIERRA)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sierra_operator.core.model import SpecError, parse_batch
from sierra_operator.researcher.kubeconfig import ClusterError, Connection
from sierra_operator.sierra import cluster_stage2
from sierra_operator.sierra.cluster_stage2 import (
    ClusterOptions,
    cluster_document,
    failed_batch_message,
    image_spec,
    other_batch,
)
from sierra_operator.sierra.execenv import Stage2Failed, Stage2Options, plugin_path

pytestmark = pytest.mark.unit


def test_plugin_directory_is_what_sierra_looks_for() -> None:
    cluster = plugin_path() / "sierraop" / "cluster"
    assert (cluster / ".sierraplugin").is_file()
    assert (cluster / "plugin.py").is_file() and (cluster / "cmdline.py").is_file()
    assert "def sierra_plugin_type" in (cluster / "__init__.py").read_text()


def test_options_from_sierra_cmdopts() -> None:
    opts = ClusterOptions.from_cmdopts(
        {
            "exec_jobs_per_node": 4,
            "exec_strict": True,
            "exec_retries": 1,
            "sierraop_image": "reg:5000/sim:v2",
            "sierraop_namespace": "lab",
            "sierraop_kube_context": "kind",
            "sierraop_prefect_api_url": "http://prefect:4200/api",
            "sierraop_runs_per_pod": 4,
        }
    )
    assert opts.stage2.parallelism == 4 and opts.stage2.strict and opts.stage2.retries == 1
    assert opts.runs_per_pod == 4
    assert (opts.image, opts.claim, opts.namespace, opts.context) == (
        "reg:5000/sim:v2",
        "sierra-root",
        "lab",
        "kind",
    )


def test_the_batch_document_is_valid_and_mounts_the_claim_at_sierra_root() -> None:
    opts = ClusterOptions(
        Stage2Options(parallelism=3, retries=2),
        image="localhost:5001/sim:test",
        claim="shared",
        prefect_api_url="http://prefect:4200/api",
    )
    doc = cluster_document("b", "p/c/s/t/commands.txt", Path("/data/root"), opts)
    batch = parse_batch(doc)
    spec = batch.spec
    assert spec.commands_file == "p/c/s/t/commands.txt"
    assert (spec.sierra_root.claim_name, spec.sierra_root.mount_path) == ("shared", "/data/root")
    assert spec.image is not None
    assert (spec.image.repository, spec.image.tag) == ("localhost:5001/sim", "test")
    assert spec.execution.parallelism == 3 and spec.execution.retries == 2
    assert doc["spec"]["prefect"]["apiUrl"] == "http://prefect:4200/api"
    assert spec.execution.runs_per_pod == 1 and "runsPerPod" not in doc["spec"]["execution"]


@pytest.mark.parametrize(("given", "valid"), [(5, True), (0, False), (101, False)])
def test_runs_per_pod_reaches_the_batch_and_the_model_checks_it(given: int, valid: bool) -> None:
    """--runs-per-pod becomes execution.runsPerPod; out of range, the model (as the CRD)
    refuses the document, so stage 2 never creates a batch the API server would reject."""
    opts = ClusterOptions(Stage2Options(parallelism=2), image="reg/sim:v1", runs_per_pod=given)
    doc = cluster_document("b", "p/c/s/t/commands.txt", Path("/data/root"), opts)
    assert doc["spec"]["execution"]["runsPerPod"] == given
    if valid:
        assert parse_batch(doc).spec.execution.runs_per_pod == given
    else:
        with pytest.raises(SpecError, match="runsPerPod"):
            parse_batch(doc)


@pytest.mark.parametrize("bad", ["localhost:5001/sim", "sim", ":tag", "a/b:c/d"])
def test_an_image_without_tag_is_refused(bad: str) -> None:
    with pytest.raises(Stage2Failed, match="repository:tag"):
        image_spec(bad)


def test_a_failed_batch_names_its_failed_runs() -> None:
    obj = {
        "status": {
            "phase": "Failed",
            "runs": {"total": 9, "succeeded": 8, "failed": 1},
            "failedRuns": [
                {
                    "experiment": "c1-exp1",
                    "run": 1,
                    "attempt": 2,
                    "reason": "exited 3; stderr ends: boom",
                    "log": "/r/b/scratch/sierra-operator/c1-exp1/run1.stderr",
                }
            ],
        }
    }
    text = failed_batch_message(obj, "b", "lab")
    assert "SierraBatch lab/b 1 of 9 run(s) failed" in text
    assert "c1-exp1/run1 (attempt 2): exited 3; stderr ends: boom" in text
    assert "sierra-operator logs b EXPERIMENT RUN -n lab" in text
    assert "the batch Failed" in failed_batch_message({"status": {"phase": "Failed"}}, "b", "l")


def test_a_batch_of_the_same_name_for_another_sierra_batch_is_not_followed() -> None:
    opts = ClusterOptions(Stage2Options(parallelism=1), image="r/s:t")
    doc = cluster_document("b", "p/c/s/template-x/commands.txt", Path("/root"), opts)
    assert other_batch({"spec": dict(doc["spec"])}, doc) is None
    elsewhere = {**doc["spec"], "commandsFile": "q/c/s/template-x/commands.txt"}
    problem = other_batch({"metadata": {"name": "b"}, "spec": elsewhere}, doc)
    assert problem is not None and "exists for another batch (commandsFile" in problem
    moved = {**doc["spec"], "sierraRoot": {"claimName": "sierra-root", "mountPath": "/other"}}
    assert other_batch({"spec": moved}, doc) is not None
    defaulted = {**doc["spec"], "sierraRoot": {**doc["spec"]["sierraRoot"], "size": "10Gi"}}
    assert other_batch({"spec": defaulted}, doc) is None, "CRD defaults are no difference"


class FlakyReads:
    """``read_with`` replaced (the emulated API server cannot fail a read on demand): the
    first ``failures`` reads raise ``error``, then the batch reads as Succeeded."""

    def __init__(self, failures: int, error: ClusterError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self, conn: Connection, name: str) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return {"status": {"phase": "Succeeded", "runs": {"total": 1, "succeeded": 1}}}


def _follow(monkeypatch: pytest.MonkeyPatch, reads: FlakyReads, retry: float) -> list[str]:
    monkeypatch.setattr(cluster_stage2, "read_with", reads)
    monkeypatch.setattr(cluster_stage2, "_first_retry_delay", 0.01)
    opts = ClusterOptions(Stage2Options(parallelism=1), image="r/s:t", read_retry_seconds=retry)
    notes: list[str] = []
    asyncio.run(cluster_stage2.follow(Connection(None, "lab"), "b", opts, notes.append))
    return notes


def test_following_rides_out_transient_read_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    blip = ClusterError("the Kubernetes API server answered 503", 3, transient=True)
    notes = _follow(monkeypatch, FlakyReads(3, blip), retry=60)
    assert "retrying" in notes[0] and "Succeeded" in notes[-1]


def test_following_gives_up_after_the_retry_window_saying_the_batch_runs_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blip = ClusterError("cannot reach the Kubernetes API server", 3, transient=True)
    with pytest.raises(ClusterError, match="the batch keeps running in the cluster") as raised:
        _follow(monkeypatch, FlakyReads(10**6, blip), retry=0.1)
    assert raised.value.exit_code == 3 and "SierraBatch lab/b" in str(raised.value)
    forbidden = ClusterError("forbidden: your user cannot get sierrabatches", 3)
    reads = FlakyReads(1, forbidden)
    with pytest.raises(ClusterError, match="forbidden"):
        _follow(monkeypatch, reads, retry=60)
    assert reads.calls == 1  # not transient: no retry


@pytest.mark.parametrize("execenv", ["sierraop.local", "sierraop.cluster"])
def test_a_sierra_without_sierra_operator_says_what_to_install(execenv: str) -> None:
    """Loaded as SIERRA loads it (plugin directory on sys.path, the file by its path) in a
    Python where sierra_operator cannot be imported: selecting the plugin logs one line and
    exits 2, both plugins alike."""
    plugin = plugin_path() / execenv.replace(".", "/") / "plugin.py"
    script = f"""
import importlib.util, logging, sys
sys.modules["sierra_operator"] = None  # what a Python without it does on import
sys.path.insert(0, {str(plugin_path())!r})
logging.basicConfig(format="%(levelname)s %(message)s")
spec = importlib.util.spec_from_file_location("plugin", {str(plugin)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.execenv_check(None)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done
    assert f"ERROR --execenv={execenv} needs sierra-operator in the Python" in done.stderr

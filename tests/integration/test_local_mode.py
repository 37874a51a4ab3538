"""`sierra-operator local` end to end: real CLI process, real Prefect server and process workers,
real commands writing real files under a temporary sierra-root. Nothing is mocked."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.helpers import (
    assert_only_sierra_outputs,
    events,
    intervals,
    local_cmd,
    max_overlap,
    probe,
    run_local,
    start_local,
    status,
    write_batch,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_three_experiments_serial_runs_parallel_bounded(tmp_path, prefect_api_url):
    batch = write_batch(
        tmp_path / "b.yaml", "serial", [[probe(1.0)] * 4 for _ in range(3)], parallelism=2
    )
    root = tmp_path / "root"
    proc = run_local(batch, root, prefect_api_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broot = root / "serial"
    for e in range(3):
        for k in range(4):
            assert (broot / f"exp-outputs/c1-exp{e}/run{k}/result.json").exists()
            out = (broot / f"scratch/sierra-operator/c1-exp{e}/run{k}.stdout").read_text()
            assert f"probe c1-exp{e}/run{k} says hello" in out
    spans = intervals(events(broot))
    assert len(spans) == 12, "every run executed exactly once"
    for e in range(2):
        this_end = max(end for (x, _, _), (_, end) in spans.items() if x == f"c1-exp{e}")
        next_start = min(s for (x, _, _), (s, _) in spans.items() if x == f"c1-exp{e + 1}")
        assert this_end <= next_start, f"c1-exp{e} overlapped c1-exp{e + 1}"
    assert max_overlap(list(spans.values())) == 2, "parallelism 2: runs overlap, never 3"
    st = status(broot)
    assert st["phase"] == "Succeeded"
    assert st["runs"] == {"total": 12, "succeeded": 12, "failed": 0, "running": 0, "pending": 0}
    assert [e["phase"] for e in st["experiments"]] == ["Succeeded"] * 3
    assert "Batch Succeeded" in proc.stdout
    states = _flow_run_states(prefect_api_url, broot)
    assert states == ["COMPLETED"] * 3, "one flow run per experiment, each ended cleanly"


def _flow_runs(api_url: str, batch_root: Path) -> list:
    """The batch's flow runs on the test session's server, oldest first."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> list:
        async with PrefectClient(api=api_url) as client:
            runs = await client.read_flow_runs(limit=200, sort=FlowRunSort.EXPECTED_START_TIME_ASC)
            return [r for r in runs if r.parameters.get("batch_root") == str(batch_root)]

    return asyncio.run(read())


def _flow_run_states(api_url: str, batch_root: Path) -> list[str]:
    return [r.state.type.value for r in _flow_runs(api_url, batch_root) if r.state is not None]


def test_the_next_experiment_starts_early_and_waits_at_its_gate(tmp_path, prefect_api_url):
    """Prefetch: the next experiment's flow run is Running before the current experiment's
    last run ends (Prefect's start overlaps with it), yet none of its runs starts before
    then (the gate holds it until the state machine submits that wave)."""
    batch = write_batch(
        tmp_path / "b.yaml", "prefetch", [[probe(2.0)] * 2, [probe(0.2)] * 2], parallelism=2
    )
    root = tmp_path / "root"
    proc = run_local(batch, root, prefect_api_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broot = root / "prefetch"
    spans = intervals(events(broot))
    first_end = max(end for (x, _, _), (_, end) in spans.items() if x == "c1-exp0")
    second_start = min(s for (x, _, _), (s, _) in spans.items() if x == "c1-exp1")
    assert first_end <= second_start, "the gate held c1-exp1 until c1-exp0 had ended"
    runs = {r.parameters["experiment"]: r for r in _flow_runs(prefect_api_url, broot)}
    assert sorted(runs) == ["c1-exp0", "c1-exp1"], "one flow run per experiment, none extra"
    assert runs["c1-exp1"].start_time.timestamp() < first_end, "c1-exp1 was started early"
    assert [r.state.type.value for r in runs.values()] == ["COMPLETED"] * 2
    assert status(broot)["runs"]["succeeded"] == 4


def test_a_prepared_experiment_is_withdrawn_when_stop_batch_stops(tmp_path, prefect_api_url):
    """The next experiment was prepared while a run that fails was still executing:
    StopBatch then withdraws it. It ends Cancelled, runs nothing, and its runs are reported
    as never started (pending), not as failed attempts."""
    batch = write_batch(
        tmp_path / "b.yaml",
        "withdrawn",
        [[probe(3.0, fail=True), probe(0.2)], [probe(0.1)]],
        retries=0,
        failurePolicy="StopBatch",
    )
    root = tmp_path / "root"
    proc = run_local(batch, root, prefect_api_url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    broot = root / "withdrawn"
    assert not [e for e in events(broot) if e.experiment == "c1-exp1"], "nothing of c1-exp1 ran"
    runs = {r.parameters["experiment"]: r for r in _flow_runs(prefect_api_url, broot)}
    assert "c1-exp1" in runs, "c1-exp1 was prepared while c1-exp0/run0 executed"
    assert runs["c1-exp1"].state.type.value == "CANCELLED"
    assert "withdrawn" in runs["c1-exp1"].state.message
    st = status(broot)
    assert st["phase"] == "Failed"
    assert st["runs"] == {"total": 3, "succeeded": 1, "failed": 1, "running": 0, "pending": 1}
    assert not (broot / "scratch/sierra-operator/c1-exp1").exists(), "no record, no claim"


def _prefect_logs(api_url: str) -> str:
    from prefect.client.orchestration import PrefectClient

    async def read() -> str:
        # Every log of the session's server (other tests' too), page by page.
        messages: list[str] = []
        async with PrefectClient(api=api_url) as client:
            while True:
                page = await client.read_logs(limit=200, offset=len(messages))
                messages += [log.message for log in page]
                if len(page) < 200:
                    return "\n".join(messages)

    return asyncio.run(read())


def test_failing_run_stop_batch(tmp_path, prefect_api_url):
    batch = write_batch(
        tmp_path / "b.yaml",
        "stopper",
        [[probe(0.1), probe(0.1, fail=True)], [probe(0.1)]],
        retries=1,
        failurePolicy="StopBatch",
    )
    root = tmp_path / "root"
    proc = run_local(batch, root, prefect_api_url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed runs: c1-exp0/run1" in proc.stdout
    broot = root / "stopper"
    evs = events(broot)
    attempts = sorted(
        e.attempt for e in evs if e.kind == "end" and (e.experiment, e.run) == ("c1-exp0", 1)
    )
    assert attempts == [1, 2], "retries: 1 -> two attempts"
    assert not [e for e in evs if e.experiment == "c1-exp1"], "StopBatch: c1-exp1 never starts"
    st = status(broot)
    assert st["phase"] == "Failed"
    assert "c1-exp0/run1" in st["message"]
    stderr = (broot / "scratch/sierra-operator/c1-exp0/run1.stderr").read_text()
    assert "probe failing on purpose" in stderr
    # The reason is where a user looks first: the summary and status.json, not only a file.
    assert "c1-exp0/run1 (attempt 2): exited 3; stderr ends: probe failing on purpose [full" in (
        proc.stdout
    )
    (failed,) = st["failedRuns"]
    assert failed["reason"] == "exited 3; stderr ends: probe failing on purpose"
    assert failed["attempt"] == 2
    assert failed["log"] == str(broot / "scratch/sierra-operator/c1-exp0/run1.stderr")
    assert "probe failing on purpose" in _prefect_logs(prefect_api_url), "stderr in Prefect logs"


def test_failing_run_continue_and_timeout(tmp_path, prefect_api_url):
    batch = write_batch(
        tmp_path / "b.yaml",
        "goer",
        [[probe(0.1, fail=True), probe(0.1)], [probe(60), probe(0.1)]],
        retries=0,
        failurePolicy="Continue",
        runTimeoutSeconds=3,
    )
    root = tmp_path / "root"
    started = time.monotonic()
    proc = run_local(batch, root, prefect_api_url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.monotonic() - started < 55, "the 60 s run was stopped by runTimeoutSeconds"
    assert "failed runs: c1-exp0/run0, c1-exp1/run0" in proc.stdout
    broot = root / "goer"
    assert (broot / "exp-outputs/c1-exp1/run1/result.json").exists(), "Continue ran c1-exp1"
    st = status(broot)
    assert st["phase"] == "Failed"
    assert st["runs"]["succeeded"] == 2 and st["runs"]["failed"] == 2


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_interrupt_then_resume_reruns_nothing_that_succeeded(tmp_path, prefect_api_url):
    batch = write_batch(
        tmp_path / "b.yaml",
        "resumer",
        [[probe(0.2)] * 3, [probe(4.0)] * 3, [probe(0.2)] * 2],
        parallelism=3,
    )
    root = tmp_path / "root"
    broot = root / "resumer"
    proc = start_local(batch, root, prefect_api_url)
    try:
        _wait_for(
            lambda: any(e.kind == "start" and e.experiment == "c1-exp1" for e in events(broot)),
            180,
            "c1-exp1 to start",
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert status(broot)["phase"] == "Interrupted"
    first = intervals(events(broot))
    assert {(e, r) for e, r, _ in first if e == "c1-exp0"} == {("c1-exp0", k) for k in range(3)}
    assert not any(e == "c1-exp1" for e, _, _ in first), "the 4 s runs were cancelled mid-way"
    time.sleep(1)
    leftover = subprocess.run(["pgrep", "-f", "probe.py 4.0"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "no run process survives the interrupt"

    again = run_local(batch, root, prefect_api_url, "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 run(s) already succeeded, not re-run" in again.stdout
    ends = [(e.experiment, e.run) for e in events(broot) if e.kind == "end" and e.code == 0]
    assert sorted(ends) == sorted(set(ends)), "no run succeeded twice"
    assert len(ends) == 8, "every run succeeded exactly once across both invocations"
    assert status(broot)["phase"] == "Succeeded"


def test_existing_pool_is_never_clobbered(tmp_path, prefect_api_url):
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate

    async def make_and_read(create: bool) -> str | None:
        async with PrefectClient(api=prefect_api_url) as client:
            if create:
                await client.create_work_pool(
                    WorkPoolCreate(name="someone-elses", type="process", description="theirs")
                )
            return (await client.read_work_pool("someone-elses")).description

    asyncio.run(make_and_read(True))
    batch = write_batch(tmp_path / "b.yaml", "polite", [[probe(0.1)]])
    cmd = [
        *local_cmd(batch, tmp_path / "root", None),
        "--prefect-api-url",
        prefect_api_url,
        "--pool",
        "someone-elses",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "work pool 'someone-elses' already exists" in " ".join(proc.stdout.split())
    assert asyncio.run(make_and_read(False)) == "theirs"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_bundled_example_with_its_own_server(tmp_path):
    """The README's first command: own server on a free port, private PREFECT_HOME."""
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    root = tmp_path / "sierra-root"
    proc = subprocess.run(
        local_cmd(REPO / "examples" / "batch.yaml", root, None),
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = sorted(root.glob("foraging-demo/exp-outputs/*/run*/result.json"))
    assert len(outputs) == 12
    port = int(proc.stdout.split("http://127.0.0.1:")[1].split("/")[0])
    assert not _port_open(port), "the server local mode started is stopped"
    assert not (tmp_path / "home" / ".prefect").exists(), "the user's Prefect profile is untouched"
    home = proc.stdout.split("PREFECT_HOME=")[1].split(")")[0]
    assert not Path(home).exists(), "the private PREFECT_HOME is removed"


def test_sierra_batch_leaves_only_what_sierra_expects(tmp_path, prefect_api_url):
    """A SIERRA stage-1 layout (exp-inputs/<exp>/commands.txt): runs get no directory of
    ours under exp-outputs/ (SIERRA's stage 3 rejects any entry it did not expect), and
    --resume still trusts the records under scratch/."""
    root = tmp_path / "root"
    batch_dir = root / "proj" / "batch"
    for exp in ("c1-exp0", "c1-exp1"):
        (batch_dir / "exp-inputs" / exp).mkdir(parents=True)
        (batch_dir / "exp-inputs" / exp / "commands.txt").write_text(
            "\n".join([probe(0.1)] * 2) + "\n"
        )
    batch = tmp_path / "sierra.yaml"
    batch.write_text(
        "apiVersion: sierra.research.io/v1alpha1\nkind: SierraBatch\n"
        "metadata: {name: sierra}\nspec:\n  commandsFile: proj/batch\n"
    )
    proc = run_local(batch, root, prefect_api_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_only_sierra_outputs(batch_dir)
    assert len(intervals(events(batch_dir))) == 4
    again = run_local(batch, root, prefect_api_url, "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(intervals(events(batch_dir))) == 4, "--resume re-ran nothing"


def test_a_flow_run_cancelled_in_prefect_stops_its_runs(tmp_path, prefect_api_url):
    """Cancelling a flow run in Prefect (the UI's button, `prefect flow-run cancel`: its
    state becomes Cancelling) stops its run commands within seconds, as a worker would; the
    flow run ends Cancelled and its runs count as failed attempts, named in the summary."""
    from prefect.client.orchestration import PrefectClient
    from prefect.states import Cancelling

    batch = write_batch(tmp_path / "b.yaml", "cancelled", [[probe(120.0), probe(0.1)]], retries=0)
    root = tmp_path / "root"
    broot = root / "cancelled"
    proc = start_local(batch, root, prefect_api_url)
    try:
        _wait_for(
            lambda: any(e.kind == "end" and e.run == 1 for e in events(broot)),
            180,
            "the short run to end while the long one executes",
        )
        (flow_run,) = _flow_runs(prefect_api_url, broot)

        async def cancel() -> None:
            async with PrefectClient(api=prefect_api_url) as client:
                await client.set_flow_run_state(flow_run.id, Cancelling(), force=True)

        asked = time.monotonic()
        asyncio.run(cancel())
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - asked < 30, "stopped within seconds, not after the 120 s run"
    assert proc.returncode == 1, out
    assert "failed runs: c1-exp0/run0" in out
    assert not [e for e in events(broot) if e.kind == "end" and e.run == 0], "run0 was killed"
    (flow_run,) = _flow_runs(prefect_api_url, broot)
    assert flow_run.state.type.value == "CANCELLED"
    st = status(broot)
    assert st["runs"]["succeeded"] == 1 and st["runs"]["failed"] == 1

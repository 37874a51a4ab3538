"""SIERRA's stage 2 handed to us, with the real ``sierra`` command (sierra-research 1.5.16).

Every test drives SIERRA as a researcher does: stage 1 generates a batch of 3 experiments x 3
runs with a tiny engine of ours (tests/sierra_project: engine ``sotest.tinysim``, project
``sotest.tinyproj``), stage 2 runs it with ``--execenv=sierraop.local`` (the plugin shipped in
the package, on the session's Prefect server through its ``--prefect-api-url``), stages 3
and 4 process what the runs wrote. Nothing is mocked.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from sierra_operator.sierra.execenv import plugin_path
from tests.integration.helpers import assert_only_sierra_outputs, require, status

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "tests" / "sierra_project"
SIERRA = Path(sys.executable).with_name("sierra")
BATCH = Path("sotest.tinyproj/default.default/flat/template-speed.1.3.C3")
EXPERIMENTS = ["c1-exp0", "c1-exp1", "c1-exp2"]


@pytest.fixture(autouse=True)
def _tools() -> None:
    require("sierra-research (the dev extra)", SIERRA.exists())
    require(
        "GNU parallel (apt-get install parallel), for SIERRA's hpc.local",
        bool(shutil.which("parallel")),
    )


def sierra(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
    """``sierra`` on the tiny project, as a researcher types it; returns the CompletedProcess
    with stdout and stderr in one text."""
    return subprocess.run(
        _sierra_cmd(root, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=_env(env),
    )


def _sierra_cmd(root: Path, *args: str) -> list[str]:
    return [
        str(SIERRA),
        *("--project", "sotest.tinyproj", "--engine", "sotest.tinysim"),
        *("--expdef", "expdef.json", "--expdef-template", str(PROJECT / "template.json")),
        *("--controller", "default.default", "--scenario", "flat"),
        *("--bc", "speed.1.3.C3", "--n-runs", "3", "--sierra-root", str(root)),
        # statistics with a spread; bokeh graphs (matplotlib's need LaTeX)
        *("--proc", "proc.statistics", "--spread", "conf95", "--graphs-backend", "bokeh"),
        *args,
    ]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["SIERRA_PLUGIN_PATH"] = f"{PROJECT}{os.pathsep}{plugin_path()}"
    env.update(extra or {})
    return env


def ours(api_url: str, *extra: str) -> tuple[str, ...]:
    """``--execenv=sierraop.local`` on the session's Prefect server, a pool of its own."""
    return (
        "--execenv",
        "sierraop.local",
        "--prefect-api-url",
        api_url,
        "--work-pool",
        f"test-{uuid.uuid4().hex[:8]}",
        *extra,
    )


def stage1(root: Path) -> Path:
    """Generate the batch; returns its batch root."""
    proc = sierra(root, "--pipeline", "1")
    assert proc.returncode == 0, proc.stdout
    batch_root = root / BATCH
    lines = (batch_root / "commands.txt").read_text().splitlines()
    assert len(lines) == 9 and all("exp-inputs/c1-exp" in line for line in lines)
    return batch_root


def files(top: Path, skip: str = "") -> dict[str, bytes]:
    """Every file under ``top`` (relative path -> content), but those under ``skip``."""
    return {
        str(p.relative_to(top)): p.read_bytes()
        for p in sorted(top.rglob("*"))
        if p.is_file() and not (skip and p.relative_to(top).parts[0] == skip)
    }


def executions(log: Path) -> list[tuple[int, str]]:
    """(pid, experiment/run) of each run tinysim started, from TINYSIM_LOG."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        pid, config = line.split(" ", 1)
        m = re.search(r"exp-inputs/([^/]+)/template_run(\d+)\.json$", config)
        assert m, config
        out.append((int(pid), f"{m.group(1)}/run{m.group(2)}"))
    return out


def test_stage2_then_3_and_4_give_the_statistics_of_hpc_local(tmp_path, prefect_api_url):
    root = tmp_path / "root"
    batch_root = stage1(root)

    # The reference: SIERRA's own GNU-parallel execution of the same batch, then 3 and 4.
    ref = sierra(
        root, "--pipeline", "2", "3", "4", "--execenv", "hpc.local", "--exec-jobs-per-node", "2"
    )
    assert ref.returncode == 0, ref.stdout
    ref_outputs = files(batch_root / "exp-outputs")
    ref_stats = files(batch_root / "statistics", skip="exec")
    assert len(ref_outputs) == 9
    assert {Path(p).parts[0] for p in ref_stats} == {*EXPERIMENTS, "inter-exp"}
    for leaf in ("exp-outputs", "statistics", "graphs", "scratch"):
        shutil.rmtree(batch_root / leaf)

    # The same batch through us: stages 2, 3 and 4 in one SIERRA invocation.
    proc = sierra(
        root, "--pipeline", "2", "3", "4", *ours(prefect_api_url, "--exec-jobs-per-node", "2")
    )
    assert proc.returncode == 0, proc.stdout
    assert "Batch Succeeded" in proc.stdout
    assert files(batch_root / "exp-outputs") == ref_outputs, "runs wrote the same outputs"
    assert files(batch_root / "statistics", skip="exec") == ref_stats, "stage 3/4 statistics"
    for exp in EXPERIMENTS:
        assert list((batch_root / "graphs" / exp).glob("*.html")), f"stage 4 graphs of {exp}"
    assert list((batch_root / "graphs" / "inter-exp").glob("*.html"))
    assert_only_sierra_outputs(batch_root)
    st = status(batch_root)
    assert st["phase"] == "Succeeded" and st["runs"]["succeeded"] == 9
    batch = yaml.safe_load((batch_root / "scratch/sierra-operator/sierra-stage2.yaml").read_text())
    assert batch["spec"]["commandsFile"] == str(BATCH / "commands.txt")
    assert batch["spec"]["execution"]["parallelism"] == 2, "--exec-jobs-per-node"


def test_a_failed_run_fails_stage2_naming_it_and_exec_resume_runs_only_the_rest(
    tmp_path, prefect_api_url
):
    root = tmp_path / "root"
    batch_root = stage1(root)
    log = tmp_path / "executions.log"
    env = {"TINYSIM_LOG": str(log), "TINYSIM_FAIL": "c1-exp1/template_run1.json"}

    proc = sierra(root, "--pipeline", "2", "3", *ours(prefect_api_url), env=env)
    assert proc.returncode == 1, proc.stdout
    assert "stage 2 failed: 1 of 9 run(s) failed:" in proc.stdout
    assert re.search(
        r"c1-exp1/run1 \(attempt 1\): exited 3; stderr ends: tinysim: injected failure", proc.stdout
    ), proc.stdout
    assert "--exec-resume" in proc.stdout
    assert not (batch_root / "statistics" / "c1-exp0").exists(), "SIERRA stopped before stage 3"
    first = executions(log)
    assert sorted(run for _, run in first) == sorted(
        f"{e}/run{k}" for e in EXPERIMENTS for k in range(3)
    ), "without --exec-strict every run is executed, as hpc.local does"

    del env["TINYSIM_FAIL"]
    proc = sierra(root, "--pipeline", "2", "3", "--exec-resume", *ours(prefect_api_url), env=env)
    assert proc.returncode == 0, proc.stdout
    assert [run for _, run in executions(log)[len(first) :]] == ["c1-exp1/run1"]
    for exp in EXPERIMENTS:
        assert (batch_root / "statistics" / exp / "motion.mean").exists()
    assert_only_sierra_outputs(batch_root)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _processes_naming(text: str) -> dict[int, str]:
    """pid -> command line of live processes (but this one) that mention ``text``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and _alive(int(proc.name)):
            found[int(proc.name)] = cmdline
    return found


def _kill_leftovers(*texts: str) -> None:
    """After a failed test: end the processes this test started (named by its temp paths
    and pool), by pid."""
    for text in texts:
        for pid in _processes_naming(text):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _terminal_like() -> None:
    """In the child: Ctrl-C as in a terminal, even if our own SIGINT is ignored (a
    background job of a non-interactive shell inherits an ignored SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_stage2_and_everything_it_started(tmp_path, prefect_api_url):
    root = tmp_path / "root"
    stage1(root)
    log = tmp_path / "executions.log"
    pool = f"test-{uuid.uuid4().hex[:8]}"
    args = ("--execenv", "sierraop.local", "--prefect-api-url", prefect_api_url)
    out = (tmp_path / "sierra.out").open("w")
    # Its own session, like a shell job: the terminal's Ctrl-C goes to the whole group.
    proc = subprocess.Popen(
        _sierra_cmd(root, "--pipeline", "2", "3", *args, "--work-pool", pool),
        stdout=out,
        stderr=subprocess.STDOUT,
        env=_env({"TINYSIM_LOG": str(log), "TINYSIM_SLEEP": "60"}),
        start_new_session=True,
        preexec_fn=_terminal_like,
    )
    try:
        deadline = time.monotonic() + 240
        while not executions(log) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "sierra.out").read_text()
            time.sleep(0.5)
        assert executions(log), "runs started"
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()
        leftovers = {**_processes_naming(str(root)), **_processes_naming(pool)}
        _kill_leftovers(str(root), pool)
    text = (tmp_path / "sierra.out").read_text()
    assert code == 130, text
    assert "stage 2 interrupted" in text and "--exec-resume" in text
    assert status(root / BATCH)["phase"] == "Interrupted"
    assert not any(_alive(pid) for pid, _ in executions(log)), "runs killed"
    assert not leftovers, f"nothing of the batch left running, workers stopped: {leftovers}"
    assert not (root / BATCH / "statistics" / "c1-exp0").exists(), "no stage 3"

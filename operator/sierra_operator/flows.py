"""The Prefect flow that executes experimental runs (runs inside worker processes or pods).

One flow run executes one *wave* of one experiment: its runs are Prefect task runs, each a
shell subprocess, at most ``parallelism`` at a time (a thread pool of that size: the bound
is real, not a label). One flow run per experiment rather than per run keeps Prefect's
per-flow-run cost (a fresh Python process importing prefect) off every run.

Each run writes stdout/stderr to files under the batch's scratch dir, sends their tails to
Prefect's logs and leaves a durable record (:mod:`sierra_operator.ledger`) that ``--resume``
trusts.

:func:`plan_batch` is the cluster's planning step: the operator cannot read the PVC, so a
flow run in a pod that mounts it reads ``spec.commandsFile`` and publishes the plan as an
artifact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

from sierra_operator import names
from sierra_operator.ledger import RunRecord, run_paths, write_record
from sierra_operator.loader import plan_from_commands_file
from sierra_operator.plan import PlannedRun, plan_to_json

LOG_TAIL_LINES = 200

_live: dict[int, subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()


class RunFailed(RuntimeError):
    """A run's command exited non-zero or timed out."""


def kill_live_runs() -> None:
    """Kill the process group of every run still executing (used when the flow is stopped)."""
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    with path.open(errors="replace") as fh:
        return "".join(deque(fh, maxlen=lines))


def run_environment(batch_root: Path, experiment: str, index: int, attempt: int) -> dict[str, str]:
    """Variables every run sees, so inline commands need not hard-code paths."""
    output = batch_root / "exp-outputs" / experiment / f"run{index}"
    output.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env.update(
        SIERRA_BATCH_ROOT=str(batch_root),
        SIERRA_EXPERIMENT=experiment,
        SIERRA_RUN=str(index),
        SIERRA_ATTEMPT=str(attempt),
        SIERRA_RUN_OUTPUT=str(output),
    )
    return env


@task(name=names.RUN_TASK_NAME, persist_result=False, retries=0)
def run_command(
    batch_root: str,
    workdir: str,
    experiment: str,
    index: int,
    command: str,
    attempt: int,
    timeout_seconds: int | None = None,
) -> int:
    """Execute one run's shell command; raise :class:`RunFailed` if it does not exit 0."""
    logger = get_run_logger()
    root = Path(batch_root)
    stdout_path, stderr_path, _ = run_paths(root, experiment, index)
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    env = run_environment(root, experiment, index, attempt)
    started = time.time()
    logger.info("%s/run%d attempt %d: %s", experiment, index, attempt, command)
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            command,
            shell=True,
            cwd=workdir,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,  # its own group: a timeout or cancel kills the whole tree
        )
        with _live_lock:
            _live[proc.pid] = proc
        try:
            code = proc.wait(timeout=timeout_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            timed_out = True
        finally:
            with _live_lock:
                _live.pop(proc.pid, None)
    finished = time.time()
    for label, path in (("stdout", stdout_path), ("stderr", stderr_path)):
        text = _tail(path)
        if text.strip():
            logger.info("%s/run%d %s (last lines):\n%s", experiment, index, label, text.rstrip())
    ok = code == 0 and not timed_out
    write_record(
        root,
        RunRecord(
            experiment=experiment,
            index=index,
            attempt=attempt,
            command_sha=PlannedRun(index, command).command_sha,
            exit_code=code,
            succeeded=ok,
            started_at=started,
            finished_at=finished,
        ),
    )
    if timed_out:
        raise RunFailed(
            f"{experiment}/run{index} timed out after {timeout_seconds}s "
            "(execution.runTimeoutSeconds); stderr: " + str(stderr_path)
        )
    if not ok:
        last = _tail(stderr_path, 5).strip()
        raise RunFailed(
            f"{experiment}/run{index} exited {code}; stderr: {stderr_path}"
            + (f"; last lines:\n{last}" if last else "")
        )
    return code


@flow(name=names.EXPERIMENT_FLOW_NAME, persist_result=False, log_prints=True)
def run_experiment(
    batch_id: str,
    batch_root: str,
    workdir: str,
    experiment: str,
    runs: list[dict[str, Any]],
    parallelism: int,
    timeout_seconds: int | None = None,
) -> dict[str, int]:
    """Execute one wave of an experiment: ``runs`` is a list of {index, command, attempt}."""
    futures: list[PrefectFuture[int]] = []
    runner: ThreadPoolTaskRunner[PrefectFuture[int]]
    with ThreadPoolTaskRunner(max_workers=parallelism) as runner:
        try:
            for run in runs:
                index, attempt = int(run["index"]), int(run["attempt"])
                configured = run_command.with_options(
                    task_run_name=names.run_task_run_name(experiment, index, attempt),
                    tags=[
                        names.batch_tag(batch_id),
                        names.experiment_tag(experiment),
                        names.run_tag(index),
                    ],
                )
                parameters = {
                    "batch_root": batch_root,
                    "workdir": workdir,
                    "experiment": experiment,
                    "index": index,
                    "command": run["command"],
                    "attempt": attempt,
                    "timeout_seconds": timeout_seconds,
                }
                # prefect's overloads of submit() only type async tasks
                futures.append(runner.submit(configured, parameters))  # type: ignore[arg-type]
            wait(futures)
        finally:
            # A cancelled or interrupted flow run must not leave run processes behind.
            kill_live_runs()
    states = {int(r["index"]): f.state for r, f in zip(runs, futures, strict=True)}
    failed = sorted(i for i, s in states.items() if not s.is_completed())
    if failed:
        raise RunFailed(
            f"{experiment}: run(s) {', '.join(map(str, failed))} failed; see their task runs"
        )
    return {"succeeded": len(states)}


@flow(name=names.PLAN_FLOW_NAME, log_prints=True)
def plan_batch(sierra_root: str, commands_file: str, batch_id: str, plan_key: str) -> str:
    """Read the SIERRA commands file(s) under the mounted sierra-root, publish the plan.

    Fails with the same message local mode gives (the missing path, the bad line), which the
    operator puts into the batch's ``Planned`` condition.
    """
    plan, batch_root = plan_from_commands_file(Path(sierra_root), commands_file)
    text = plan_to_json(plan, str(batch_root))
    create_markdown_artifact(
        key=names.plan_artifact_key(batch_id, plan_key),
        markdown=text,
        description=f"{len(plan.experiments)} experiments, {plan.total_runs} runs",
    )
    print(f"planned {len(plan.experiments)} experiments, {plan.total_runs} runs from {batch_root}")
    return text

"""The Prefect flow that executes experimental runs (runs inside worker processes or pods).

One flow run executes one *wave* of one experiment: its runs are Prefect task runs, each a
shell subprocess, at most ``parallelism`` at a time (a thread pool of that size: the bound
is real, not a label). One flow run per experiment rather than per run keeps Prefect's
per-flow-run cost (a fresh Python process importing prefect) off every run.

Each run writes stdout/stderr to files under the batch's scratch dir, sends their tails to
Prefect's logs and leaves a durable record (:mod:`sierra_operator.runs.ledger`) that ``--resume``
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
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled
from prefect.task_runners import ThreadPoolTaskRunner

from sierra_operator.core import names
from sierra_operator.core.plan import PlannedRun, plan_to_json
from sierra_operator.core.reasons import REASON_LINES, attempt_failure_reason
from sierra_operator.inputs.loader import plan_from_commands_file
from sierra_operator.runs.gate import wait_at_gate
from sierra_operator.runs.ledger import (
    AttemptRefused,
    RunRecord,
    claim_attempt,
    note_process,
    read_record,
    run_paths,
    stop_older,
    write_record,
)

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


def _kill_group(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL a run's process group (its shell and everything it started); its exit code."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is empty already
    return proc.wait()


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    with path.open(errors="replace") as fh:
        return "".join(deque(fh, maxlen=lines))


def run_environment(
    batch_root: Path, experiment: str, index: int, attempt: int, run_output: bool = True
) -> dict[str, str]:
    """Variables every run sees, so inline commands need not hard-code paths.

    ``run_output``: give the run its own ``exp-outputs/<experiment>/run<k>/``
    (``SIERRA_RUN_OUTPUT``). Off for SIERRA's batches (``spec.commandsFile``): SIERRA's
    commands say where they write, and its stage 3 rejects any other entry there.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env.update(
        SIERRA_BATCH_ROOT=str(batch_root),
        SIERRA_EXPERIMENT=experiment,
        SIERRA_RUN=str(index),
        SIERRA_ATTEMPT=str(attempt),
    )
    if run_output:
        output = batch_root / "exp-outputs" / experiment / f"run{index}"
        output.mkdir(parents=True, exist_ok=True)
        env["SIERRA_RUN_OUTPUT"] = str(output)
    return env


@task(name=names.RUN_TASK_NAME, persist_result=False, retries=0)
def run_command(
    batch_id: str,
    batch_root: str,
    workdir: str,
    experiment: str,
    index: int,
    command: str,
    attempt: int,
    timeout_seconds: int | None = None,
    run_output: bool = True,
) -> int:
    """Execute one run's shell command; raise :class:`RunFailed` if it does not exit 0, and
    :class:`~sierra_operator.runs.ledger.AttemptRefused` (executing nothing) if this attempt
    already executed once or a newer attempt of the run has started."""
    logger = get_run_logger()
    root = Path(batch_root)
    # Claimed before anything is written: a re-execution or a stale attempt stops here.
    claim = claim_attempt(
        root, batch_id, experiment, index, attempt, str(current_flow_run.id or "")
    )
    done = read_record(root, experiment, index)
    command_sha = PlannedRun(index, command).command_sha
    if (
        done is not None
        and done.succeeded
        and done.batch_id == batch_id
        and done.command_sha == command_sha
        and done.attempt < attempt
    ):
        # Succeeded, but Prefect never heard (its server was down as the run ended): the
        # retry must not execute it a second time.
        logger.info(
            "%s/run%d already succeeded in attempt %d; not executed again",
            experiment,
            index,
            done.attempt,
        )
        return 0
    for pgid in stop_older(root, batch_id, experiment, index, attempt):
        logger.warning(
            "%s/run%d: killed process group %d of an older attempt", experiment, index, pgid
        )
    stdout_path, stderr_path, _ = run_paths(root, experiment, index)
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    env = run_environment(root, experiment, index, attempt, run_output)
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
            note_process(claim, proc.pid)
            code = proc.wait(timeout=timeout_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            code, timed_out = _kill_group(proc), True
        except BaseException:
            _kill_group(proc)  # never leave a command running that nobody tracks
            raise
        finally:
            with _live_lock:
                _live.pop(proc.pid, None)
        # What the command left behind in its group ends with it, as in a container; the
        # claim then forgets the group, whose number the system may give to another run.
        _kill_group(proc)
        note_process(claim, None)
    finished = time.time()
    for label, path in (("stdout", stdout_path), ("stderr", stderr_path)):
        text = _tail(path)
        if text.strip():
            logger.info("%s/run%d %s (last lines):\n%s", experiment, index, label, text.rstrip())
    ok = code == 0 and not timed_out
    reason = ""
    if not ok:
        tail = _tail(stderr_path, REASON_LINES) if stderr_path.exists() else ""
        reason = attempt_failure_reason(code, timed_out, timeout_seconds, tail)
    write_record(
        root,
        RunRecord(
            experiment=experiment,
            index=index,
            attempt=attempt,
            command_sha=command_sha,
            exit_code=code,
            succeeded=ok,
            started_at=started,
            finished_at=finished,
            reason=reason,
            batch_id=batch_id,
        ),
    )
    if not ok:
        raise RunFailed(f"{experiment}/run{index} {reason}")
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
    run_output: bool = True,
    gate: str | None = None,
) -> dict[str, int] | State:
    """Execute one wave of an experiment: ``runs`` is a list of {index, command, attempt}.

    ``gate`` (local mode's prefetch, :mod:`~sierra_operator.runs.gate`): wait there before
    anything is claimed or executed; a withdrawn wave ends Cancelled having run nothing.

    A flow run executes once: if Prefect runs it again (a Job that replaced a deleted pod runs
    `prefect flow-run execute` for the same flow run; Prefect accepts Crashed -> Running), it
    refuses before any run starts. Its failure message carries each failed run's reason (in
    the cluster a flow run holds one run, so its state message is that run's reason).
    """
    run_count = int(current_flow_run.run_count or 1)
    if run_count > 1:
        raise AttemptRefused(
            f"{experiment}: flow run {current_flow_run.id} is being executed again "
            f"(run_count {run_count}); each attempt executes at most once, so nothing was "
            "executed or written: the operator retries the run as a new attempt"
        )
    if gate is not None and not wait_at_gate(Path(gate)):
        return Cancelled(message=f"{experiment}: withdrawn before it started; nothing was run")
    futures: list[PrefectFuture[int]] = []
    runner: ThreadPoolTaskRunner[PrefectFuture[int]]
    with ThreadPoolTaskRunner(max_workers=parallelism) as runner:
        try:
            for run in runs:
                index, attempt = int(run["index"]), int(run["attempt"])
                # No tags: each would cost a concurrency-slot round trip to the server
                # (see names.run_task_run_name); the name identifies the run.
                configured = run_command.with_options(
                    task_run_name=names.run_task_run_name(experiment, index, attempt)
                )
                parameters = {
                    "batch_id": batch_id,
                    "batch_root": batch_root,
                    "workdir": workdir,
                    "experiment": experiment,
                    "index": index,
                    "command": run["command"],
                    "attempt": attempt,
                    "timeout_seconds": timeout_seconds,
                    "run_output": run_output,
                }
                # prefect's overloads of submit() only type async tasks
                futures.append(runner.submit(configured, parameters))  # type: ignore[arg-type]
            wait(futures)
        finally:
            # A cancelled or interrupted flow run must not leave run processes behind.
            kill_live_runs()
    states = {int(r["index"]): f.state for r, f in zip(runs, futures, strict=True)}
    failed = sorted(i for i, s in states.items() if not s.is_completed())
    if len(failed) == 1 and len(runs) == 1:
        # The run's own exception (RunFailed with its reason, or AttemptRefused) is the flow's.
        states[failed[0]].result(raise_on_failure=True)
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

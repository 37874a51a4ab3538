"""SIERRA's stage 2 through local mode: what the ``sierraop.local`` execenv plugin does.

SIERRA (``sierra --execenv=sierraop.local ...``) loads the plugin in ``plugin/``, which
is thin: it hands SIERRA's stage-2 request to :func:`run_stage2` here. This module turns the
request into a SierraBatch with ``commandsFile`` (the batch's ``commands.txt``), written under
the batch's ``scratch/sierra-operator/``, and runs ``sierra-operator local`` on it as a child
process of SIERRA.

Why a child process that this module waits for, rather than a shell command SIERRA runs:

* SIERRA runs the commands a plugin returns with their output captured (nothing shows until
  they end), and on Ctrl-C gives them a quarter of a second before it exits: local mode would
  still be cancelling runs and stopping its executor, writing to a pipe nobody reads. Here the
  child writes to SIERRA's terminal (progress bar included) and SIERRA waits until it has
  stopped everything it started.
* SIERRA goes on to stage 3 after a failed command unless ``--exec-strict``; a failed run
  here always stops SIERRA, with the failed runs named.
* Prefect is imported only in the child, whose Prefect home is private (``sierra-operator
  local`` sets it before importing Prefect): never the user's profile, never port 4200.
  This module must not import Prefect (an import-linter contract says so).

The child gets its own process group: a terminal's Ctrl-C reaches SIERRA only, and this
module passes exactly one stop signal on to the child (a second one would cut its cleanup
short), then waits for it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from sierra_operator.core import names
from sierra_operator.core.model import API_VERSION, KIND, BatchStatus, FailurePolicy

log = logging.getLogger("sierraop.local")

BATCH_FILE = "sierra-stage2.yaml"
"""The SierraBatch written for SIERRA's batch, under ``<batch root>/scratch/sierra-operator``."""

# `sierra-operator local` exit codes (cli.py / local.py): what each means for stage 2.
EXIT_RUNS_FAILED = 1
EXIT_INTERRUPTED = 130
_CHILD_EXITS = {
    2: "sierra-operator refused the batch (its message is above)",
    3: "sierra-operator could not use Prefect (its message is above)",
    4: "sierra-operator hit an unexpected error (its message is above)",
}


def plugin_path() -> Path:
    """The directory to add to SIERRA_PLUGIN_PATH: it holds ``sierraop/local`` and
    ``sierraop/cluster``."""
    return Path(__file__).resolve().parent / "plugin"


class Stage2Failed(RuntimeError):
    """Stage 2 did not complete; ``exit_code`` is what SIERRA should exit with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Stage2Options:
    """SIERRA's stage-2 options, as the plugin's command line gives them."""

    parallelism: int
    resume: bool = False
    strict: bool = False
    retries: int = 0
    prefect_api_url: str | None = None
    work_pool: str | None = None
    work_queue: str | None = None
    server_timeout: float | None = None

    @classmethod
    def from_cmdopts(cls, cmdopts: Mapping[str, Any]) -> Stage2Options:
        """From SIERRA's ``cmdopts`` (keys from the plugin's ``to_cmdopts``)."""
        jobs = cmdopts.get("exec_jobs_per_node")
        return cls(
            parallelism=int(jobs) if jobs is not None else default_parallelism(1),
            resume=bool(cmdopts.get("exec_resume")),
            strict=bool(cmdopts.get("exec_strict")),
            retries=int(cmdopts.get("exec_retries") or 0),
            prefect_api_url=cmdopts.get("sierraop_prefect_api_url"),
            work_pool=cmdopts.get("sierraop_work_pool"),
            work_queue=cmdopts.get("sierraop_work_queue"),
            server_timeout=cmdopts.get("sierraop_server_timeout"),
        )


def default_parallelism(n_runs: int) -> int:
    """One run per core, never more than the runs of an experiment (what SIERRA's sample
    engines pick for ``hpc.local``)."""
    return max(1, min(int(n_runs or 1), os.cpu_count() or 1))


def batch_name(batch_root: Path) -> str:
    """A valid SierraBatch name (DNS-1123 label) from SIERRA's batch directory, e.g.
    ``template-speed.1.3.C3`` -> ``template-speed-1-3-c3``; stable, so records match on
    ``--exec-resume``."""
    name = re.sub(r"[^a-z0-9]+", "-", batch_root.name.lower()).strip("-")[:63].strip("-")
    return name or "sierra-batch"


def commands_source(batch_root: Path, cmdfile: Path) -> Path:
    """What ``commandsFile`` names: the per-batch ``commands.txt``, or, when stage 1 wrote
    per-experiment files instead (an engine whose paradigm is per-exp), the batch root,
    whose ``exp-inputs/<exp>/commands.txt`` local mode reads."""
    return cmdfile if cmdfile.exists() else batch_root


def batch_document(name: str, commands_file: str, opts: Stage2Options) -> dict[str, Any]:
    """The SierraBatch that local mode runs for SIERRA.

    Without ``--exec-strict`` every run is executed even after one fails (SIERRA's own
    ``hpc.local`` keeps going too) and stage 2 fails at the end; with it, nothing new starts
    after a failure (``StopBatch``). Either way ``--exec-resume`` re-runs only the rest."""
    policy = FailurePolicy.STOP_BATCH if opts.strict else FailurePolicy.CONTINUE
    spec: dict[str, Any] = {
        "commandsFile": commands_file,
        "execution": {
            "workers": 1,
            "parallelism": opts.parallelism,
            "retries": opts.retries,
            "failurePolicy": policy.value,
        },
    }
    prefect = {
        key: value
        for key, value in (("workPool", opts.work_pool), ("workQueue", opts.work_queue))
        if value
    }
    if prefect:
        spec["prefect"] = prefect
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def write_batch_file(batch_root: Path, document: Mapping[str, Any]) -> Path:
    """The batch file under our scratch directory (never under exp-inputs/ or exp-outputs/,
    which SIERRA's stage 3 checks). Local mode runs the commands there (they use absolute
    paths), and keeps its records beside it."""
    state = batch_root / names.STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    path = state / BATCH_FILE
    path.write_text(
        "# Written by the sierraop.local SIERRA plugin for SIERRA's stage 2; "
        "rewritten each time.\n" + yaml.safe_dump(dict(document), sort_keys=False)
    )
    return path


def local_command(
    batch_file: Path, sierra_root: Path, opts: Stage2Options, python: str = sys.executable
) -> list[str]:
    """``sierra-operator local`` for the batch, through the interpreter running SIERRA (the
    plugin and sierra-operator are installed together)."""
    cmd = [python, "-m", "sierra_operator.cli", "local", str(batch_file)]
    cmd += ["--sierra-root", str(sierra_root)]
    if opts.resume:
        cmd.append("--resume")
    if opts.prefect_api_url:
        cmd += ["--prefect-api-url", opts.prefect_api_url]
    if opts.server_timeout is not None:
        cmd += ["--server-timeout", str(opts.server_timeout)]
    return cmd


def failure_message(batch_root: Path, since: float) -> str | None:
    """The failed runs, named with their reasons, from the status local mode wrote (only if
    it wrote it after ``since``: an older file is another invocation's)."""
    path = batch_root / names.STATE_DIR / names.STATUS_FILE
    try:
        if path.stat().st_mtime < since:
            return None
        status = BatchStatus.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None
    return failure_summary(status)


def failure_summary(status: BatchStatus) -> str | None:
    """The failed runs of a batch status (local mode's file or the cluster's resource),
    each with its attempt, reason and stderr path; None if none failed."""
    if not status.failed_runs:
        return None
    runs = status.runs
    not_run = runs.total - runs.succeeded - runs.failed
    lines = [
        f"{runs.failed} of {runs.total} run(s) failed"
        + (f", {not_run} not run (--exec-strict stops at the first failure)" if not_run else "")
        + ":",
        *(
            f"  {f.experiment}/run{f.run} (attempt {f.attempt}): {f.reason or 'failed'}"
            + (f" [full stderr: {f.log}]" if f.log else "")
            for f in status.failed_runs
        ),
    ]
    if runs.failed > len(status.failed_runs):
        lines.append(f"  ... and {runs.failed - len(status.failed_runs)} more")
    return "\n".join(lines)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def wait_forwarding_interrupts(
    proc: subprocess.Popen[bytes], note: Callable[[str], None] = log.warning
) -> tuple[int, bool]:
    """Wait for the child; the first Ctrl-C or SIGTERM is passed on to it as one SIGTERM
    (local mode treats it as Ctrl-C: cancels its runs, stops its executor and server), later
    ones only wait. Returns (exit code, whether we were interrupted).

    The wait polls: SIERRA's process has threads (polars), the kernel may hand the signal to
    one of them, and a main thread blocked in waitpid() would then never see it. SIGTERM,
    not SIGINT: a child started from a shell script's background job inherits an ignored
    SIGINT, while local mode installs its own SIGTERM handler."""
    interrupted = False
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: SIGTERM keeps its handler
        previous = None
    try:
        while True:
            try:
                return proc.wait(timeout=0.2), interrupted
            except subprocess.TimeoutExpired:
                continue
            except KeyboardInterrupt:
                if not interrupted:
                    interrupted = True
                    note(
                        "interrupted: sierra-operator is cancelling its runs and stopping "
                        "what it started; waiting for it"
                    )
                    proc.send_signal(signal.SIGTERM)
                else:
                    note(f"still waiting for sierra-operator (pid {proc.pid}) to stop")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def commands_file_of(sierra_root: Path, batch_root: Path, cmdfile: Path) -> Path:
    """``commandsFile`` for SIERRA's batch: :func:`commands_source` relative to the
    (resolved) sierra root, which it must be under."""
    source = commands_source(batch_root, cmdfile).resolve()
    try:
        return source.relative_to(sierra_root)
    except ValueError:
        raise Stage2Failed(
            f"{source} is not under --sierra-root {sierra_root}: sierra-operator reads "
            "commands files only under the sierra root",
            2,
        ) from None


def run_stage2(
    sierra_root: Path,
    batch_root: Path,
    cmdfile: Path,
    opts: Stage2Options,
) -> None:
    """Run SIERRA's batch with local mode; return when every run succeeded, else raise
    :class:`Stage2Failed` saying which runs failed, or why nothing ran."""
    sierra_root = sierra_root.resolve()
    relative = commands_file_of(sierra_root, batch_root, cmdfile)
    document = batch_document(batch_name(batch_root), str(relative), opts)
    batch_file = write_batch_file(batch_root, document)
    cmd = local_command(batch_file, sierra_root, opts)
    log.info("stage 2 through sierra-operator local: %s", " ".join(cmd))
    started = time.time()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, process_group=0)
    except OSError as exc:
        raise Stage2Failed(f"could not start sierra-operator local: {exc}", 3) from None
    try:
        code, interrupted = wait_forwarding_interrupts(proc)
    finally:
        if proc.poll() is None:  # an unexpected error here: never leave the batch running
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    if interrupted or code == EXIT_INTERRUPTED:
        raise Stage2Failed(
            "stage 2 interrupted; runs that finished are recorded: run stage 2 again with "
            "--exec-resume to run only the rest",
            EXIT_INTERRUPTED,
        )
    if code == 0:
        return
    if code == EXIT_RUNS_FAILED:
        detail = failure_message(batch_root, started) or (
            "sierra-operator local exited 1 (its output is above)"
        )
        raise Stage2Failed(
            f"stage 2 failed: {detail}\nFix the cause and run stage 2 again with "
            "--exec-resume: runs that succeeded are not run again.",
            EXIT_RUNS_FAILED,
        )
    raise Stage2Failed(
        f"stage 2 failed: {_CHILD_EXITS.get(code, f'sierra-operator local exited {code}')}",
        code if code > 0 else 1,
    )

"""Durable per-run records under sierra-root: what ``--resume`` trusts after any interruption.

A run's record is written by the process that ran it, right after the command exits, with an
atomic rename, so a record is either whole or absent. The records live on the shared
filesystem next to the run's stdout/stderr, which makes them survive the Prefect server, the
workers and the driver: resuming never re-runs a run whose record says it succeeded with the
same command.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from sierra_operator import names
from sierra_operator.model import BatchStatus
from sierra_operator.plan import Plan


@dataclass(frozen=True)
class RunRecord:
    """How one attempt of one run ended."""

    experiment: str
    index: int
    attempt: int
    command_sha: str
    exit_code: int
    succeeded: bool
    started_at: float
    finished_at: float


def state_dir(batch_root: Path) -> Path:
    """Directory of everything sierra-operator writes for a batch."""
    return batch_root / names.STATE_DIR


def run_paths(batch_root: Path, experiment: str, index: int) -> tuple[Path, Path, Path]:
    """(stdout, stderr, record) paths of one run."""
    base = state_dir(batch_root) / experiment / f"run{index}"
    return (
        base.with_name(base.name + ".stdout"),
        base.with_name(base.name + ".stderr"),
        base.with_name(base.name + ".result.json"),
    )


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` so readers see the old file or the whole new one, even after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(batch_root: Path, record: RunRecord) -> None:
    """Record how an attempt ended."""
    _, _, path = run_paths(batch_root, record.experiment, record.index)
    atomic_write(path, json.dumps(asdict(record), indent=2) + "\n")


def read_record(batch_root: Path, experiment: str, index: int) -> RunRecord | None:
    """The last recorded attempt of a run, or None (never finished, or unreadable)."""
    _, _, path = run_paths(batch_root, experiment, index)
    try:
        return RunRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def succeeded_runs(batch_root: Path, plan: Plan) -> dict[tuple[str, int], RunRecord]:
    """Runs of ``plan`` recorded as succeeded with the same command: never run them again."""
    out = {}
    for exp in plan.experiments:
        for run in exp.runs:
            rec = read_record(batch_root, exp.name, run.index)
            if rec is not None and rec.succeeded and rec.command_sha == run.command_sha:
                out[(exp.name, run.index)] = rec
    return out


def write_status(batch_root: Path, status: BatchStatus) -> Path:
    """Save the batch status next to the run records (what `cat status.json` shows)."""
    path = state_dir(batch_root) / names.STATUS_FILE
    atomic_write(path, status.model_dump_json(by_alias=True, indent=2, exclude_none=True) + "\n")
    return path

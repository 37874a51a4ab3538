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
import re
import signal
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sierra_operator.core import names
from sierra_operator.core.model import BatchStatus
from sierra_operator.core.plan import Plan


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
    reason: str = ""  # why it failed (exit code, stderr tail); empty when it succeeded
    batch_id: str = ""  # the batch (cluster: uid; local: one invocation) that ran it


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


# ----------------------------------------------------------------------------- attempts
#
# Each attempt of a run executes at most once, and an older attempt never runs once a newer
# one has started: defended here, on the shared filesystem, whatever Prefect or Kubernetes do
# (a Job that replaces a deleted pod re-executes its flow run; a worker may start a flow run
# twice). Before touching any output, the run claims ``attempts/run<k>.<batch>.try<n>`` with
# an exclusive create (atomic on local filesystems and NFS >= 3).


class AttemptRefused(RuntimeError):
    """This attempt must not execute: it already did, or a newer attempt has started."""


def _attempts_dir(batch_root: Path, experiment: str) -> Path:
    return state_dir(batch_root) / experiment / "attempts"


def _claim_prefix(batch_id: str, index: int) -> str:
    return f"run{index}.{re.sub(r'[^A-Za-z0-9_.-]', '_', batch_id)}.try"


def _this_host() -> str:
    """This machine (pod) and boot: process groups are only comparable on the same one."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def _claims(batch_root: Path, batch_id: str, experiment: str, index: int) -> dict[int, Path]:
    prefix = _claim_prefix(batch_id, index)
    folder = _attempts_dir(batch_root, experiment)
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.iterdir():
        rest = path.name[len(prefix) :] if path.name.startswith(prefix) else ""
        if rest.isdigit():
            out[int(rest)] = path
    return out


def _refuse_if_newer(claims: dict[int, Path], experiment: str, index: int, attempt: int) -> None:
    newer = max(claims, default=0)
    if newer > attempt:
        raise AttemptRefused(
            f"{experiment}/run{index} attempt {attempt} refused: attempt {newer} of this run "
            "has already started (an older attempt never runs after a newer one); nothing "
            "was executed or written"
        )


def claim_attempt(
    batch_root: Path, batch_id: str, experiment: str, index: int, attempt: int, flow_run: str
) -> Path:
    """Claim attempt ``attempt`` of a run for this process, or raise :class:`AttemptRefused`.

    Called before the run writes anything. Returns the claim file (see :func:`note_process`).
    """
    _refuse_if_newer(_claims(batch_root, batch_id, experiment, index), experiment, index, attempt)
    folder = _attempts_dir(batch_root, experiment)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_claim_prefix(batch_id, index)}{attempt}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise AttemptRefused(
            f"{experiment}/run{index} attempt {attempt} refused: this attempt already executed "
            f"once (claimed in {path}); this is a re-execution (a replaced pod or a restarted "
            "flow run) and each attempt executes at most once; nothing was executed or written"
        ) from None
    with os.fdopen(fd, "w") as fh:
        json.dump({"flow_run": flow_run, "host": _this_host(), "claimed_at": time.time()}, fh)
    # A newer attempt that claimed between our check and our create wins: we stand down.
    _refuse_if_newer(_claims(batch_root, batch_id, experiment, index), experiment, index, attempt)
    return path


def note_process(claim: Path, pgid: int | None) -> None:
    """Record the process group executing the claimed attempt (see :func:`stop_older`), or
    ``None`` once it ended: a finished attempt's number must never be killed later."""
    data = json.loads(claim.read_text())
    data.pop("pgid", None)
    if pgid is not None:
        data["pgid"] = pgid
    atomic_write(claim, json.dumps(data) + "\n")


def stop_older(
    batch_root: Path, batch_id: str, experiment: str, index: int, attempt: int, wait: float = 10.0
) -> list[int]:
    """Kill what is left of older attempts of this run on this machine; returns their pgids.

    An attempt whose flow-run process died (SIGKILL, crash) leaves its command running in its
    own process group; the next attempt must not overlap with it. Only process groups
    recorded on this same host and boot are touched (another pod's numbers mean nothing here).
    """
    here = _this_host()
    killed = []
    for older, path in _claims(batch_root, batch_id, experiment, index).items():
        if older >= attempt:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pgid = data.get("pgid")
        if data.get("host") != here or not isinstance(pgid, int) or not _group_alive(pgid):
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pgid)
        deadline = time.monotonic() + wait
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return killed


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

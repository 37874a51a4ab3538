"""`sierra-operator logs BATCH EXPERIMENT RUN`: one run's stdout and stderr, from sierra-root.

The files that the run's process wrote next to its record (``runs/ledger.py``:
``<batch root>/scratch/sierra-operator/<experiment>/run<k>.stdout|.stderr``) are the source
of truth: they outlive the run's pod, its Job and the Prefect server, and hold the whole
output (Prefect's logs keep a tail). Locally they are read from disk; in the cluster through
the same short-lived pod as ``push``/``fetch`` (``pods/exec``: ``cat`` of each file, streamed
to this process's stdout and stderr as it comes).
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sierra_operator.researcher.kubeconfig import ClusterError, Connection
from sierra_operator.researcher.pod_exec import ExecStreamCut
from sierra_operator.researcher.transfer import with_pod
from sierra_operator.researcher.transfer_pod import Target, run_script
from sierra_operator.runs.ledger import run_paths

EXIT_NO_OUTPUT = 66


class OutputClosed(Exception):
    """Whoever reads our stdout stopped (``logs ... | head``): not an error, the command
    just ends. Not an OSError, so that nothing takes it for a network or file error."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

# `sh -c SCRIPT sh BATCH OUT ERR`: BATCH is the batch root, or the commands file in it.
LOGS_SCRIPT = f"""set -eu
br=$1
if [ ! -d "$br" ]; then br=$(dirname "$br"); fi
if [ ! -e "$br/$2" ] && [ ! -e "$br/$3" ]; then exit {EXIT_NO_OUTPUT}; fi
if [ -e "$br/$2" ]; then cat "$br/$2"; fi
if [ -e "$br/$3" ]; then cat "$br/$3" >&2; fi
"""


def run_files(experiment: str, run: int) -> tuple[PurePosixPath, PurePosixPath]:
    """(stdout, stderr) of one run relative to its batch root; the names are checked first,
    so they cannot lead elsewhere."""
    if not _NAME.fullmatch(experiment) or run < 0:
        raise ClusterError(
            f"no run {experiment}/run{run}: an experiment is a name like c1-exp0, a run a "
            "number from 0",
            2,
        )
    out, err, _ = run_paths(Path("."), experiment, run)
    return PurePosixPath(out.as_posix()), PurePosixPath(err.as_posix())


def batch_path(obj: dict[str, Any], mount_path: str) -> str:
    """The batch root on the PVC, or for a ``commandsFile`` the path it names (the batch
    root, or its ``commands.txt``: only the pod can tell which)."""
    spec = obj.get("spec") or {}
    mount = mount_path.rstrip("/")
    if spec.get("commandsFile"):
        return f"{mount}/{spec['commandsFile']}"
    return f"{mount}/{(obj.get('metadata') or {}).get('name')}"


def print_local(batch_root: Path, experiment: str, run: int) -> None:
    """Copy the run's stdout to ours and its stderr to ours, from a local sierra-root."""
    out, err = (batch_root / p for p in run_files(experiment, run))
    if not out.exists() and not err.exists():
        raise ClusterError(_missing(experiment, run, str(batch_root)), 2)
    for path, sink in ((out, sys.stdout.buffer), (err, sys.stderr.buffer)):
        if path.exists():
            with path.open("rb") as fh, _reader_gone():
                shutil.copyfileobj(fh, sink)
                sink.flush()


@contextmanager
def _reader_gone() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise OutputClosed from None


def _missing(experiment: str, run: int, where: str) -> str:
    return (
        f"no output of {experiment}/run{run} under {where}/scratch/sierra-operator (not run "
        "yet, or no such experiment or run: sierra-operator status lists them)"
    )


async def print_remote(
    conn: Connection,
    target: Target,
    path: str,
    experiment: str,
    run: int,
    out: BinaryIO,
    err: BinaryIO,
    pod_timeout: float = 300.0,
) -> None:
    """Stream the run's stdout to ``out`` and stderr to ``err`` from the batch's PVC."""
    stdout_file, stderr_file = run_files(experiment, run)

    async def write_out(data: bytes) -> None:
        with _reader_gone():
            out.write(data)
            out.flush()

    async def write_err(data: bytes) -> None:
        with _reader_gone():
            err.write(data)
            err.flush()

    async def work(ws_api: Any, pod: str) -> None:
        args = [path, str(stdout_file), str(stderr_file)]
        try:
            outcome = await run_script(
                ws_api,
                target,
                pod,
                LOGS_SCRIPT,
                args,
                stdout=write_out,
                stderr=write_err,
            )
        except ExecStreamCut as exc:
            message = f"reading the logs of {experiment}/run{run} failed: {exc}"
            raise ClusterError(message, 1) from None
        if outcome.exit_code == EXIT_NO_OUTPUT:
            raise ClusterError(_missing(experiment, run, f"PVC {target.claim}:{path}"), 2)
        if outcome.exit_code != 0:
            raise ClusterError(
                f"reading the logs of {experiment}/run{run} failed: {outcome.describe()}", 1
            )

    await with_pod(conn, target, work, pod_timeout)

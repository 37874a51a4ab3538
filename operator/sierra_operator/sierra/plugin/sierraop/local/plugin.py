"""``--execenv=sierraop.local``: the interface SIERRA calls; the work is in
:mod:`sierra_operator.sierra.execenv`.

SIERRA imports every plugin it finds on SIERRA_PLUGIN_PATH, selected or not, and imports this
file as a top-level module: so imports of sierra-operator are made inside the functions (a
SIERRA without sierra-operator installed still starts) and absolute.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from sierra.core.experiment import bindings

log = logging.getLogger("sierraop.local")

_NOT_INSTALLED = (
    "--execenv=sierraop.local needs sierra-operator in the Python environment that runs "
    "SIERRA ({python}): install it there (pip install sierra-operator), or run the sierra "
    "command of the environment where it is installed"
)


def _fail(message: str, code: int = 2) -> SystemExit:
    """An error SIERRA shows as one log line and an exit code, not as a crash to report."""
    for line in message.splitlines():
        log.error(line)
    return SystemExit(code)


def _check_installed() -> None:
    if importlib.util.find_spec("sierra_operator") is None:
        raise _fail(_NOT_INSTALLED.format(python=sys.executable))


class BatchShellCmdsGenerator(bindings.IBatchShellCmdsGenerator):  # type: ignore[misc]  # untyped SIERRA
    """Stage 2 of a whole batch (per-batch paradigm: SIERRA's ``commands.txt``)."""

    def __init__(self, cmdopts: dict[str, Any]) -> None:
        self.cmdopts = cmdopts

    def pre_batch_cmds(self) -> list[Any]:
        """Nothing: local mode starts (and stops) its own Prefect server and workers."""
        return []

    def exec_batch_cmds(self, exec_opts: dict[str, Any]) -> list[Any]:
        """Run the batch now, through local mode, and return no command for SIERRA's shell.

        SIERRA calls this right before it would run the returned commands; running here lets
        SIERRA wait for local mode's cleanup on Ctrl-C, shows its progress, and stops SIERRA
        when a run failed (see :mod:`sierra_operator.sierra.execenv`)."""
        from sierra_operator.sierra.execenv import Stage2Failed, Stage2Options, run_stage2

        cmdfile = Path(str(exec_opts["cmdfile_stem_path"]) + str(exec_opts["cmdfile_ext"]))
        try:
            run_stage2(
                Path(self.cmdopts["sierra_root"]),
                Path(exec_opts["batch_root"]),
                cmdfile,
                Stage2Options.from_cmdopts(self.cmdopts),
            )
        except Stage2Failed as exc:
            raise _fail(str(exc), exc.exit_code) from None
        return []

    def post_batch_cmds(self) -> list[Any]:
        """Nothing: local mode has stopped everything it started when it returns."""
        return []


def cmdline_postparse_configure(args: argparse.Namespace) -> argparse.Namespace:
    """Per-batch parallelism (local mode runs the experiments in order and the runs of one
    in parallel, which is what per-exp means too, with one Prefect server for all) and a
    default ``--exec-jobs-per-node``; refuse what cannot work before anything starts."""
    paradigm = getattr(args, "exec_parallelism_paradigm", None)
    if paradigm not in (None, "per-batch"):
        raise _fail(
            f"--exec-parallelism-paradigm={paradigm}: sierraop.local runs whole batches "
            "(experiments one after another, the runs of one experiment in parallel); "
            "use per-batch or leave the option out"
        )
    args.exec_parallelism_paradigm = "per-batch"
    jobs = getattr(args, "exec_jobs_per_node", None)
    if jobs is None:
        _check_installed()
        from sierra_operator.sierra.execenv import default_parallelism

        args.exec_jobs_per_node = default_parallelism(getattr(args, "n_runs", 1))
    elif jobs < 1:
        raise _fail(f"--exec-jobs-per-node={jobs}: must be at least 1")
    if getattr(args, "exec_retries", 0) < 0:
        raise _fail(f"--exec-retries={args.exec_retries}: must be 0 or more")
    return args


def execenv_check(cmdopts: dict[str, Any]) -> None:
    """Before stage 2 runs anything: sierra-operator must be importable by this Python."""
    _check_installed()


__all__ = ["BatchShellCmdsGenerator", "cmdline_postparse_configure", "execenv_check"]

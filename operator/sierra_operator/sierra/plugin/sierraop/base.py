"""What both ``sierraop`` execenv plugins (``local``, ``cluster``) give SIERRA: the stage-2
command generator, the option checks after parsing, and errors shown as SIERRA log lines.

Each plugin's ``plugin.py`` binds these to its own stage-2 function; the work itself is in
:mod:`sierra_operator.sierra.execenv` (local) and :mod:`sierra_operator.sierra.cluster_stage2`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sierra.core.experiment import bindings

from sierra_operator.sierra.execenv import Stage2Failed, default_parallelism


def fail(log: logging.Logger, message: str, code: int = 2) -> SystemExit:
    """An error SIERRA shows as log lines and an exit code, not as a crash to report."""
    for line in message.splitlines():
        log.error(line)
    return SystemExit(code)


Stage2 = Callable[[dict[str, Any], Path, Path, Path], None]
"""(cmdopts, sierra root, batch root, commands file) -> None, or raise Stage2Failed."""


class Stage2Generator(bindings.IBatchShellCmdsGenerator):  # type: ignore[misc]  # untyped SIERRA
    """Stage 2 of a whole batch (per-batch paradigm: SIERRA's ``commands.txt``), run by
    ``stage2`` when SIERRA asks for the commands, returning none for SIERRA's shell.

    SIERRA calls ``exec_batch_cmds`` right before it would run the returned commands;
    running here lets SIERRA wait for our cleanup on Ctrl-C, shows our progress, and stops
    SIERRA when a run failed (see :mod:`sierra_operator.sierra.execenv`)."""

    stage2: Stage2
    log: logging.Logger

    def __init__(self, cmdopts: dict[str, Any]) -> None:
        self.cmdopts = cmdopts

    def pre_batch_cmds(self) -> list[Any]:
        """Nothing: stage 2 starts (and stops) whatever it needs itself."""
        return []

    def exec_batch_cmds(self, exec_opts: dict[str, Any]) -> list[Any]:
        """Run the batch now; nothing left for SIERRA's shell."""
        cmdfile = Path(str(exec_opts["cmdfile_stem_path"]) + str(exec_opts["cmdfile_ext"]))
        try:
            type(self).stage2(
                self.cmdopts,
                Path(self.cmdopts["sierra_root"]),
                Path(exec_opts["batch_root"]),
                cmdfile,
            )
        except Stage2Failed as exc:
            raise fail(self.log, str(exc), exc.exit_code) from None
        return []

    def post_batch_cmds(self) -> list[Any]:
        """Nothing: everything stage 2 started has stopped when it returns."""
        return []


def postparse(args: argparse.Namespace, execenv: str, log: logging.Logger) -> argparse.Namespace:
    """Per-batch parallelism (experiments run in order and the runs of one in parallel,
    which is what per-exp means too) and a default ``--exec-jobs-per-node``; refuse what
    cannot work before anything starts."""
    paradigm = getattr(args, "exec_parallelism_paradigm", None)
    if paradigm not in (None, "per-batch"):
        raise fail(
            log,
            f"--exec-parallelism-paradigm={paradigm}: {execenv} runs whole batches "
            "(experiments one after another, the runs of one experiment in parallel); "
            "use per-batch or leave the option out",
        )
    args.exec_parallelism_paradigm = "per-batch"
    jobs = getattr(args, "exec_jobs_per_node", None)
    if jobs is None:
        args.exec_jobs_per_node = default_parallelism(getattr(args, "n_runs", 1))
    elif jobs < 1:
        raise fail(log, f"--exec-jobs-per-node={jobs}: must be at least 1")
    if getattr(args, "exec_retries", 0) < 0:
        raise fail(log, f"--exec-retries={args.exec_retries}: must be 0 or more")
    return args


def interface(
    execenv: str,
    stage2: Stage2,
    check_args: Callable[[argparse.Namespace], str | None] | None = None,
) -> tuple[type, Callable[[argparse.Namespace], argparse.Namespace], Callable[[Any], None]]:
    """What a ``sierraop`` plugin module exports to SIERRA: ``BatchShellCmdsGenerator``
    running ``stage2``, ``cmdline_postparse_configure`` (``check_args`` returns a problem
    to refuse, or None; then :func:`postparse`) and ``execenv_check``."""
    log = logging.getLogger(execenv)

    class BatchShellCmdsGenerator(Stage2Generator):
        __doc__ = f"Stage 2 of a whole batch through {execenv}."

    BatchShellCmdsGenerator.stage2 = staticmethod(stage2)
    BatchShellCmdsGenerator.log = log

    def cmdline_postparse_configure(args: argparse.Namespace) -> argparse.Namespace:
        problem = check_args(args) if check_args is not None else None
        if problem:
            raise fail(log, problem)
        return postparse(args, execenv, log)

    def execenv_check(cmdopts: Any) -> None:
        """Nothing left to check: sierra-operator is importable (this module is)."""

    return BatchShellCmdsGenerator, cmdline_postparse_configure, execenv_check

"""Engine ``sotest.tinysim``: each experimental run is one ``python3 tinysim.py --config
<input>.json``, which writes CSV files under the run's output directory, as a real simulator
would. Per-batch parallelism, like SIERRA's sample jsonsim engine."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from sierra.core import types

SIMULATOR = pathlib.Path(__file__).with_name("tinysim.py")


class ExpRunShellCmdsGenerator:
    """The command of one experimental run (stage 1 writes it into commands.txt)."""

    def __init__(self, cmdopts: dict[str, Any], criteria: Any, exp_num: int, n_agents: Any):
        self.cmdopts = cmdopts

    def pre_run_cmds(self, host: str, input_fpath: pathlib.Path, run_num: int) -> list:
        return []

    def exec_run_cmds(self, host: str, input_fpath: pathlib.Path, run_num: int) -> list:
        # python3 from PATH, as a user's engine would: the PATH requirement is real.
        cmd = f"python3 {SIMULATOR} --config {input_fpath}.json"
        return [types.ShellCmdSpec(cmd=cmd, shell=True, wait=True)]

    def post_run_cmds(self, host: str, run_output_root: pathlib.Path) -> list:
        return []


class ExpConfigurer:
    """Per-batch parallelism: one commands.txt for the whole batch."""

    def __init__(self, cmdopts: dict[str, Any]) -> None:
        self.cmdopts = cmdopts

    def for_exp_run(self, exp_input_root: pathlib.Path, run_output_root: pathlib.Path) -> None:
        pass

    def for_exp(self, exp_input_root: pathlib.Path) -> None:
        pass

    def parallelism_paradigm(self) -> str:
        return "per-batch"


def cmdline_postparse_configure(execenv: str, args: argparse.Namespace) -> argparse.Namespace:
    """Two runs at a time unless --exec-jobs-per-node says otherwise: hpc.local passes it to
    GNU parallel and has no default of its own (sierraop.local sets one before this runs)."""
    if getattr(args, "exec_jobs_per_node", None) is None and hasattr(args, "exec_jobs_per_node"):
        args.exec_jobs_per_node = 2
    return args

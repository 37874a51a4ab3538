"""Command line of ``--execenv=sierraop.local``: SIERRA's HPC stage-2 options plus ours.

SIERRA's own options keep their meaning: ``--exec-jobs-per-node`` is the parallelism (runs of
one experiment at a time), ``--exec-resume`` re-runs only runs not recorded as succeeded,
``--exec-strict`` starts nothing new after a run fails. Ours say which Prefect to use.
"""

from __future__ import annotations

import argparse
from typing import Any

from sierra_operator.sierra.plugin.sierraop import options


class SierraopLocalCmdline(options.SierraopCmdline):
    """The shared options, plus the private Prefect server's."""

    def init_stage2(self) -> None:
        """Stage-2 options; SIERRA builds them only when this execenv is selected."""
        super().init_stage2()
        self.stage2.add_argument(
            "--prefect-api-url",
            default=None,
            help="Run on this Prefect server (http://host:port/api) instead of a private one "
            "that sierraop.local starts on a free port and stops at the end."
            + self.stage_usage_doc([2]),
        )
        self.stage2.add_argument(
            "--prefect-server-timeout",
            type=float,
            default=None,
            help="Seconds to wait for the private Prefect server to answer (default: 300)."
            + self.stage_usage_doc([2]),
        )


def build(parents: list[argparse.ArgumentParser], stages: list[int]) -> Any:
    """SIERRA's entry point: the parser part of ``--execenv=sierraop.local``."""
    return SierraopLocalCmdline(parents, stages)


def to_cmdopts(args: argparse.Namespace) -> dict[str, Any]:
    """SIERRA's entry point: our options into ``cmdopts``."""
    opts = options.to_cmdopts(args)
    opts["sierraop_server_timeout"] = getattr(args, "prefect_server_timeout", None)
    return opts

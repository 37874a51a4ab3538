"""Command line of ``--execenv=sierraop.local``: SIERRA's HPC stage-2 options plus ours.

SIERRA's own options keep their meaning: ``--exec-jobs-per-node`` is the parallelism (runs of
one experiment at a time), ``--exec-resume`` re-runs only runs not recorded as succeeded,
``--exec-strict`` starts nothing new after a run fails. Ours say which Prefect to use.
"""

from __future__ import annotations

import argparse
from typing import Any

from sierra.plugins.execenv import hpc


class SierraopLocalCmdline(hpc.cmdline.HPCCmdline):  # type: ignore[misc]  # SIERRA is untyped
    """``hpc.local``'s options (so scripts written for it keep working), plus ours."""

    def init_stage2(self) -> None:
        """Stage-2 options; SIERRA builds them only when this execenv is selected."""
        super().init_stage2()
        self.stage2.add_argument(
            "--exec-retries",
            type=int,
            default=0,
            help="Retry a failed experimental run this many times before it counts as failed "
            "(sierraop.local). Default: 0." + self.stage_usage_doc([2]),
        )
        self.stage2.add_argument(
            "--prefect-api-url",
            default=None,
            help="Run on this Prefect server (http://host:port/api) instead of a private one "
            "that sierraop.local starts on a free port and stops at the end."
            + self.stage_usage_doc([2]),
        )
        self.stage2.add_argument(
            "--work-pool",
            default=None,
            help="Prefect work pool name (default: sierra-pool). With --prefect-api-url, a "
            "pool that exists there and was not made by this batch is never modified: pick "
            "another name." + self.stage_usage_doc([2]),
        )
        self.stage2.add_argument(
            "--work-queue",
            default=None,
            help="Prefect work queue name (default: sierra-queue)." + self.stage_usage_doc([2]),
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
    """SIERRA's entry point: our options into ``cmdopts`` (prefixed: cmdopts is shared by
    every plugin)."""
    opts: dict[str, Any] = dict(hpc.cmdline.to_cmdopts(args))
    opts.update(
        exec_retries=getattr(args, "exec_retries", 0),
        sierraop_prefect_api_url=getattr(args, "prefect_api_url", None),
        sierraop_work_pool=getattr(args, "work_pool", None),
        sierraop_work_queue=getattr(args, "work_queue", None),
        sierraop_server_timeout=getattr(args, "prefect_server_timeout", None),
    )
    return opts

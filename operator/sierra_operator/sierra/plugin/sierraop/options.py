"""Stage-2 options both ``sierraop`` execenvs take: SIERRA's HPC ones (so scripts written for
``hpc.local`` keep working) plus retries and which Prefect pool to use."""

from __future__ import annotations

import argparse
from typing import Any

from sierra.plugins.execenv import hpc


class SierraopCmdline(hpc.cmdline.HPCCmdline):  # type: ignore[misc]  # SIERRA is untyped
    """``hpc.local``'s options, plus ours (each plugin adds its own in ``init_stage2``)."""

    def init_stage2(self) -> None:
        """Stage-2 options; SIERRA builds them only when this execenv is selected."""
        super().init_stage2()
        self.stage2.add_argument(
            "--exec-retries",
            type=int,
            default=0,
            help="Retry a failed experimental run this many times before it counts as failed "
            "(sierraop). Default: 0." + self.stage_usage_doc([2]),
        )
        self.stage2.add_argument(
            "--work-pool",
            default=None,
            help="Prefect work pool name (default: sierra-pool locally; in the cluster the "
            "operator's per-batch pool). A pool that exists and was not made by this batch "
            "is never modified: pick another name." + self.stage_usage_doc([2]),
        )
        self.stage2.add_argument(
            "--work-queue",
            default=None,
            help="Prefect work queue name (default: sierra-queue)." + self.stage_usage_doc([2]),
        )


def to_cmdopts(args: argparse.Namespace) -> dict[str, Any]:
    """SIERRA's and the shared options into ``cmdopts`` (ours prefixed: cmdopts is shared by
    every plugin)."""
    opts: dict[str, Any] = dict(hpc.cmdline.to_cmdopts(args))
    opts.update(
        exec_retries=getattr(args, "exec_retries", 0),
        sierraop_prefect_api_url=getattr(args, "prefect_api_url", None),
        sierraop_work_pool=getattr(args, "work_pool", None),
        sierraop_work_queue=getattr(args, "work_queue", None),
    )
    return opts

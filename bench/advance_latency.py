"""Benchmark: experiment-advance latency of the operator.

Runs one batch of N one-run experiments through the same no-cluster set-up as the operator
tests (emulated Kubernetes API, real operator process, real Prefect server, real Prefect
Kubernetes worker polling every second (PREFECT_WORKER_QUERY_SECONDS=1, as in the tests),
Jobs executed by tests/job_runner.py), then reads Prefect's timestamps: for each experiment
i > 0, latency = (first flow run of experiment i started, i.e. its engine set it Running) -
(last flow run of experiment i-1 ended). It includes the worker's poll, the Job's start and
the flow-run engine's start. The older figure, first flow run of i *created* - last of i-1
ended, is printed next to it (the first rows of bench/README.md): once the operator creates
the next experiment's flow runs ahead (held in a paused work queue until it moves on), that
one goes negative and says nothing. Target: median < 1 s. The reconcile interval is the main
term of the created figure (SIERRA_OPERATOR_RECONCILE_SECONDS, 1 s here).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.emulated_cluster import emulated_cluster  # noqa: E402
from tests.integration.cluster import batch_doc, wait_for  # noqa: E402
from tests.integration.helpers import probe  # noqa: E402


async def latencies(api_url: str, uid: str) -> tuple[list[float], list[float]]:
    """Per experiment i > 0: (first flow run of i started - last of i-1 ended, first flow run
    of i created - last of i-1 ended). Flow runs that never started (a held wave withdrawn
    before it ran: Cancelled) are left out."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    runs: list[Any] = []
    async with PrefectClient(api=api_url) as client:
        while True:
            page = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"sierra-batch:{uid}"])),
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                break
    by_exp: dict[int, list[Any]] = {}
    for run in runs:
        if run.start_time is not None:
            by_exp.setdefault(int(run.parameters["experiment"].split("exp")[1]), []).append(run)
    started, created = [], []
    for i in sorted(by_exp)[1:]:
        if i - 1 not in by_exp:
            continue
        ended = max(r.end_time for r in by_exp[i - 1])
        started.append((min(r.start_time for r in by_exp[i]) - ended).total_seconds())
        created.append((min(r.created for r in by_exp[i]) - ended).total_seconds())
    return started, created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=6)
    parser.add_argument("--interval", type=float, default=1.0, help="reconcile seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    with emulated_cluster("sierra-bench-advance-", ["bench"], args.interval, args.keep) as c:
        doc = batch_doc("adv", c.tmp / "root", [[probe(0.1)] for _ in range(args.experiments)])
        uid = c.kube.create_batch("bench", doc)["metadata"]["uid"]
        c.workers.start_from_deployment("bench", "adv-worker")
        wait_for(lambda: c.kube.phase("bench", "adv") == "Succeeded", 900, "the batch")
        lat, created = asyncio.run(latencies(c.api_url, uid))
    print(
        "| date | experiments | reconcile interval | advance latency median (first run "
        "started) | min | max | median to the first run created |"
    )
    print(
        f"| {time.strftime('%Y-%m-%d')} | {args.experiments} | {args.interval} s | "
        f"{statistics.median(lat):.2f} s | "
        f"{min(lat):.2f} s | {max(lat):.2f} s | {statistics.median(created):.2f} s |"
    )


if __name__ == "__main__":
    main()

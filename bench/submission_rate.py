"""Benchmark: creating a 1,000-run experiment's flow runs through the operator's adapter
vs a raw `create_flow_run_from_deployment` loop, against the same Prefect server.

Starts its own Prefect server (private home, free port), creates a kubernetes-type pool
with no worker (nothing executes: only submission is measured), then times
``PrefectBatch.submit_each`` (what the operator calls per wave) and the raw loop for the
same number of runs, and one ``PrefectBatch.observe`` over all 2 x runs flow runs (what a
reconcile pays before anything is final and cached). Target: adapter >= 0.8x the raw rate.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import tempfile
import time
from pathlib import Path

from sierra_operator.cluster.job_template import default_kubernetes_template
from sierra_operator.core.machine import RunAttempt, SubmitRuns
from sierra_operator.local.server import LocalPrefectServer
from sierra_operator.runs.prefect_api import PrefectBatch


async def measure(api_url: str, runs: int) -> tuple[float, float, float]:
    ours = PrefectBatch(api_url, "bench-ours", "bench-pool", "q", pool_type="kubernetes")
    await ours.ensure_pool(default_kubernetes_template())
    deployment = await ours.ensure_deployment("/tmp")
    action = SubmitRuns("c1-exp0", 0, tuple(RunAttempt(i, f"run {i}", 1) for i in range(runs)))
    t0 = time.perf_counter()
    await ours.submit_each(action, {"batch_id": "x", "batch_root": "/tmp", "workdir": "/tmp"})
    adapter = time.perf_counter() - t0

    t0 = time.perf_counter()
    async with ours.client() as client:
        for i in range(runs):
            await client.create_flow_run_from_deployment(
                deployment,
                parameters={"runs": [{"index": i, "command": f"run {i}", "attempt": 1}]},
                tags=["sierra-batch:bench-raw"],
            )
    raw = time.perf_counter() - t0

    t0 = time.perf_counter()
    seen = await ours.observe()
    observe = time.perf_counter() - t0
    # The raw runs share the deployment (and so its batch tag): observe() reads 2 x runs.
    assert len([key for key in seen if key[0] == "c1-exp0"]) == runs, len(seen)
    return adapter, raw, observe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    # SIGTERM (e.g. `timeout`) must still run the finally below: never orphan a server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    home = Path(tempfile.mkdtemp(prefix="sierra-bench-prefect-"))
    server = LocalPrefectServer(home)
    server.start()
    try:
        server.wait_ready(300)
        adapter, raw, observe = asyncio.run(measure(server.api_url, args.runs))
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    date = time.strftime("%Y-%m-%d")
    print("| date | runs | raw loop | submit_each | ratio (adapter/raw) | observe() of 2 x runs |")
    print(
        f"| {date} | {args.runs} | {raw:.1f} s ({args.runs / raw:.0f}/s) | {adapter:.1f} s "
        f"({args.runs / adapter:.0f}/s) | {raw / adapter:.2f}x | {observe:.2f} s |"
    )


if __name__ == "__main__":
    main()

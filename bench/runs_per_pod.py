"""Benchmark: a batch of short runs on the emulated cluster, a pod per run vs runs per pod.

The same 12-run batch (3 experiments x 4 runs of ~``--sleep`` s, parallelism 2) goes through
the operator twice in one invocation, on the same Prefect server, operator and workers
(bench/emulated_cluster.py): with ``execution.runsPerPod: 1`` (one Job per run, the
default) and with ``--runs-per-pod`` (default 4: one Job per experiment). Wall = batch
created -> phase Succeeded as the API server reports it; Jobs = Jobs the emulated Job
controller started for the batch. ``--rounds N`` alternates the order N times (load drifts).
A Job here is a local `prefect flow-run execute` process, so the saving measured is
Prefect's per-flow-run start (a Python importing Prefect, the worker's Job submission and
its observation); a real pod start (scheduling, image, container) adds to it per Job.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.emulated_cluster import EmulatedCluster, emulated_cluster  # noqa: E402
from tests.integration.cluster import batch_doc, wait_for  # noqa: E402
from tests.integration.helpers import probe  # noqa: E402

NAMESPACE = "bench"


def run_batch(c: EmulatedCluster, name: str, per_pod: int, sleep: float) -> tuple[float, int]:
    """Wall seconds from create to Succeeded, and the Jobs started for the batch."""
    before = set(c.jobs.started)
    doc = batch_doc(name, c.tmp / name, [[probe(sleep)] * 4 for _ in range(3)], parallelism=2)
    doc["spec"]["execution"]["runsPerPod"] = per_pod
    started = time.monotonic()
    c.kube.create_batch(NAMESPACE, doc)
    c.workers.start_from_deployment(NAMESPACE, f"{name}-worker")
    wait_for(lambda: c.kube.phase(NAMESPACE, name) in ("Succeeded", "Failed"), 900, f"batch {name}")
    wall = time.monotonic() - started
    phase = c.kube.phase(NAMESPACE, name)
    if phase != "Succeeded":
        raise SystemExit(f"batch {name} ended {phase}")
    return wall, sum(uid not in before for uid in c.jobs.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-per-pod", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds each run takes")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    walls: dict[int, list[float]] = {1: [], args.runs_per_pod: []}
    jobs: dict[int, int] = {}
    with emulated_cluster("sierra-bench-rpp-", [NAMESPACE], keep=args.keep) as c:
        for round_ in range(args.rounds):
            order = [1, args.runs_per_pod] if round_ % 2 == 0 else [args.runs_per_pod, 1]
            for per_pod in order:
                wall, jobs[per_pod] = run_batch(c, f"b{round_}-k{per_pod}", per_pod, args.sleep)
                walls[per_pod].append(wall)
                print(f"round {round_} runsPerPod {per_pod}: {wall:.1f} s, {jobs[per_pod]} Jobs")
    load = os.getloadavg()[0]
    one, packed = (statistics.median(walls[k]) for k in (1, args.runs_per_pod))
    print(
        "| date (load) | runs | runsPerPod 1: wall / Jobs | runsPerPod k: wall / Jobs | "
        "ratio (packed / pod per run) |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {time.strftime('%Y-%m-%d %H:%M')} ({load:.1f}), P=2, {args.sleep} s runs, "
        f"{args.rounds} round(s) | 12 | {one:.1f} s / {jobs[1]} | "
        f"k={args.runs_per_pod}: {packed:.1f} s / {jobs[args.runs_per_pod]} | "
        f"**{packed / one:.2f}x** |"
    )


if __name__ == "__main__":
    main()

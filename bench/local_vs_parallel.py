"""Benchmark: the same 12 runs through `sierra-operator local` and through GNU parallel.

Makes a SIERRA stage-1-shaped batch (3 experiments x 4 runs, a per-batch commands.txt naming
exp-inputs/<exp>/ in each line, runs of 5 steps of tinysim: ~0.5 s with --step-seconds 0.1,
~5 s with 1.0), then times in this one process:

* GNU parallel over the whole commands.txt (`parallel --jobs P`, what SIERRA's hpc.local
  does for a per-batch engine: the baseline) and per experiment (experiments one after
  another, as sierra-operator orders them);
* `sierra-operator local` with its own Prefect server, whose own timings split server start
  from provisioning and execution;
* from the run records: the median gap between a run ending and the next queued run of
  the same experiment starting (the slot-refill latency).

Prints one table row with the ratios (targets: <= 1.5x GNU parallel excluding server
start; gap median < 0.2 s). Needs GNU parallel: `apt-get install parallel`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.helpers import local_cmd  # noqa: E402

TINYSIM = REPO / "examples" / "tinysim.py"


def make_batch(root: Path, experiments: int, runs: int, step_seconds: float) -> Path:
    """A SIERRA-like batch root with commands.txt and per-experiment inputs; returns the file."""
    batch_root = root / "proj" / "ctrl" / "scn" / "template-robots"
    lines = []
    for e in range(experiments):
        inputs = batch_root / "exp-inputs" / f"c1-exp{e}"
        inputs.mkdir(parents=True)
        for k in range(runs):
            cfg = inputs / f"template_run{k}.json"
            cfg.write_text(json.dumps({"robots": 2 ** (e + 1)}))
            out = batch_root / "exp-outputs" / f"c1-exp{e}" / f"run{k}"
            lines.append(
                f"{sys.executable} {TINYSIM} --config {cfg} --seed {k} --steps 5 "
                f"--step-seconds {step_seconds} --out {out}"
            )
        (inputs / "commands.txt").write_text("\n".join(lines[-runs:]) + "\n")
    commands = batch_root / "commands.txt"
    commands.write_text("\n".join(lines) + "\n")
    return commands


def refill_gaps(batch_root: Path, parallelism: int) -> list[float]:
    """For each run that had to wait for a slot: its start minus the end that freed it.

    Within one experiment, sorted by start, run i >= P starts when the (i-P+1)-th run to
    end frees a slot; the gap is what local mode adds to that (seconds, from the records).
    """
    records = [
        json.loads(path.read_text())
        for path in (batch_root / "scratch" / "sierra-operator").glob("*/run*.result.json")
    ]
    gaps = []
    for experiment in {r["experiment"] for r in records}:
        runs = sorted((r for r in records if r["experiment"] == experiment), key=starts)
        ends = sorted(r["finished_at"] for r in runs)
        gaps += [r["started_at"] - ends[i - parallelism] for i, r in enumerate(runs)][parallelism:]
    return gaps


def starts(record: dict[str, float]) -> float:
    """A run record's start time (sort key)."""
    return record["started_at"]


def timed(cmd: list[str], **kw: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.monotonic() - t0, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (records, logs)")
    args = parser.parse_args()
    if not shutil.which("parallel"):
        raise SystemExit("GNU parallel is needed: apt-get install parallel")
    work = Path(tempfile.mkdtemp(prefix="sierra-bench-"))
    try:
        root = work / "sierra-root"
        commands = make_batch(root, 3, 4, args.step_seconds)
        p = str(args.parallelism)
        gnu_all, _ = timed(["parallel", "--will-cite", "--jobs", p], stdin=commands.open())
        t0 = time.monotonic()
        for exp in sorted((commands.parent / "exp-inputs").iterdir()):
            timed(["parallel", "--will-cite", "--jobs", p], stdin=(exp / "commands.txt").open())
        gnu_serial = time.monotonic() - t0

        batch = work / "batch.yaml"
        batch.write_text(
            "apiVersion: sierra.research.io/v1alpha1\nkind: SierraBatch\n"
            "metadata: {name: bench}\n"
            f"spec:\n  commandsFile: {commands.relative_to(root)}\n"
            f"  execution: {{parallelism: {args.parallelism}}}\n"
        )
        total, proc = timed(local_cmd(batch, root, None), timeout=900)
        found = dict(re.findall(r"(server start|provisioning|execution) ([0-9.]+)s", proc.stdout))
        print(next(line for line in proc.stdout.splitlines() if line.startswith("timings:")))
        server = float(found["server start"])
        without_server = total - server
        gaps = refill_gaps(commands.parent, args.parallelism)
        date = time.strftime("%Y-%m-%d %H:%M")
        load = os.getloadavg()[0]
        print(
            "| date (load) | runs | GNU parallel --jobs P (all / per exp) | sierra-operator "
            "local (total / server start / excl. server / execution) | ratio excl. server "
            "(vs all / per exp) | ratio incl. server | refill gap median (max) |"
        )
        print(
            f"| {date} ({load:.1f}), P={p}, step {args.step_seconds} s | 12 | "
            f"{gnu_all:.1f} s / {gnu_serial:.1f} s | {total:.1f} s / {server:.1f} s / "
            f"{without_server:.1f} s / {float(found['execution']):.1f} s | "
            f"**{without_server / gnu_all:.2f}x** / {without_server / gnu_serial:.2f}x | "
            f"{total / gnu_all:.1f}x | {statistics.median(gaps):.3f} s ({max(gaps):.3f} s) |"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

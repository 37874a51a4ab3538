"""Benchmark: the same 12 tiny runs through `sierra-operator local` and through GNU parallel.

Makes a SIERRA-style batch (3 experiments x 4 runs, a per-batch commands.txt naming
exp-inputs/<exp>/ in each line, runs of ~0.5 s of tinysim), then times in this one process:

* GNU parallel over the whole commands.txt (`parallel -j P`: no experiment ordering at all,
  the lower bound) and per experiment (SIERRA's GNU-parallel way: experiments one after
  another);
* `sierra-operator local` with its own Prefect server, whose own timings split server start
  from provisioning and execution.

Prints one table row with the ratios (target: <= 3x GNU parallel excluding server start).
Needs GNU parallel: `apt-get install parallel`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
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


def timed(cmd: list[str], **kw: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.monotonic() - t0, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    args = parser.parse_args()
    if not shutil.which("parallel"):
        raise SystemExit("GNU parallel is needed: apt-get install parallel")
    work = Path(tempfile.mkdtemp(prefix="sierra-bench-"))
    try:
        root = work / "sierra-root"
        commands = make_batch(root, 3, 4, args.step_seconds)
        p = str(args.parallelism)
        gnu_all, _ = timed(["parallel", "--will-cite", "-j", p], stdin=commands.open())
        t0 = time.monotonic()
        for exp in sorted((commands.parent / "exp-inputs").iterdir()):
            timed(["parallel", "--will-cite", "-j", p], stdin=(exp / "commands.txt").open())
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
        server = float(found["server start"])
        without_server = total - server
        date = time.strftime("%Y-%m-%d")
        print(
            "| date | runs | GNU parallel (all / per exp) | sierra-operator local "
            "(total / excl. server / execution) | ratio excl. server (vs all / per exp) "
            "| ratio incl. server |"
        )
        print(
            f"| {date} | 12 | {gnu_all:.1f} s / {gnu_serial:.1f} s | {total:.1f} s / "
            f"{without_server:.1f} s / {float(found['execution']):.1f} s | "
            f"{without_server / gnu_all:.1f}x / {without_server / gnu_serial:.1f}x | "
            f"{total / gnu_all:.1f}x |"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

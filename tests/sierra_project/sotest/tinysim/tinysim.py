"""A deterministic toy simulator: reads its JSON input, writes CSV outputs.

What a run writes depends only on its input file (speed, seed, ticks), so the same batch
gives byte-identical outputs whichever execution environment ran it. Test hooks, from the
environment: TINYSIM_LOG (append one line per execution: "<pid> <input file>"), TINYSIM_FAIL
(runs whose input path contains this string exit 3 before writing anything), TINYSIM_SLEEP
(seconds to sleep first: a run that is still going when a test interrupts stage 2).
Standard library only: any python3 on PATH can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    log = os.environ.get("TINYSIM_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {args.config}\n")
    time.sleep(float(os.environ.get("TINYSIM_SLEEP", "0")))
    fail = os.environ.get("TINYSIM_FAIL")
    if fail and fail in args.config:
        print(f"tinysim: injected failure for {args.config}", file=sys.stderr)
        return 3
    config = json.loads(pathlib.Path(args.config).read_text())["config"]
    rng = random.Random(int(config["seed"]))
    speed = float(config["speed"])
    out = pathlib.Path(config["output_root"])
    out.mkdir(parents=True, exist_ok=True)
    position = 0.0
    rows = ["clock,position,collected"]
    collected = 0
    for clock in range(int(config["ticks"])):
        position += speed * rng.uniform(0.5, 1.5)
        collected += rng.random() < 0.1 * speed
        rows.append(f"{clock},{position:.6f},{collected}")
    (out / "motion.csv").write_text("\n".join(rows) + "\n")
    print(f"tinysim: {len(rows) - 1} ticks at speed {speed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A tiny stand-in for a SIERRA engine run: simulate a few steps, write the result.

Used by the bundled example and the tests. Writes ``result.json`` into $SIERRA_RUN_OUTPUT
(or --out) and prints progress to stdout.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    parser.add_argument("--robots", type=int, default=4)
    parser.add_argument("--out", default=os.environ.get("SIERRA_RUN_OUTPUT", "."))
    parser.add_argument("--fail", action="store_true", help="exit 3, as a broken run would")
    parser.add_argument("--config", help="input file SIERRA generated (read if it exists)")
    args = parser.parse_args()
    if args.config and Path(args.config).exists():
        args.robots = int(json.loads(Path(args.config).read_text()).get("robots", args.robots))
    rng = random.Random(args.seed)
    started = time.time()
    collected = 0
    for step in range(args.steps):
        time.sleep(args.step_seconds)
        collected += sum(rng.random() < 0.3 for _ in range(args.robots))
        print(f"step {step}: collected {collected}", flush=True)
    if args.fail:
        print("simulated failure", file=sys.stderr)
        return 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(
        json.dumps(
            {
                "seed": args.seed,
                "robots": args.robots,
                "collected": collected,
                "started": started,
                "finished": time.time(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

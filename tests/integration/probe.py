"""A run command for the integration tests: logs when it starts and ends, sleeps, may fail.

Appends `start|end <experiment> <run> <attempt> <unix time> <exit code>` lines to
$SIERRA_BATCH_ROOT/events.log (O_APPEND: whole lines even from parallel runs) and writes
$SIERRA_RUN_OUTPUT/result.json on success.
"""

import json
import os
import sys
import time
from pathlib import Path


def event(kind: str, code: int = 0) -> None:
    line = (
        f"{kind} {os.environ['SIERRA_EXPERIMENT']} {os.environ['SIERRA_RUN']} "
        f"{os.environ['SIERRA_ATTEMPT']} {time.time():.6f} {code}\n"
    )
    fd = os.open(
        Path(os.environ["SIERRA_BATCH_ROOT"]) / "events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT
    )
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> int:
    sleep = float(sys.argv[1])
    fail = len(sys.argv) > 2 and sys.argv[2] == "fail"
    event("start")
    print(
        f"probe {os.environ['SIERRA_EXPERIMENT']}/run{os.environ['SIERRA_RUN']} says hello",
        flush=True,
    )
    time.sleep(sleep)
    if fail:
        print("probe failing on purpose", file=sys.stderr, flush=True)
        event("end", 3)
        return 3
    Path(os.environ["SIERRA_RUN_OUTPUT"], "result.json").write_text(json.dumps({"ok": True}))
    event("end", 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

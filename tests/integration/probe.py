"""A run command for the integration tests: logs when it starts and ends, sleeps, may fail.

Appends `start|end <experiment> <run> <attempt> <unix time> <exit code>` lines to
$SIERRA_BATCH_ROOT/events.log (O_APPEND: whole lines even from parallel runs) and writes
$SIERRA_RUN_OUTPUT/result.json on success (for a SIERRA batch, which has no SIERRA_RUN_OUTPUT:
exp-outputs/<experiment>/template_run<k>_output/result.json, as a SIERRA engine would).
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


def note_overlaps() -> None:
    """Record this attempt's pid, and append to overlaps.log any other attempt of the same
    run whose process is alive right now: two attempts of one run must never overlap."""
    root = Path(os.environ["SIERRA_BATCH_ROOT"])
    run = f"{os.environ['SIERRA_EXPERIMENT']}.{os.environ['SIERRA_RUN']}"
    folder = root / "probe-pids"
    folder.mkdir(exist_ok=True)
    me = f"{run}.{os.environ['SIERRA_ATTEMPT']}.{os.getpid()}"
    (folder / me).touch()
    for other in folder.glob(f"{run}.*"):
        pid = int(other.name.rsplit(".", 1)[1])
        if other.name == me:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with (root / "overlaps.log").open("a") as log:
            log.write(f"{me} started while {other.name} was alive\n")


def main() -> int:
    sleep = float(sys.argv[1])
    fail = len(sys.argv) > 2 and sys.argv[2] == "fail"
    note_overlaps()
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
    out = os.environ.get("SIERRA_RUN_OUTPUT")
    if out is None:  # a SIERRA batch: write where a SIERRA engine writes
        out = (
            f"{os.environ['SIERRA_BATCH_ROOT']}/exp-outputs/{os.environ['SIERRA_EXPERIMENT']}/"
            f"template_run{os.environ['SIERRA_RUN']}_output"
        )
        Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "result.json").write_text(json.dumps({"ok": True}))
    event("end", 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

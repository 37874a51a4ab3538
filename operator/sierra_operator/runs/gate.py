"""A gate a prepared flow run waits at before it executes anything (local mode's prefetch).

Local mode creates the next experiment's flow run while the current one's last runs
execute, so Prefect's flow-run start (create, fork, the engine's API calls up to Running:
0.3-0.6 s on a small machine, more when the server is busy) overlaps with them instead of
following them. The prepared flow run must not execute a run before the state machine says
its wave may start: it waits here, on a file in the invocation's private directory, and the
driver writes the verdict once the machine decides (:data:`GO`), or decides it never will
(:data:`WITHDRAW`: a StopBatch failure, or the batch ended). A file, not an API object:
the driver and the flow run share this machine, and the wait costs the server nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

GO = "go"
WITHDRAW = "withdraw"
POLL_SECONDS = 0.01


def open_gate(path: Path, verdict: str) -> None:
    """Write the verdict atomically (a reader never sees half of it); the first one stands."""
    if verdict not in (GO, WITHDRAW):
        raise ValueError(f"a gate's verdict is {GO!r} or {WITHDRAW!r}, not {verdict!r}")
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(verdict)
    os.replace(tmp, path)


def wait_at_gate(path: Path, poll: float = POLL_SECONDS) -> bool:
    """Block until the gate has a verdict: True to execute, False if withdrawn."""
    while True:
        try:
            verdict = path.read_text()
        except FileNotFoundError:
            time.sleep(poll)
            continue
        if verdict not in (GO, WITHDRAW):
            raise ValueError(f"gate {path} holds {verdict!r}, not {GO!r} or {WITHDRAW!r}")
        return verdict == GO

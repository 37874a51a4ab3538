"""Wake local mode's loop when a run of the current experiment starts or ends.

Local mode's loop asked Prefect every 0.1 s (two API reads): 20 requests a second to a
server sharing a small machine's cores with the runs, and still up to 0.1 s late. Runs
write their files into their experiment's directory under sierra-root as they start
(stdout, stderr) and end (the durable record, renamed into place), which changes that
directory's modification time: a ``stat`` every few milliseconds sees it at once, for
nothing. The loop observes Prefect when it changed, and at least every ``interval`` seconds
for what only Prefect knows (a flow-run process that died, task states). A change the
clock's granularity hides (two within one timestamp tick) costs latency, never a result:
the next observe, at most ``interval`` later, reads everything anyway.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

WATCH_SECONDS = 0.01  # between two stats of the directory


class RecordWatch:
    """The modification time of one experiment's run directory, compared between waits."""

    def __init__(self) -> None:
        self._seen: dict[Path, int] = {}

    def _mtime(self, directory: Path) -> int:
        try:
            return os.stat(directory).st_mtime_ns
        except FileNotFoundError:
            return 0

    def wait(self, directory: Path | None, interval: float, alive: Callable[[], None]) -> bool:
        """Block until ``directory`` changes (True) or ``interval`` seconds pass (False);
        ``alive`` is called between stats (it raises if what the runs need died)."""
        deadline = time.monotonic() + interval
        if directory is None:
            time.sleep(interval)
            alive()
            return False
        seen = self._seen.get(directory)
        while True:
            now = self._mtime(directory)
            if seen is not None and now != seen:
                self._seen[directory] = now
                return True
            seen = now
            self._seen[directory] = now
            if time.monotonic() >= deadline:
                return False
            time.sleep(WATCH_SECONDS)
            alive()

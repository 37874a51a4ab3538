"""SIGTERM handled as Ctrl-C by the researcher's commands and the SIERRA cluster stage 2.

Why: a transfer pod is deleted on the way out of a cancelled transfer, which Ctrl-C gives
(``asyncio.run`` cancels the main task on SIGINT, so every ``finally`` runs). SIGTERM (a
scheduler's or a terminal's way to stop a process) would otherwise end the process at once
and leave the pod running for a day.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def _as_ctrl_c(signum: int, frame: FrameType | None) -> None:
    signal.raise_signal(signal.SIGINT)


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While inside, SIGTERM raises SIGINT (whatever handles Ctrl-C then handles it). Off
    the main thread, where signal handlers cannot be set, SIGTERM keeps its handler."""
    try:
        previous = signal.signal(signal.SIGTERM, _as_ctrl_c)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""RecordWatch: local mode's loop wakes when a run's files appear, not on a fixed 0.1 s poll."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sierra_operator.local.record_watch import RecordWatch

pytestmark = pytest.mark.unit


def nothing() -> None:
    pass


def test_a_new_file_wakes_the_wait_and_silence_times_out(tmp_path: Path):
    watch = RecordWatch()
    t0 = time.monotonic()
    assert watch.wait(tmp_path, 0.2, nothing) is False, "nothing changed"
    assert time.monotonic() - t0 >= 0.2
    timer = threading.Timer(0.1, lambda: (tmp_path / "run0.result.json").write_text("{}"))
    timer.start()
    t0 = time.monotonic()
    assert watch.wait(tmp_path, 5.0, nothing) is True
    assert time.monotonic() - t0 < 2.0, "woken by the file, not by the 5 s interval"
    assert watch.wait(tmp_path, 0.05, nothing) is False, "the same change wakes only once"


def test_a_directory_made_later_and_a_dead_executor(tmp_path: Path):
    later = tmp_path / "c1-exp1"
    watch = RecordWatch()
    assert watch.wait(later, 0.05, nothing) is False
    later.mkdir()
    assert watch.wait(later, 1.0, nothing) is True, "its appearance is a change"

    def dead() -> None:
        raise RuntimeError("the flow-run executor exited")

    with pytest.raises(RuntimeError, match="executor exited"):
        watch.wait(later, 5.0, dead)
    assert watch.wait(None, 0.01, nothing) is False, "no current experiment: just wait"

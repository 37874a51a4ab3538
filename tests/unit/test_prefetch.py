"""Local mode's prefetch: the gate file protocol and when a held wave is released,
kept or withdrawn. The Prefect side is a stand-in recording ``reveal`` calls (the real
server's part is covered by the local-mode integration tests)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from sierra_operator.core.machine import RunAttempt, SubmitRuns
from sierra_operator.local.prefetch import Prefetch
from sierra_operator.runs.gate import GO, WITHDRAW, open_gate, wait_at_gate

pytestmark = pytest.mark.unit


def wave(experiment: str, *attempts: int) -> SubmitRuns:
    index = int(experiment[-1])
    runs = tuple(RunAttempt(k, f"cmd {k}", a) for k, a in enumerate(attempts or (1, 1)))
    return SubmitRuns(experiment, index, runs)


@dataclass
class StandInPrefect:
    """What Prefetch asks of PrefectBatch: whether a flow run ended; reveal it."""

    dead: set[UUID] = field(default_factory=set)
    revealed: list[UUID] = field(default_factory=list)

    def ended(self, flow_run_id: UUID) -> bool:
        return flow_run_id in self.dead

    def reveal(self, flow_run_id: UUID) -> None:
        self.revealed.append(flow_run_id)


def test_a_gate_waits_for_its_verdict_and_the_first_verdict_stands(tmp_path: Path):
    gate = tmp_path / "gates" / "g"
    seen: list[bool] = []
    waiter = threading.Thread(target=lambda: seen.append(wait_at_gate(gate)))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive() and not seen, "no verdict yet: still waiting"
    open_gate(gate, GO)
    waiter.join(timeout=5)
    assert seen == [True]
    open_gate(gate, WITHDRAW)  # too late: it went already
    assert gate.read_text() == GO
    other = tmp_path / "gates" / "h"
    open_gate(other, WITHDRAW)
    assert wait_at_gate(other) is False
    assert sorted(p.name for p in other.parent.iterdir()) == ["g", "h"], "no temp files left"
    with pytest.raises(ValueError, match="'go' or 'withdraw'"):
        open_gate(tmp_path / "x", "maybe")


def _prepare(prefetch: Prefetch, prepared: SubmitRuns, flow_run_id: UUID) -> Path:
    """What the driver does to hold a wave: a new gate, then the flow run waiting there."""
    gate = prefetch.new_gate(prepared)
    prefetch.hold(prepared, flow_run_id, gate)
    return gate


def test_the_held_wave_is_released_when_its_own_wave_is_decided(tmp_path: Path):
    prefetch, prefect, run_id = Prefetch(tmp_path), StandInPrefect(), uuid4()
    gate = _prepare(prefetch, wave("c1-exp1"), run_id)
    assert not prefetch.release(wave("c1-exp0", 2), prefect), "a retry of exp0 comes first"
    assert prefetch.held is not None and not gate.exists(), "...and exp1 stays held"
    assert prefetch.release(wave("c1-exp1"), prefect)
    assert gate.read_text() == GO and prefect.revealed == [run_id] and prefetch.held is None


def test_a_held_wave_that_cannot_be_released_is_withdrawn(tmp_path: Path):
    prefetch, prefect = Prefetch(tmp_path), StandInPrefect()
    first = _prepare(prefetch, wave("c1-exp1"), uuid4())
    assert not prefetch.release(wave("c1-exp1", 2, 1), prefect), "another wave of exp1"
    assert first.read_text() == WITHDRAW
    dead = uuid4()
    second = _prepare(prefetch, wave("c1-exp2"), dead)
    prefect.dead.add(dead)
    assert not prefetch.release(wave("c1-exp2"), prefect), "its process died: submit anew"
    assert second.read_text() == WITHDRAW
    assert prefect.revealed == [] and prefetch.withdrawn == 2


def test_a_wave_prepared_again_after_a_withdraw_gets_a_gate_of_its_own(tmp_path: Path):
    """The same wave (same runs, same attempts) prepared, withdrawn and prepared again:
    the second preparation must not find the first one's verdict at its gate (it would
    end at once, withdrawn) and is released by its own GO."""
    prefetch, prefect = Prefetch(tmp_path), StandInPrefect()
    first = _prepare(prefetch, wave("c1-exp1"), uuid4())
    prefetch.withdraw()
    assert first.read_text() == WITHDRAW
    again, run_id = prefetch.new_gate(wave("c1-exp1")), uuid4()
    assert again != first and not again.exists(), "a fresh gate, no verdict on it yet"
    prefetch.hold(wave("c1-exp1"), run_id, again)
    assert prefetch.release(wave("c1-exp1"), prefect)
    assert wait_at_gate(again) is True and first.read_text() == WITHDRAW
    assert prefect.revealed == [run_id]

"""Local mode's prefetch: the next experiment's flow run is started early and held at a gate.

Between two experiments local mode used to pay Prefect's flow-run start in series: the
driver sees the last run end, creates the next flow run, the executor hands it to a process
and Prefect's engine reads and updates it up to Running before the first run starts
(0.3-0.6 s idle, seconds when the SQLite server answers 503 and the client backs off 2 s).
With prefetch, as soon as the current experiment's last wave is submitted,
:func:`~sierra_operator.core.machine.next_wave` says what comes next; that flow run is
created and started at once, and waits at its gate (:mod:`~sierra_operator.runs.gate`).
When :func:`~sierra_operator.core.machine.decide` submits that very wave, the gate opens
instead of a flow run being created: the state machine stays the one source of decisions,
the parallelism bound holds (the gate opens only when decide would have started the wave)
and a prepared wave that is never decided (StopBatch, the batch ended) is withdrawn having
run nothing, its flow run Cancelled. Its runs are hidden from the state machine until the
gate opens (:meth:`PrefectBatch.reveal`), so a held wave never counts as submitted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from sierra_operator.core.machine import SubmitRuns
from sierra_operator.runs.gate import GO, WITHDRAW, open_gate

if TYPE_CHECKING:
    from sierra_operator.runs.prefect_api import PrefectBatch


@dataclass(frozen=True)
class PreparedWave:
    """A wave started ahead: its flow run and the gate it waits at."""

    experiment: str
    wave_key: str
    flow_run_id: UUID
    gate: Path


@dataclass
class Prefetch:
    """At most one prepared wave at a time, with its gate under ``gate_dir`` (private to
    this invocation: nothing is written under sierra-root)."""

    gate_dir: Path
    held: PreparedWave | None = None
    released: int = 0  # prepared waves whose gate opened (for tests and timings)
    withdrawn: int = 0
    prepared: int = 0  # gates handed out so far: each preparation has its own

    def new_gate(self, wave: SubmitRuns) -> Path:
        """A gate no earlier preparation used, for the prepared flow run of ``wave``.

        One per preparation, never one per wave: a wave withdrawn (its gate says
        ``withdraw``) can be prepared again later (the same runs, the same attempts), and
        that preparation must neither find the old verdict at its gate nor, through the
        gate's name in its idempotency key (:meth:`PrefectBatch.submit`), be handed the
        old, Cancelled flow run."""
        self.prepared += 1
        digest = hashlib.sha256(wave.wave_key.encode()).hexdigest()[:16]
        return self.gate_dir / f"{wave.experiment}-{digest}-{self.prepared}"

    def hold(self, wave: SubmitRuns, flow_run_id: UUID, gate: Path) -> None:
        """Remember the flow run just started for ``wave``, waiting at ``gate``
        (from :meth:`new_gate`)."""
        self.held = PreparedWave(wave.experiment, wave.wave_key, flow_run_id, gate)

    def release(self, action: SubmitRuns, prefect: PrefectBatch) -> bool:
        """Open the held wave's gate if it is ``action``'s and its flow run is alive: True
        means ``action`` is under way, nothing to create; False: the caller submits
        ``action`` itself. A held wave of ``action``'s experiment that is not ``action``
        (or whose process died before its gate opened) can never be released and is
        withdrawn; one of a later experiment stays held (``action`` retries runs of the
        current experiment first)."""
        held = self.held
        if held is None or held.experiment != action.experiment:
            return False
        if held.wave_key == action.wave_key and not prefect.ended(held.flow_run_id):
            open_gate(held.gate, GO)
            prefect.reveal(held.flow_run_id)
            self.held = None
            self.released += 1
            return True
        self.withdraw()
        return False

    def withdraw(self) -> None:
        """Tell the held wave it will never run (it ends Cancelled; its runs stay hidden)."""
        if self.held is not None:
            open_gate(self.held.gate, WITHDRAW)
            self.held = None
            self.withdrawn += 1

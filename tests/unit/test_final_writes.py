"""FinalWrites: a batch whose final status the operator just wrote is not reconciled again
from an older copy of it (what made 100 batches finishing together cost 1,968 requests)."""

from __future__ import annotations

from typing import Any

import pytest

from sierra_operator.core.idle import STALE_BODY_SECONDS, FinalWrites

pytestmark = pytest.mark.unit


def body(phase: str, generation: int = 1, complete: bool = False) -> dict[str, Any]:
    conditions = [{"type": "Complete", "status": "True" if complete else "False"}]
    return {
        "metadata": {"uid": "u1", "generation": generation},
        "status": {"phase": phase, "observedGeneration": generation, "conditions": conditions},
    }


def test_an_older_copy_is_left_alone_until_it_shows_the_final_status():
    writes = FinalWrites()
    running = body("Running")
    assert not writes.pending(running, 0.0), "nothing written yet: reconcile"
    writes.wrote(running, 10.0)
    assert writes.pending(running, 11.0), "the copy still says Running: skip"
    assert writes.pending(running, 10.0 + STALE_BODY_SECONDS - 1)
    assert not writes.pending(body("Succeeded", complete=True), 12.0), "caught up"
    assert not writes.pending(running, 13.0), "and forgotten once seen"


def test_a_write_that_never_shows_is_redone_and_a_new_generation_is_reconciled():
    writes = FinalWrites()
    writes.wrote(body("Running"), 0.0)
    assert not writes.pending(body("Running"), STALE_BODY_SECONDS), "lost write: redo"
    writes.wrote(body("Running"), 100.0)
    assert not writes.pending(body("Running", generation=2), 101.0), "the spec changed"
    writes.wrote(body("Running"), 200.0)
    writes.forget("u1")
    assert not writes.pending(body("Running"), 201.0), "deleted"

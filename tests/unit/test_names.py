"""Names observers parse back: a task run's name is how its run is found (no tags)."""

from __future__ import annotations

import pytest

from sierra_operator.core import names


@pytest.mark.parametrize("experiment", ["c1-exp0", "exp/run7/attempt2", "a b"])
@pytest.mark.parametrize(("index", "attempt"), [(0, 1), (12, 3)])
def test_task_run_name_gives_back_its_run(experiment: str, index: int, attempt: int) -> None:
    name = names.run_task_run_name(experiment, index, attempt)
    assert names.run_index_of_task_run(name) == index


@pytest.mark.parametrize("name", ["sierra-run-0", "c1-exp0/run/attempt1", "c1-exp0/run1"])
def test_other_task_run_names_have_no_run(name: str) -> None:
    assert names.run_index_of_task_run(name) is None


@pytest.mark.parametrize("experiment", ["c1-exp0", "exp-held-12345678-x", "a b"])
def test_a_hold_queue_names_its_experiment_and_differs_per_wave(experiment: str) -> None:
    """A restarted operator learns which experiment a paused queue holds from its name alone;
    two waves of one experiment never share a queue (a withdrawn one is never reused)."""
    one = names.hold_queue("sierra-queue", experiment, f"{experiment}:0.1,1.1@3")
    other = names.hold_queue("sierra-queue", experiment, f"{experiment}:0.2,1.1@3")
    assert one != other
    assert names.held_experiment("sierra-queue", one) == experiment
    assert names.held_experiment("other-queue", one) is None, "another batch queue's"


@pytest.mark.parametrize("name", ["sierra-queue", "default", "sierra-queue-held-xyz-exp0"])
def test_other_queues_hold_nothing(name: str) -> None:
    assert names.held_experiment("sierra-queue", name) is None

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

"""A failure reason has one definition (core/reasons.py) and one bound (issue 22 item 9):
what the flow writes for a failed attempt reaches status whole, its stderr's last line
included, through Prefect's state message and the observations that read it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sierra_operator.core.reasons import (
    REASON_CHARS,
    WAVE_REASONS_CHARS,
    attempt_failure_reason,
    failure_reason_from_message,
    wave_failure_message,
    wave_outcomes,
)

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "sierra_operator"


def _defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_reason_names_are_defined_once_in_the_package():
    """Two REASON_CHARS of different sizes (600 and 800) once meant a reason the flow made
    could be cut again on the way to status; each name now has one home."""
    for name in ("REASON_CHARS", "REASON_LINES", "failure_reason", "_MESSAGE_PREFIXES"):
        homes = [p for p in PACKAGE.rglob("*.py") if name in _defined_names(p)]
        assert len(homes) <= 1, (name, homes)
    assert [p.name for p in PACKAGE.rglob("*.py") if "REASON_CHARS" in _defined_names(p)] == [
        "reasons.py"
    ]


def test_a_long_stderr_keeps_its_last_line_through_the_state_message():
    """The flow raises RunFailed('<exp>/run<k> <reason>'); Prefect prefixes it; the
    observation strips the prefixes again. The last stderr line must survive the trip."""
    stderr = "\n".join(f"noise line {i} " + "x" * 300 for i in range(4))
    stderr += "\nModuleNotFoundError: No module named 'numpy'"
    reason = attempt_failure_reason(3, False, None, stderr)
    assert len(reason) <= REASON_CHARS
    assert reason.startswith("exited 3; stderr ends: ...")
    assert reason.endswith("No module named 'numpy'")
    message = f"Flow run encountered an exception: RunFailed: c1-exp0/run2 {reason}"
    assert failure_reason_from_message(message, "c1-exp0", 2, "fallback") == reason


def test_a_timeout_names_the_setting_and_an_empty_stderr_adds_nothing():
    assert attempt_failure_reason(-9, True, 30, "  \n") == (
        "timed out after 30s (execution.runTimeoutSeconds)"
    )
    assert attempt_failure_reason(2, False, None, "") == "exited 2"


def test_a_long_foreign_message_is_cut_at_the_end_and_an_empty_one_falls_back():
    long = "Crashed: " + "y" * 2000
    cut = failure_reason_from_message(long, "e", 0, "fallback")
    assert len(cut) == REASON_CHARS and cut.startswith("Crashed: ") and cut.endswith("...")
    assert failure_reason_from_message("  ", "e", 0, "flow run x ended CRASHED") == (
        "flow run x ended CRASHED"
    )


def test_a_failed_waves_message_round_trips_each_runs_outcome():
    reasons = {1: "exited 3; stderr ends: boom", 4: "timed out after 9s (x)"}
    message = wave_failure_message("e: run(s) 1, 4 failed", [0, 2, 3], reasons)
    prefixed = "Flow run encountered an exception: RunFailed: " + message
    headline, outcomes = wave_outcomes(prefixed)
    assert headline.endswith("e: run(s) 1, 4 failed")
    assert outcomes == {0: None, 2: None, 3: None, **reasons}


def test_a_failed_waves_message_stays_bounded_and_keeps_every_run():
    """100 runs in a pod, all failing with long reasons: each is still named (so none
    waits for the grace), the later ones by the head of their reason."""
    long = "exited 1; stderr ends: " + "z" * (REASON_CHARS - 30)
    message = wave_failure_message("e: all failed", [], {i: long for i in range(100)})
    assert len(message) < WAVE_REASONS_CHARS + 100 * 100
    _, outcomes = wave_outcomes(message)
    assert sorted(outcomes) == list(range(100))
    assert outcomes[0] == long and outcomes[99] == "exited 1"


@pytest.mark.parametrize(
    "message",
    [
        None,
        "",
        "Job reported a failed pod",
        "x\nsierra-operator outcomes: {not json",
        'x\nsierra-operator outcomes: {"succeeded": 3}',
    ],
)
def test_a_message_without_readable_outcomes_names_none(message):
    assert wave_outcomes(message)[1] == {}

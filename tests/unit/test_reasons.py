"""A failure reason has one definition (core/reasons.py) and one bound (issue 22 item 9):
what the flow writes for a failed attempt reaches status whole, its stderr's last line
included, through Prefect's state message and the observations that read it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sierra_operator.core.reasons import (
    REASON_CHARS,
    attempt_failure_reason,
    failure_reason_from_message,
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

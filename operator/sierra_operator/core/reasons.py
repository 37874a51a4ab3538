"""Why a run failed, as one short line of status: the single definition of a failure reason.

Two sources make reasons, and both end up in ``status.failedRuns[].reason``: the flow that
ran the command (exit code or timeout, and the stderr's last lines, which usually name the
cause) and Prefect's state message when the flow run itself failed, crashed or was
cancelled. Both are bounded by the same :data:`REASON_CHARS`, so a reason the flow made is
never cut a second time on its way to status (which would drop the stderr's last line, the
one that matters).

Pure string functions (no I/O): the core, the flows and the observations share them.
"""

from __future__ import annotations

import json

REASON_CHARS = 800
"""The longest failure reason a run's status holds (etcd objects stay small)."""
REASON_LINES = 5
"""Lines of a failed attempt's stderr quoted in its reason."""
ELLIPSIS = "..."

# Prefixes Prefect and our flows put before the text that says why (exception class names
# included: RunFailed from runs/flows.py, AttemptRefused from runs/ledger.py).
_MESSAGE_PREFIXES = (
    "Flow run encountered an exception: ",
    "Task run encountered an exception ",
    "Task run encountered an exception: ",
    "RunFailed: ",
    "AttemptRefused: ",
)


def attempt_failure_reason(
    code: int, timed_out: bool, timeout: int | None, stderr_tail: str
) -> str:
    """Why an attempt's command failed: its exit code (or the timeout) and the end of its
    stderr, cut at the front so the whole fits :data:`REASON_CHARS`."""
    head = f"timed out after {timeout}s (execution.runTimeoutSeconds)" if timed_out else ""
    head = head or f"exited {code}"
    last = stderr_tail.strip()
    if not last:
        return head
    head = f"{head}; stderr ends: "
    room = REASON_CHARS - len(head)
    if len(last) > room:
        last = ELLIPSIS + last[-(room - len(ELLIPSIS)) :]
    return head + last


def failure_reason_from_message(
    message: str | None, experiment: str, index: int, fallback: str
) -> str:
    """A Prefect state message as run ``experiment``/``index``'s failure reason: Prefect's
    and our prefixes removed, ``fallback`` when nothing is left, at most
    :data:`REASON_CHARS` (cut at the end: a foreign message says what failed first)."""
    text = (message or "").strip()
    changed = True
    while changed:
        changed = False
        for prefix in (*_MESSAGE_PREFIXES, f"{experiment}/run{index} "):
            if text.startswith(prefix):
                text, changed = text[len(prefix) :].lstrip(), True
    text = text or fallback
    if len(text) <= REASON_CHARS:
        return text
    return text[: REASON_CHARS - len(ELLIPSIS)] + ELLIPSIS


# ------------------------------------------------------------------ a failed wave's outcomes

WAVE_OUTCOMES_MARKER = "\nsierra-operator outcomes: "
"""Starts the machine-readable part of a failed wave's state message (after its headline)."""
WAVE_REASONS_CHARS = 16_000
"""Full reasons a failed wave's message carries; past this, failed runs get the reason's
head ("exited 3"): the message is read with the flow run until it is settled."""


def wave_failure_message(headline: str, succeeded: list[int], failed: dict[int, str]) -> str:
    """A failed wave's state message: ``headline`` for people, then each run's outcome.

    Why: the flow run's final state is written by a direct request, its task runs' states
    through events that reach the database later (a minute on a loaded server). Without its
    runs' outcomes in its own message, a FAILED packed flow run in the cluster (no records to
    read: the PVC is the pods') left the batch waiting for those events; with them, every
    run is settled the moment the flow run is seen failed."""
    budget = WAVE_REASONS_CHARS
    reasons = {}
    for index, reason in sorted(failed.items()):
        if len(reason) > budget:
            reason = reason.split(";", 1)[0][:80]
        budget -= len(reason)
        reasons[str(index)] = reason
    outcomes = {"succeeded": sorted(succeeded), "failed": reasons}
    return headline + WAVE_OUTCOMES_MARKER + json.dumps(outcomes, separators=(",", ":"))


def wave_outcomes(message: str | None) -> tuple[str, dict[int, str | None]]:
    """``message``'s headline, and the outcome of each run it names (None: succeeded, else
    the failure reason). A message without outcomes, or with unreadable ones, names none."""
    text = message or ""
    headline, marker, tail = text.partition(WAVE_OUTCOMES_MARKER)
    if not marker:
        return text, {}
    try:
        data = json.loads(tail)
        out: dict[int, str | None] = {int(i): None for i in data["succeeded"]}
        out.update({int(i): str(reason) for i, reason in data["failed"].items()})
    except (ValueError, TypeError, KeyError, AttributeError):
        return headline, {}
    return headline, out

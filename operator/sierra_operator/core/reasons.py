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

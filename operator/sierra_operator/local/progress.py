"""What local mode shows a person: a live progress bar, then a summary table."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from sierra_operator.core.machine import RunKey
from sierra_operator.core.model import BatchStatus


def status_line(status: BatchStatus) -> str:
    """One line: phase, current experiment, run counts."""
    r = status.runs
    exp = status.current_experiment_name or "-"
    n_exp = len(status.experiments)
    idx = (status.current_experiment or 0) + 1 if status.current_experiment is not None else n_exp
    return (
        f"{status.phase.value}: experiment {idx}/{n_exp} ({exp}); runs "
        f"{r.succeeded} succeeded, {r.failed} failed, {r.running} running, "
        f"{r.pending} pending of {r.total}"
    )


class ProgressView:
    """A rich progress bar on a terminal; one line per change elsewhere (CI logs, pipes)."""

    def __init__(self, console: Console, total_runs: int) -> None:
        self.console = console
        self._last = ""
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task("starting", total=total_runs, detail="")
            self._progress.start()

    def update(self, status: BatchStatus) -> None:
        """Show the new status if anything changed."""
        line = status_line(status)
        if line == self._last:
            return
        self._last = line
        r = status.runs
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=r.succeeded + r.failed,
                description=status.current_experiment_name or status.phase.value,
                detail=f"ok {r.succeeded} failed {r.failed} running {r.running}",
            )
        else:
            self.console.print(line, highlight=False, markup=False, emoji=False, soft_wrap=True)

    def note(self, message: str) -> None:
        """A line above the bar (server started, workers up...); plain text, never markup:
        it holds paths and names from the user."""
        self.console.print(message, highlight=False, markup=False, emoji=False, soft_wrap=True)

    def close(self) -> None:
        """Stop redrawing the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def summary_table(status: BatchStatus, failed_runs: Sequence[RunKey]) -> Table:
    """Per-experiment outcome, then the failed runs by name."""
    table = Table(title=f"Batch {status.phase.value}", title_justify="left")
    for col in ("experiment", "phase", "runs", "succeeded", "failed", "not run"):
        table.add_column(col, justify="left" if col in ("experiment", "phase") else "right")
    for exp in status.experiments:
        table.add_row(
            exp.name,
            exp.phase.value,
            str(exp.total),
            str(exp.succeeded),
            str(exp.failed),
            str(exp.pending + exp.running),
        )
    if failed_runs:
        # Text, not markup: names come from the user's files.
        table.caption = Text("failed: " + ", ".join(f"{e}/run{i}" for e, i in failed_runs))
    return table


def failure_lines(status: BatchStatus, failed_runs: Sequence[RunKey]) -> list[str]:
    """One line per failed run with its reason and full log, as status records them (the
    first ones; the rest are counted): what a user needs before opening any file."""
    lines = [
        f"{f.experiment}/run{f.run} (attempt {f.attempt}): {f.reason or 'failed'}"
        + (f" [full stderr: {f.log}]" if f.log else "")
        for f in status.failed_runs
    ]
    if len(failed_runs) > len(status.failed_runs):
        lines.append(f"... and {len(failed_runs) - len(status.failed_runs)} more failed run(s)")
    return lines

"""Draw the benchmark figures of docs/benchmarks.md from the tables in bench/README.md.

bench/README.md keeps every measured row with its date; this turns three of its tables into
PNGs (checked in under docs/img/, redrawn when rows are added):

    python scripts/bench_figures.py              # writes docs/img/bench-*.png
    python scripts/bench_figures.py --out DIR    # elsewhere (tests/unit/test_docs.py)
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parent.parent
README = REPO / "bench" / "README.md"
Table = list[dict[str, str]]


def tables(text: str) -> list[Table]:
    """Every Markdown table of ``text`` as rows keyed by header cell. Rows set apart by a
    blank line (no header of their own) continue the table above them."""
    found: list[Table] = []
    header: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith("|-"):
            header = cells
            found.append([])
        elif found:
            found[-1].append(dict(zip(header, cells, strict=False)))
    return found


def tables_with(text: str, *columns: str) -> list[Table]:
    """The tables whose header has every one of ``columns`` (prefixes)."""
    return [
        table
        for table in tables(text)
        if table and all(any(h.startswith(c) for h in table[0]) for c in columns)
    ]


def table_with(text: str, *columns: str) -> Table:
    """The first table whose header has every one of ``columns`` (prefixes)."""
    found = tables_with(text, *columns)
    if not found:
        raise LookupError(f"bench/README.md: no table with columns {columns}")
    return found[0]


def column(row: dict[str, str], prefix: str) -> str:
    return next(v for k, v in row.items() if k.startswith(prefix))


def first_number(cell: str) -> float | None:
    """The first number of a cell (bold or not), or None when the cell starts aside."""
    if cell.startswith("("):
        return None
    match = re.search(r"-?\d[\d,]*(\.\d+)?", cell.replace("**", ""))
    return float(match.group(0).replace(",", "")) if match else None


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def local_vs_parallel(text: str, out: Path) -> Path:
    """Local mode's wall time excluding the server start, as a ratio to GNU parallel."""
    table = table_with(text, "date (load)", "ratio excl. server")
    fig, ax = plt.subplots(figsize=(9, 4))
    for step, colour in (("step 0.1 s", "tab:orange"), ("step 1.0 s", "tab:blue")):
        points = [
            (i, ratio)
            for i, row in enumerate(table)
            if step in row["date (load)"]
            and (ratio := first_number(column(row, "ratio excl. server"))) is not None
        ]
        label = {"step 0.1 s": "0.5 s runs", "step 1.0 s": "5 s runs"}[step]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=colour, label=label)
    ax.axhline(1.5, color="grey", linestyle="--", label="target 1.5x")
    ax.set_xlabel("measurement (bench/README.md row, oldest first)")
    ax.set_ylabel("x GNU parallel (excl. server start)")
    ax.set_title("sierra-operator local vs GNU parallel, 12 runs, parallelism 2")
    ax.set_yscale("log")
    ax.legend()
    return _save(fig, out / "bench-local-vs-parallel.png")


def submission_rate(text: str, out: Path) -> Path:
    """Flow runs created per second, by database, path and requests in flight."""
    table = table_with(text, "date (UTC)", "database", "path", "rate")
    rows = [r for r in table if first_number(r["rate"]) is not None]
    labels = [
        f"{r['date (UTC)'].split(' (')[0][5:]} {r['database']} {r['path'].split(' (')[0]} "
        f"x{r['requests in flight']}"
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.2))
    colours = ["tab:green" if r["database"] == "PostgreSQL" else "tab:purple" for r in rows]
    ax.barh(range(len(rows)), [first_number(r["rate"]) or 0 for r in rows], color=colours)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(17, color="grey", linestyle="--", label="target 17/s (1,000 runs < 60 s)")
    ax.set_xlabel("flow runs created per second (purple: SQLite, green: PostgreSQL)")
    ax.set_title("Flow-run submission rate (submission_rate.py)")
    ax.legend(loc="lower right")
    return _save(fig, out / "bench-submission-rate.png")


def scale_advance(text: str, out: Path) -> Path:
    """Median experiment-advance latency of many batches on one operator."""
    found = tables_with(text, "date (UTC)", "batches x runs", "advance latency median")
    if not found:
        raise LookupError("bench/README.md: no scale.py table")
    rows: list[tuple[str, str, float, int]] = []
    size = ""
    for t, table in enumerate(found):
        for r in table:
            value = first_number(column(r, "advance latency median"))
            cell = r["batches x runs"].replace("**", "").split(",")[0].split(" (")[0]
            size = size if cell == "same" else cell  # "same": as the row above
            if value is not None:
                rows.append((r["date (UTC)"].split(" (")[0][5:], size, value, t))
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.4))
    colours = ["tab:gray" if t == 0 else "tab:blue" for *_, t in rows]
    ax.barh(range(len(rows)), [v for _, _, v, _ in rows], color=colours)
    ax.set_yticks(range(len(rows)), [f"{d}  {size}" for d, size, _, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linestyle="--", label="target 1 s")
    ax.set_xscale("log")
    ax.set_xlabel(
        "median advance latency, s (log scale; grey: to the next run created, blue: to it runnable)"
    )
    ax.set_title("Experiment advance with many batches on one operator (scale.py)")
    ax.legend(loc="lower right")
    return _save(fig, out / "bench-scale-advance.png")


FIGURES: list[Callable[[str, Path], Path]] = [local_vs_parallel, submission_rate, scale_advance]


def draw(out: Path) -> list[Path]:
    """Draw every figure into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    text = README.read_text()
    return [figure(text, out) for figure in FIGURES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    for path in draw(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()

"""Writing batches and reading what their runs left behind (integration-test helpers)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROBE = Path(__file__).with_name("probe.py")


def probe(sleep: float, fail: bool = False) -> str:
    """Shell command running the probe."""
    return f"{sys.executable} {PROBE} {sleep}" + (" fail" if fail else "")


def inline_batch(name: str, experiments: list[list[str]], **execution: Any) -> dict[str, Any]:
    """A SierraBatch with inline experiments c1-exp0.. from lists of commands."""
    return {
        "apiVersion": "sierra.research.io/v1alpha1",
        "kind": "SierraBatch",
        "metadata": {"name": name},
        "spec": {
            "execution": execution,
            "experiments": [
                {"name": f"c1-exp{i}", "runs": [{"command": c} for c in cmds]}
                for i, cmds in enumerate(experiments)
            ],
        },
    }


def write_batch(path: Path, name: str, experiments: list[list[str]], **execution: Any) -> Path:
    """:func:`inline_batch` written as YAML to ``path``."""
    path.write_text(yaml.safe_dump(inline_batch(name, experiments, **execution)))
    return path


def local_cmd(batch: Path, root: Path, api_url: str | None, *extra: str) -> list[str]:
    """`sierra-operator local` as a user types it (through this interpreter)."""
    cmd = [
        sys.executable,
        "-m",
        "sierra_operator.cli",
        "local",
        str(batch),
        "--sierra-root",
        str(root),
    ]
    if api_url:
        cmd += ["--prefect-api-url", api_url, "--pool", f"test-{uuid.uuid4().hex[:8]}"]
    return cmd + list(extra)


def run_local(
    batch: Path,
    root: Path,
    api_url: str | None,
    *extra: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
):
    """Run local mode to the end; returns the CompletedProcess (text)."""
    return subprocess.run(
        local_cmd(batch, root, api_url, *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@dataclass(frozen=True)
class Event:
    kind: str
    experiment: str
    run: int
    attempt: int
    time: float
    code: int


def events(batch_root: Path) -> list[Event]:
    """Every start/end line the probes wrote."""
    path = batch_root / "events.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, exp, run, attempt, t, code = line.split()
        out.append(Event(kind, exp, int(run), int(attempt), float(t), int(code)))
    return out


def intervals(evs: list[Event]) -> dict[tuple[str, int, int], tuple[float, float]]:
    """(experiment, run, attempt) -> (start, end) for attempts that ended."""
    starts = {(e.experiment, e.run, e.attempt): e.time for e in evs if e.kind == "start"}
    return {
        (e.experiment, e.run, e.attempt): (starts[(e.experiment, e.run, e.attempt)], e.time)
        for e in evs
        if e.kind == "end"
    }


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, delta in points:
        cur += delta
        best = max(best, cur)
    return best


def status(batch_root: Path) -> dict[str, Any]:
    """The status.json local mode keeps."""
    return json.loads((batch_root / "scratch/sierra-operator/status.json").read_text())

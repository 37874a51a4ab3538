"""Writing batches and reading what their runs left behind (integration-test helpers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
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


def start_local(batch: Path, root: Path, api_url: str | None, *extra: str) -> subprocess.Popen[str]:
    """Local mode in the background (to interrupt or hurt it), its output in one pipe."""
    return subprocess.Popen(
        local_cmd(batch, root, api_url, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


def assert_only_sierra_outputs(batch_root: Path) -> None:
    """What SIERRA's stage 3 checks: every entry of exp-outputs/<exp>/ is one of its
    `<template>_run<k>_output` directories, and nothing of ours is under exp-inputs/."""
    outputs = sorted((batch_root / "exp-outputs").iterdir())
    assert outputs, "runs wrote their outputs"
    for exp in outputs:
        for entry in exp.iterdir():
            assert entry.is_dir() and re.fullmatch(r".+_run\d+_output", entry.name), entry
    for entry in (batch_root / "exp-inputs").rglob("*"):
        assert "sierra-operator" not in entry.name and entry.name != "attempts", entry


def check_invariants(batch_root: Path, runs: int) -> dict:
    """The invariants every fault must keep, from what the probes recorded; returns counts.

    Each attempt of a run executed at most once; no two attempts of a run overlapped (checked
    by each probe at its start: overlaps.log); every one of ``runs`` runs succeeded exactly
    once; no run lost.
    """
    evs = events(batch_root)
    starts: dict[tuple[str, int, int], int] = {}
    for e in evs:
        if e.kind == "start":
            starts[(e.experiment, e.run, e.attempt)] = (
                starts.get((e.experiment, e.run, e.attempt), 0) + 1
            )
    twice = {k: n for k, n in starts.items() if n > 1}
    assert not twice, f"attempts executed more than once: {twice}"
    overlaps = batch_root / "overlaps.log"
    assert not overlaps.exists(), overlaps.read_text()
    successes: dict[tuple[str, int], int] = {}
    for e in evs:
        if e.kind == "end" and e.code == 0:
            successes[(e.experiment, e.run)] = successes.get((e.experiment, e.run), 0) + 1
    assert len(successes) == runs, f"runs lost: {runs - len(successes)} of {runs} never succeeded"
    assert set(successes.values()) == {1}, f"runs that succeeded twice: {successes}"
    return {
        "runs": runs,
        "attempts started": len(starts),
        "attempts executed twice": 0,
        "overlaps": 0,
        "runs retried": len({(e, r) for (e, r, a) in starts if a > 1}),
    }


def require(what: str, ok: bool) -> None:
    """Missing tools skip here and fail in CI (scripts/test installs them)."""
    if not ok:
        message = f"these tests need {what} (bash scripts/test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def require_mount_namespaces() -> None:
    """The emulated kubelet mounts PVCs with ``unshare`` and ``pods/exec`` enters them with
    ``nsenter`` (util-linux), both as root."""
    require(
        "root and unshare/nsenter (util-linux), for PVC mounts in the emulated kubelet",
        os.geteuid() == 0 and bool(shutil.which("unshare")) and bool(shutil.which("nsenter")),
    )

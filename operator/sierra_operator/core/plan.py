"""The batch plan: which experiments, in which order, with which runs (pure: text in, plan out).

Three sources make the same plan:

* inline ``spec.experiments``;
* SIERRA's per-batch ``commands.txt`` (every run of every experiment, one shell command a
  line): a line belongs to the experiment whose ``exp-inputs/<exp>/`` path it names;
* SIERRA's per-experiment ``exp-inputs/<exp>/commands.txt`` files.

Experiments are ordered as SIERRA orders them (c1-exp2 before c1-exp10), runs keep the
order of their lines. Reading files is the caller's business (:mod:`sierra_operator.inputs.loader`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sierra_operator.core.model import (
    EXPERIMENT_NAME_PATTERN,
    MAX_EXPERIMENTS,
    ExperimentSpec,
    shown,
)

_EXP_SEGMENT = re.compile(r"exp-inputs/([^/\s'\"]+)/")
_NAME_RE = re.compile(EXPERIMENT_NAME_PATTERN)

MAX_RUNS = 100_000
"""Runs in one batch: the plan is held in memory by the operator and published as one Prefect
artifact; a bigger batch is a mistake (or a hostile file) long before it is a workload."""

# Characters no shell command SIERRA writes contains: C0 controls but tab (so also \f, \v and
# the \r of a lone CR), DEL, C1 controls (\x85 among them), Unicode line/paragraph separators
# and a byte-order mark. Each is invisible in an editor and changes what the shell runs.
_BAD_IN_COMMAND = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_BLANKS = " \t"


class PlanError(ValueError):
    """A commands file or experiment list that cannot become a plan; says where and why."""


@dataclass(frozen=True)
class PlannedRun:
    """One experimental run: its index inside the experiment and its shell command."""

    index: int
    command: str

    @property
    def command_sha(self) -> str:
        """Identity of the command, so a resumed batch never trusts a record of another one."""
        return hashlib.sha256(self.command.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PlannedExperiment:
    """An experiment: runs executed together, after the experiments before it."""

    name: str
    runs: tuple[PlannedRun, ...]


@dataclass(frozen=True)
class Plan:
    """Every experiment of the batch, in execution order."""

    experiments: tuple[PlannedExperiment, ...]

    @property
    def total_runs(self) -> int:
        """How many experimental runs the batch has."""
        return sum(len(e.runs) for e in self.experiments)

    def experiment(self, name: str) -> PlannedExperiment:
        """The experiment called ``name``."""
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(name)


def sierra_order_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: numbers compare as numbers, so c1-exp2 < c1-exp10 (SIERRA's order)."""
    return tuple(
        (0, int(chunk)) if chunk.isdigit() else (1, chunk) for chunk in re.findall(r"\d+|\D+", name)
    )


def plan_from_experiments(experiments: Iterable[ExperimentSpec]) -> Plan:
    """Plan from inline experiments, kept in the order the user wrote them."""
    return Plan(
        tuple(
            PlannedExperiment(e.name, tuple(PlannedRun(i, r.command) for i, r in enumerate(e.runs)))
            for e in experiments
        )
    )


def command_lines(text: str, source: str = "commands.txt") -> list[tuple[int, str]]:
    """(line number, command) for each line that is a command: blanks and # comments skipped.

    Lines end at '\n' only (a trailing '\r' of a CRLF file is dropped): ``str.splitlines``
    would also split at '\f', '\v', U+2028 and friends, silently turning one command into two
    runs and making every later line number wrong. A command holding a control character
    is refused (:class:`PlanError` naming the line and column), as is a BOM anywhere but at
    the very start of the file, where an editor may have put it.
    """
    out = []
    for number, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.removesuffix("\r").strip(_BLANKS)
        if not line or line.startswith("#"):
            continue
        bad = _BAD_IN_COMMAND.search(line)
        if bad is not None:
            column = len(raw) - len(raw.lstrip(_BLANKS)) + bad.start() + 1
            raise PlanError(
                f"{source} line {number}, column {column}: the command contains the control "
                f"character U+{ord(bad.group()):04X}, which SIERRA never writes; remove it "
                "(or run SIERRA stage 1 again)"
            )
        out.append((number, line))
    return out


def _check_name(name: str, where: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise PlanError(
            f"{where}: experiment name {shown(name)} is not usable; names are letters, digits, "
            "'.', '_', '+', '-' (SIERRA's are like c1-exp0)"
        )


def plan_from_batch_commands(text: str, source: str = "commands.txt") -> Plan:
    """Plan from SIERRA's per-batch commands file: group lines by their exp-inputs/<exp>/."""
    groups: dict[str, list[str]] = {}
    runs = 0
    for number, line in command_lines(text, source):
        names = set(_EXP_SEGMENT.findall(line))
        if len(names) != 1:
            listed = ", ".join(shown(n, quote=False) for n in sorted(names)[:5])
            found = "no" if not names else f"{len(names)} different ({listed})"
            raise PlanError(
                f"{source} line {number}: {found} exp-inputs/<experiment>/ path in the "
                "command, so its experiment is unknown; each line of a per-batch SIERRA "
                "commands file names exactly one experiment's input file. Use inline "
                "spec.experiments for other commands."
            )
        name = names.pop()
        _check_name(name, f"{source} line {number}")
        if name not in groups:
            _check_experiment_count(len(groups) + 1, f"{source} line {number}")
        runs += 1
        _check_run_count(runs, f"{source} line {number}")
        groups.setdefault(name, []).append(line)
    if not groups:
        raise PlanError(
            f"{source}: no commands (only blank lines or comments); run SIERRA stage 1 first "
            "or point commandsFile at the batch's commands.txt"
        )
    return _plan_from_groups(groups)


def plan_from_experiment_commands(
    files: Mapping[str, str | None], source: str = "exp-inputs"
) -> Plan:
    """Plan from per-experiment files: experiment name -> text of its commands.txt, or None
    for an experiment directory without one (an error: dropping that experiment silently
    would run a different batch than SIERRA planned)."""
    if not files:
        raise PlanError(
            f"{source}: no exp-inputs/<experiment>/commands.txt found; run SIERRA stage 1 "
            "first or point commandsFile at the batch's commands.txt"
        )
    _check_experiment_count(len(files), source)
    groups: dict[str, list[str]] = {}
    runs = 0
    for name, text in files.items():
        where = f"{source}/{name}/commands.txt"
        _check_name(name, source)
        if text is None:
            raise PlanError(
                f"{where}: missing; every experiment directory SIERRA makes has one: run "
                "SIERRA stage 1 again or remove the directory"
            )
        lines = [line for _, line in command_lines(text, where)]
        if not lines:
            raise PlanError(f"{where}: no commands; experiment {name} would have no runs")
        runs += len(lines)
        _check_run_count(runs, where)
        groups[name] = lines
    return _plan_from_groups(groups)


def _check_experiment_count(count: int, where: str) -> None:
    if count > MAX_EXPERIMENTS:
        raise PlanError(
            f"{where}: more than {MAX_EXPERIMENTS} experiments, the most one batch can have "
            "(its status lists each); split the batch"
        )


def _check_run_count(count: int, where: str) -> None:
    if count > MAX_RUNS:
        raise PlanError(
            f"{where}: more than {MAX_RUNS} runs, the most one batch can have; split the batch"
        )


def _plan_from_groups(groups: Mapping[str, list[str]]) -> Plan:
    ordered = sorted(groups, key=sierra_order_key)
    return Plan(
        tuple(
            PlannedExperiment(name, tuple(PlannedRun(i, cmd) for i, cmd in enumerate(groups[name])))
            for name in ordered
        )
    )


def plan_to_json(plan: Plan, batch_root: str) -> str:
    """The plan as the planning flow run publishes it for the operator (a Prefect artifact)."""
    return json.dumps(
        {
            "batchRoot": batch_root,
            "experiments": [
                {"name": e.name, "runs": [r.command for r in e.runs]} for e in plan.experiments
            ],
        },
        separators=(",", ":"),
    )


def plan_from_json(text: str) -> tuple[Plan, str]:
    """Inverse of :func:`plan_to_json`: the plan and its batch root."""
    try:
        doc = json.loads(text)
        experiments = tuple(
            PlannedExperiment(
                str(e["name"]),
                tuple(PlannedRun(i, str(cmd)) for i, cmd in enumerate(e["runs"])),
            )
            for e in doc["experiments"]
        )
        return Plan(experiments), str(doc["batchRoot"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"the published plan is not readable: {exc}") from None

"""Reading a batch from disk: the YAML file, then its experiments (adapter around model/plan)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from sierra_operator.model import COMMANDS_FILE_FIX, SierraBatch, SpecError, parse_batch
from sierra_operator.plan import (
    Plan,
    PlanError,
    plan_from_batch_commands,
    plan_from_experiment_commands,
    plan_from_experiments,
)


@dataclass(frozen=True)
class LoadedBatch:
    """A validated batch with its plan and the directory its records go to."""

    batch: SierraBatch
    plan: Plan
    batch_root: Path
    workdir: Path


def read_batch_file(path: Path) -> SierraBatch:
    """Parse and validate a SierraBatch YAML file; errors name the file, line or field."""
    source = f"{path}: "
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the batch file ({exc.strerror})") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{source}{where}invalid YAML: {problem}") from None
    if len(docs) != 1:
        raise SpecError(
            f"{source}expected exactly one YAML document (a SierraBatch), found {len(docs)}"
        )
    return parse_batch(docs[0], source)


def resolve_under_root(sierra_root: Path, name: str) -> Path:
    """``spec.commandsFile`` under sierra-root; :class:`SpecError` if it leads out of it.

    The model already refuses absolute paths and '..', but only on the string: a symlink
    under sierra-root can still point anywhere, and the planning pod would read (and
    publish) whatever file it lands on. So the resolved path must be inside the resolved
    root. The unresolved path is returned: it is the one SIERRA's commands name."""
    target = sierra_root / name
    try:
        resolved, root = target.resolve(), sierra_root.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop: RuntimeError before 3.13
        raise SpecError(f"spec.commandsFile: {name!r} cannot be resolved ({exc})") from None
    if not resolved.is_relative_to(root):
        raise SpecError(
            f"spec.commandsFile: {name!r} leaves sierra-root (it resolves to {resolved}); "
            f"{COMMANDS_FILE_FIX}"
        )
    return target


def load_plan(batch: SierraBatch, sierra_root: Path) -> tuple[Plan, Path]:
    """The batch's plan and its batch root (where scratch/ and the run records go)."""
    spec = batch.spec
    if spec.experiments is not None:
        return plan_from_experiments(spec.experiments), sierra_root / batch.metadata.name
    if spec.commands_file is not None:
        return plan_from_commands_file(sierra_root, spec.commands_file)
    raise SpecError(
        "spec.sierra: running SIERRA stage 1 is not supported in local mode yet; run "
        "`sierra-cli ... --pipeline 1` yourself and set spec.commandsFile to the batch's "
        "commands.txt"
    )


def plan_from_commands_file(sierra_root: Path, commands_file: str) -> tuple[Plan, Path]:
    """Plan and batch root from ``spec.commandsFile``: SIERRA's per-batch commands.txt, or a
    batch root whose exp-inputs/<experiment>/commands.txt hold each experiment. Local mode
    reads it here; in the cluster the planning flow run does, inside a pod that mounts the
    PVC."""
    target = resolve_under_root(sierra_root, commands_file)
    try:
        if target.is_dir():
            files = {
                p.parent.name: p.read_text()
                for p in sorted((target / "exp-inputs").glob("*/commands.txt"))
            }
            return plan_from_experiment_commands(files, str(target / "exp-inputs")), target
        return plan_from_batch_commands(target.read_text(), str(target)), target.parent
    except FileNotFoundError:
        raise SpecError(
            f"spec.commandsFile: {target} does not exist; run SIERRA stage 1 first, or give "
            "the path of the batch's commands.txt relative to sierra-root"
        ) from None
    except PlanError as exc:
        raise SpecError(f"spec.commandsFile: {exc}") from None


def load(path: Path, sierra_root: Path) -> LoadedBatch:
    """Everything local mode needs before it starts anything; raises SpecError on bad input."""
    batch = read_batch_file(path)
    plan, batch_root = load_plan(batch, sierra_root)
    return LoadedBatch(batch, plan, batch_root, path.resolve().parent)

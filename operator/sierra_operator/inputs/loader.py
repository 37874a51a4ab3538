"""Reading a batch from disk: the YAML file, then its experiments (adapter around model/plan).

Every file is read the same guarded way (:func:`read_text`): only a regular file (a FIFO
would block forever, /dev/zero never ends), at most a size limit, UTF-8 only; every problem
is a :class:`SpecError` naming the file (and line), never a traceback.
"""

from __future__ import annotations

import codecs
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sierra_operator.core.model import (
    COMMANDS_FILE_FIX,
    MAX_EXPERIMENTS,
    SierraBatch,
    SpecError,
    parse_batch,
    shown,
)
from sierra_operator.core.plan import (
    Plan,
    PlanError,
    plan_from_batch_commands,
    plan_from_experiment_commands,
    plan_from_experiments,
)
from sierra_operator.inputs.plain_yaml import YamlError, load_documents

MAX_BATCH_FILE_BYTES = 1_572_864
"""1.5 MiB, etcd's default limit for one object: a bigger batch could not be stored in the
cluster either, and parsing it would take seconds."""
MAX_COMMANDS_BYTES = 64 * 1024 * 1024
"""All commands files of one batch together: ample for SIERRA's biggest batches (runs are
limited too, see plan.MAX_RUNS), bounded for the planning pod's memory."""


@dataclass(frozen=True)
class LoadedBatch:
    """A validated batch with its plan and the directory its records go to."""

    batch: SierraBatch
    plan: Plan
    batch_root: Path
    workdir: Path


def shown_path(path: Path | str) -> str:
    """A path as messages print it: as is when plain, else quoted and escaped (a name with a
    line break or a control character must not garble the message). Never shortened: it
    is the user's own argument, or a commandsFile of at most 4096 characters."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for check, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if check(mode):
            return kind
    return "not a regular file"


def read_text(path: Path, what: str, limit: int, missing: str | None = None) -> str:
    """The text of the regular file ``path`` (``what`` it is, for messages), decoded as UTF-8.

    Opened non-blocking (a FIFO with no writer would block the open itself), refused unless
    a regular file, at most ``limit`` bytes read even if it grows meanwhile. :class:`SpecError`
    for every problem: ``missing`` (or a default) when it does not exist."""
    where = shown_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SpecError(missing or f"{where}: cannot read the {what} (no such file)") from None
    except OSError as exc:
        raise SpecError(f"{where}: cannot read the {what} ({exc.strerror})") from None
    except ValueError:  # a NUL byte in the path
        raise SpecError(f"{where}: cannot read the {what}: its path holds a NUL byte") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SpecError(f"{where}: the {what} is {_file_kind(mode)}, not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SpecError(f"{where}: cannot read the {what} ({exc.strerror})") from None
    finally:
        os.close(fd)
    if size > limit:
        raise SpecError(f"{where}: the {what} is larger than {limit:,} bytes, the most allowed")
    return _decoded(b"".join(chunks), where, what)


def _decoded(data: bytes, where: str, what: str) -> str:
    """UTF-8 text of ``data``, or a SpecError saying where it is not UTF-8 and what to do."""
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if data.startswith(bom):
            raise SpecError(f"{where}: the {what} is {encoding} text; save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise SpecError(
            f"{where}: line {line}, column {column}: not UTF-8 "
            f"(byte 0x{data[exc.start]:02x}); save the {what} as UTF-8 text"
        ) from None


def read_batch_file(path: Path) -> SierraBatch:
    """Parse and validate a SierraBatch YAML file; errors name the file, line or field."""
    source = f"{shown_path(path)}: "
    text = read_text(path, "batch file", MAX_BATCH_FILE_BYTES)
    try:
        docs = [d for d in load_documents(text) if d is not None]
    except YamlError as exc:
        raise SpecError(f"{source}{exc}") from None
    if len(docs) != 1:
        raise SpecError(
            f"{source}expected exactly one YAML document (a SierraBatch), found {len(docs)}"
        )
    return parse_batch(docs[0], source)


def resolve_sierra_root(sierra_root: Path) -> Path:
    """``sierra_root`` absolute and without symlinks; :class:`SpecError` if it cannot be (a
    symlink loop, a NUL byte, a name too long). Only called where the root is used: an inline
    batch is validated without it."""
    try:
        return sierra_root.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a loop: RuntimeError before 3.13
        raise SpecError(
            f"sierra-root {shown_path(sierra_root)} cannot be resolved ({_reason(exc)}); "
            "give an existing directory or a path that can be created"
        ) from None


def create_sierra_root(sierra_root: Path) -> None:
    """Create sierra-root (local mode, after validation); :class:`SpecError` if impossible."""
    try:
        sierra_root.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        raise SpecError(
            f"sierra-root {shown_path(sierra_root)} cannot be created ({_reason(exc)}); give "
            "a directory you can write to with --sierra-root"
        ) from None


def _reason(exc: BaseException) -> str:
    """The short reason of an OS-level failure."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, RuntimeError):
        return "a symlink loop"
    return "its path holds a NUL byte" if "null" in str(exc) else shown(str(exc), quote=False)


def resolve_under_root(sierra_root: Path, name: str) -> Path:
    """``spec.commandsFile`` under sierra-root; :class:`SpecError` if it leads out of it.

    The model already refuses absolute paths and '..', but only on the string: a symlink
    under sierra-root can still point anywhere, and the planning pod would read (and
    publish) whatever file it lands on. So the resolved path must be inside the resolved
    root. The unresolved path is returned: it is the one SIERRA's commands name."""
    root = resolve_sierra_root(sierra_root)
    target = sierra_root / name
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise SpecError(
            f"spec.commandsFile: {shown(name)} cannot be resolved ({_reason(exc)})"
        ) from None
    if not resolved.is_relative_to(root):
        raise SpecError(
            f"spec.commandsFile: {shown(name)} leaves sierra-root (it resolves to "
            f"{shown_path(resolved)}); {COMMANDS_FILE_FIX}"
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
    missing = (
        f"spec.commandsFile: {shown_path(target)} does not exist; run SIERRA stage 1 first, or "
        "give the path of the batch's commands.txt relative to sierra-root"
    )
    try:
        try:
            is_dir = stat.S_ISDIR(os.stat(target).st_mode)
        except FileNotFoundError:
            raise SpecError(missing) from None
        except (OSError, ValueError) as exc:
            raise SpecError(
                f"spec.commandsFile: cannot read {shown_path(target)} ({_reason(exc)})"
            ) from None
        if is_dir:
            files = _experiment_files(target / "exp-inputs", resolve_sierra_root(sierra_root))
            return plan_from_experiment_commands(files, shown_path(target / "exp-inputs")), target
        text = read_text(target, "commands file", MAX_COMMANDS_BYTES, missing)
        return plan_from_batch_commands(text, shown_path(target)), target.parent
    except PlanError as exc:
        raise SpecError(f"spec.commandsFile: {exc}") from None
    except SpecError as exc:
        message = str(exc)
        if not message.startswith("spec.commandsFile: "):
            message = f"spec.commandsFile: {message}"
        raise SpecError(message) from None


def _experiment_files(exp_inputs: Path, root: Path) -> dict[str, str | None]:
    """Experiment name -> text of its exp-inputs/<name>/commands.txt (None: the directory
    has none, which the plan refuses). Each file is read like any other (regular, UTF-8,
    within the batch's byte budget) and must stay under sierra-root."""
    try:
        with os.scandir(exp_inputs) as entries:
            names = sorted(e.name for e in entries if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise SpecError(f"cannot read {shown_path(exp_inputs)} ({exc.strerror})") from None
    if len(names) > MAX_EXPERIMENTS:  # the plan refuses them: do not read them all first
        return dict.fromkeys(names)
    files: dict[str, str | None] = {}
    budget = MAX_COMMANDS_BYTES
    for name in names:
        path = exp_inputs / name / "commands.txt"
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise SpecError(f"{shown_path(path)} cannot be resolved ({_reason(exc)})") from None
        if not resolved.is_relative_to(root):
            raise SpecError(
                f"{shown_path(path)} leaves sierra-root (it resolves to {shown_path(resolved)})"
            )
        if not os.path.lexists(path):
            files[name] = None
            continue
        files[name] = read_text(path, "commands file", max(budget, 0))
        budget -= len(files[name] or "")
    return files


def load(path: Path, sierra_root: Path) -> LoadedBatch:
    """Everything local mode needs before it starts anything; raises SpecError on bad input.
    ``sierra_root`` is resolved only if the batch reads files under it (commandsFile)."""
    batch = read_batch_file(path)
    plan, batch_root = load_plan(batch, sierra_root)
    return LoadedBatch(batch, plan, batch_root, path.resolve().parent)

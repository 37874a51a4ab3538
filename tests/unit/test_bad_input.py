"""Issue 13: bad input never crashes. One test per crash class the fuzzing found, each with
its minimal input: exit 2 and a message naming the file (and line) or the field, no
traceback, no hang; the operator's path (``parse_batch``) gives the same message."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sierra_operator.cli import EXIT_UNEXPECTED, main
from sierra_operator.core.model import MAX_EXPERIMENTS, SpecError, parse_batch
from sierra_operator.inputs import loader

pytestmark = pytest.mark.unit

HEAD = "apiVersion: sierra.research.io/v1alpha1\nkind: SierraBatch\nmetadata: {name: demo}\n"
INLINE = "spec:\n  experiments: [{name: e, runs: [{command: 'true'}]}]\n"
DOC: dict[str, Any] = {
    "apiVersion": "sierra.research.io/v1alpha1",
    "kind": "SierraBatch",
    "metadata": {"name": "demo"},
    "spec": {"experiments": [{"name": "e", "runs": [{"command": "true"}]}]},
}


def validate(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes | None = None,
    batch: Path | None = None,
    root: Path | None = None,
) -> tuple[int, str]:
    """``sierra-operator validate`` in-process; (exit code, stdout + stderr)."""
    if batch is None:
        batch = tmp_path / "batch.yaml"
        if isinstance(content, bytes):
            batch.write_bytes(content)
        else:
            batch.write_text(content or "", encoding="utf-8")
    code = main(["validate", str(batch), "--sierra-root", str(root or tmp_path / "root")])
    out = capsys.readouterr()
    output = out.out + out.err
    assert "Traceback" not in output
    return code, output


def refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | bytes | None = None,
    batch: Path | None = None,
    root: Path | None = None,
) -> str:
    """The output of ``validate`` for input it must refuse (exit code 2)."""
    code, output = validate(tmp_path, capsys, content, batch, root)
    assert code == 2, output
    return output


def execution(fields: str) -> str:
    return HEAD + INLINE + "  execution: {" + fields + "}\n"


# ------------------------------------------------------------ YAML the loader cannot take

YAML_CASES = {
    "!!int x": (HEAD.replace("kind: SierraBatch", "kind: !!int x") + INLINE, "line 2, column 7"),
    '!!int ""': (HEAD.replace("kind: SierraBatch", 'kind: !!int ""') + INLINE, "line 2, column 7"),
    "!!float x": (HEAD.replace("kind: SierraBatch", "kind: !!float x") + INLINE, "!!float"),
    "!!bool maybe": (
        HEAD.replace("kind: SierraBatch", "kind: !!bool maybe") + INLINE,
        "'maybe' is not a boolean (tagged !!bool); write true or false",
    ),
    "!!timestamp x": (
        HEAD.replace("kind: SierraBatch", "kind: !!timestamp x") + INLINE,
        "the YAML tag !!timestamp is not supported",
    ),
    "4,301-digit integer": (
        execution("workers: " + "9" * 4301),
        "line 6, column 24: a number of 4,301 characters is out of range",
    ),
    "0x and 4,000 f's": (execution("workers: 0x" + "f" * 4000), "line 6, column 24"),
    "1,000-deep nesting": (
        HEAD + INLINE + "  x: " + "[" * 1000 + "]" * 1000 + "\n",
        "nested deeper than 64 levels",
    ),
    "100,000 unclosed [": (HEAD + "spec: " + "[" * 100_000 + "\n", "nested deeper than 64"),
    "duplicate key": (
        HEAD + INLINE + "  suspend: true\n  suspend: false\n",
        "line 7, column 3: the key 'suspend' is repeated (first at line 6, column 3)",
    ),
    "non-string key": (HEAD + INLINE + "  1: x\n", "line 6, column 3: the key 1 is not a string"),
    "recursive alias": (HEAD + INLINE + "  x: &a [*a]\n", "recursive alias"),
    "merge key": (HEAD + INLINE + "  <<: {suspend: true}\n", "merge keys (<<) are not supported"),
    "control character": (
        HEAD + INLINE + "  suspend: \x01\n",
        "line 6, column 12: the character U+0001 is not allowed in YAML",
    ),
}


@pytest.mark.parametrize("name", sorted(YAML_CASES))
def test_yaml_the_loader_refuses_names_file_and_line(name, tmp_path, capsys):
    text, expected = YAML_CASES[name]
    output = refused(tmp_path, capsys, text)
    assert f"{tmp_path / 'batch.yaml'}: " in output
    assert expected in output


def test_a_date_is_a_string_not_a_crash(tmp_path, capsys):
    output = refused(tmp_path, capsys, HEAD.replace("SierraBatch", "2026-02-30") + INLINE)
    assert "kind: Input should be 'SierraBatch' (got '2026-02-30')" in output


def test_alias_bomb_is_refused_at_once(tmp_path, capsys):
    """675 bytes standing for 9**9 values: counted while composing, never expanded."""
    anchors = ['  x0: &x0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        anchors.append(f"  x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]")
    text = HEAD + "anchors:\n" + "\n".join(anchors) + "\n" + INLINE
    text += "  execution: {failurePolicy: *x8}\n"
    started = time.monotonic()
    code, output = validate(tmp_path, capsys, text)
    assert time.monotonic() - started < 5
    assert code == 2
    assert "values here (every use of a YAML alias counted)" in output


YAML_11_CASES = {
    "retries: no": (execution("retries: no"), "spec.execution.retries: Input should be a valid "),
    'suspend: "yes"': (HEAD + INLINE + "  suspend: 'yes'\n", "spec.suspend: Input should be a"),
    "suspend: yes": (HEAD + INLINE + "  suspend: yes\n", "(got 'yes')"),
    "workers: true": (execution("workers: true"), "spec.execution.workers: Input should be a"),
    "beyond int64": (
        execution("runTimeoutSeconds: 99999999999999999999"),
        "spec.execution.runTimeoutSeconds: Input should be less than or equal to 2147483647",
    ),
    "blank command": (
        HEAD + "spec:\n  experiments: [{name: e, runs: [{command: '  '}]}]\n",
        "spec.experiments[0].runs[0].command: the command is blank",
    ),
    "NUL in a command": (
        HEAD + 'spec:\n  experiments: [{name: e, runs: [{command: "a\\0b"}]}]\n',
        "spec.experiments[0].runs[0].command: the command holds the control character U+0000",
    ),
}


@pytest.mark.parametrize("name", sorted(YAML_11_CASES))
def test_values_yaml_11_or_pydantic_would_convert_are_refused(name, tmp_path, capsys):
    text, expected = YAML_11_CASES[name]
    output = refused(tmp_path, capsys, text)
    assert expected in output


def test_a_multi_line_inline_command_is_fine(tmp_path, capsys):
    text = HEAD + "spec:\n  experiments:\n  - name: e\n    runs:\n    - command: |\n"
    text += "        cd /tmp\n        echo\tdone\n"
    assert validate(tmp_path, capsys, text)[0] == 0


# ------------------------------------------------------------------- what Rich would eat

MARKUP_CASES = {
    "name with a closing tag": (
        HEAD.replace("demo", "'[/x]'") + INLINE,
        "metadata.name: '[/x]' must be a DNS-1123 label",
    ),
    "key with a style": (HEAD + INLINE + "  '[bold]image': {}\n", "spec['[bold]image']: unknown"),
    "pattern with brackets": (
        HEAD + INLINE + "  sierraRoot: {claimName: A_B}\n",
        "String should match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' (got 'A_B')",
    ),
    "empty key": (HEAD + INLINE + "  '': x\n", "spec['']: unknown field"),
    "key with a line break": (HEAD + INLINE + '  "a\\nb": x\n', "spec['a\\nb']: unknown field"),
    "emoji code": (HEAD + INLINE + "  ':smile:': x\n", "spec[':smile:']"),
}


@pytest.mark.parametrize("name", sorted(MARKUP_CASES))
def test_user_text_is_printed_as_is(name, tmp_path, capsys):
    text, expected = MARKUP_CASES[name]
    output = refused(tmp_path, capsys, text)
    assert expected in output


def test_markup_in_sierra_root_is_printed_as_is(tmp_path, capsys):
    code, output = validate(tmp_path, capsys, HEAD + INLINE, root=tmp_path / "[/x]")
    assert code == 0
    assert f"batch root {tmp_path / '[/x]' / 'demo'}" in output


# ------------------------------------------------------------------- files and encodings

ENCODING_CASES = {
    "UTF-16 with BOM": ((HEAD + INLINE).encode("utf-16"), "the batch file is UTF-16 text"),
    "UTF-32 with BOM": ((HEAD + INLINE).encode("utf-32"), "the batch file is UTF-32 text"),
    "invalid bytes": (
        (HEAD + INLINE).encode() + b"  x: \xff\n",
        "line 6, column 6: not UTF-8 (byte 0xff); save the batch file as UTF-8 text",
    ),
}


@pytest.mark.parametrize("name", sorted(ENCODING_CASES))
def test_files_that_are_not_utf8(name, tmp_path, capsys):
    data, expected = ENCODING_CASES[name]
    output = refused(tmp_path, capsys, data)
    assert expected in output


def test_utf8_bom_is_fine(tmp_path, capsys):
    assert validate(tmp_path, capsys, b"\xef\xbb\xbf" + (HEAD + INLINE).encode())[0] == 0


def test_dev_zero_is_not_read(tmp_path, capsys):
    output = refused(tmp_path, capsys, batch=Path("/dev/zero"))
    assert "/dev/zero: the batch file is a character device, not a regular file" in output


def test_a_fifo_without_writer_does_not_hang(tmp_path, capsys):
    fifo = tmp_path / "batch.yaml"
    os.mkfifo(fifo)
    result: list[tuple[int, str]] = []
    worker = threading.Thread(target=lambda: result.append(validate(tmp_path, capsys, batch=fifo)))
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader before failing
        with open(fifo, "w"):
            pass
        pytest.fail("validate hung on a FIFO")
    code, output = result[0]
    assert code == 2
    assert "the batch file is a FIFO, not a regular file" in output


def test_a_directory_is_not_a_batch_file(tmp_path, capsys):
    output = refused(tmp_path, capsys, batch=tmp_path)
    assert f"{tmp_path}: the batch file is a directory, not a regular file" in output


def test_a_batch_file_over_the_size_limit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loader, "MAX_BATCH_FILE_BYTES", 100)
    output = refused(tmp_path, capsys, HEAD + INLINE)
    assert "the batch file is larger than 100 bytes, the most allowed" in output


def test_an_unreadable_batch_file(tmp_path, capsys, monkeypatch):
    """Root reads everything, so the refusal is simulated where the file is opened."""
    batch = tmp_path / "batch.yaml"
    real_open = os.open

    def refuse(path: Any, *args: Any, **kwargs: Any) -> int:
        if Path(path) == batch:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(loader.os, "open", refuse)
    output = refused(tmp_path, capsys, HEAD + INLINE)
    assert f"{batch}: cannot read the batch file (Permission denied)" in output


# ---------------------------------------------------------------------- commands files

EXP0 = "/sierra-root/p/b/exp-inputs/c1-exp0/run"


def commands(tmp_path: Path, name: str, data: str | bytes) -> Path:
    """A commands file under sierra-root/p/b; returns sierra-root."""
    root = tmp_path / "root"
    path = root / "p" / "b" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


def validate_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], commands_file: str = "p/b/commands.txt"
) -> tuple[int, str]:
    text = HEAD + f"spec:\n  commandsFile: {commands_file}\n"
    return validate(tmp_path, capsys, text, root=tmp_path / "root")


def refused_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], commands_file: str = "p/b/commands.txt"
) -> str:
    """The output of ``validate`` for a commands file it must refuse (exit code 2)."""
    code, output = validate_commands(tmp_path, capsys, commands_file)
    assert code == 2, output
    return output


COMMANDS_CASES = {
    "form feed": (f"# SIERRA\nrun {EXP0}0\fx\n", "commands.txt line 2, column 45: the command"),
    "vertical tab": (f"run {EXP0}0\vx\n", "line 1, column 45: the command contains the control"),
    "U+2028": (f"run {EXP0}0\u2028x\n", "line 1, column 45: the command contains the control"),
    "NEL": (f"run {EXP0}0\x85x\n", "U+0085"),
    "NUL": (f"run {EXP0}0\x00\n", "U+0000"),
    "BOM inside": (f"run {EXP0}0\n\ufeffrun {EXP0}1\n", "line 2, column 1: the command contains"),
    "escape": (f"run {EXP0}0 \x1b[2J\n", "U+001B"),
    "only blanks": (" \n\t\n  \t \n", "no commands (only blank lines or comments)"),
    "UTF-16": (f"run {EXP0}0\n".encode("utf-16"), "the commands file is UTF-16 text"),
    "invalid bytes": (f"run {EXP0}0\n".encode() + b"\xfe\n", "line 2, column 1: not UTF-8"),
    "experiment name with a space": (f"run {EXP0}0\nrun /x/exp-inputs/a b/c\n", "line 2: no"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS_CASES))
def test_commands_files_name_the_line(name, tmp_path, capsys):
    data, expected = COMMANDS_CASES[name]
    commands(tmp_path, "commands.txt", data)
    output = refused_commands(tmp_path, capsys)
    assert "spec.commandsFile: " in output
    assert expected in output


def test_line_numbers_count_newlines_only(tmp_path, capsys):
    """A comment with U+2028 and \\f stays one line: the bad command is named at line 3."""
    commands(tmp_path, "commands.txt", f"# a\u2028b\fc\nrun {EXP0}0\nrun /x/y\n")
    output = refused_commands(tmp_path, capsys)
    assert "commands.txt line 3: no exp-inputs/<experiment>/ path" in output


def test_bom_at_start_and_crlf_are_fine(tmp_path, capsys):
    commands(tmp_path, "commands.txt", f"\ufeffrun {EXP0}0\r\nrun {EXP0}1\r\n")
    code, output = validate_commands(tmp_path, capsys)
    assert code == 0
    assert "c1-exp0: 2 run(s)" in output


def test_commands_file_that_is_a_directory_of_the_wrong_kind(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "p" / "b" / "exp-inputs" / "c1-exp0" / "commands.txt").mkdir(parents=True)
    output = refused_commands(tmp_path, capsys, "p/b")
    assert "commands.txt: the commands file is a directory, not a regular file" in output


def test_a_middle_experiment_without_commands_is_not_dropped(tmp_path, capsys):
    for exp in ("c1-exp0", "c1-exp1", "c1-exp2"):
        d = tmp_path / "root" / "p" / "b" / "exp-inputs" / exp
        d.mkdir(parents=True)
        if exp != "c1-exp1":
            (d / "commands.txt").write_text(f"run {exp}\n")
    output = refused_commands(tmp_path, capsys, "p/b")
    assert (
        "c1-exp1/commands.txt: missing; every experiment directory SIERRA makes has one" in output
    )


def test_experiment_directory_with_a_line_break(tmp_path, capsys):
    d = tmp_path / "root" / "p" / "b" / "exp-inputs" / "c1-exp0\n"
    d.mkdir(parents=True)
    (d / "commands.txt").write_text("run\n")
    output = refused_commands(tmp_path, capsys, "p/b")
    assert "experiment name 'c1-exp0\\n' is not usable" in output


def test_unreadable_exp_inputs_is_not_reported_as_missing(tmp_path, capsys, monkeypatch):
    exp_inputs = tmp_path / "root" / "p" / "b" / "exp-inputs"
    (exp_inputs / "c1-exp0").mkdir(parents=True)
    real_scandir = os.scandir

    def refuse(path: Any) -> Any:
        if Path(path) == exp_inputs:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(loader.os, "scandir", refuse)
    output = refused_commands(tmp_path, capsys, "p/b")
    assert f"cannot read {exp_inputs} (Permission denied)" in output


def test_too_many_experiments(tmp_path, capsys):
    lines = "".join(f"run /r/exp-inputs/c1-exp{i}/x\n" for i in range(MAX_EXPERIMENTS + 1))
    commands(tmp_path, "commands.txt", lines)
    output = refused_commands(tmp_path, capsys)
    assert f"line {MAX_EXPERIMENTS + 1}: more than {MAX_EXPERIMENTS} experiments" in output


@pytest.mark.parametrize(
    ("commands_file", "expected"),
    [
        ('"p/b/\\0commands.txt"', "its path holds a NUL byte"),
        ("p/" + "x" * 300 + "/commands.txt", "(File name too long)"),
    ],
)
def test_impossible_commands_file_paths(commands_file, expected, tmp_path, capsys):
    (tmp_path / "root" / "p").mkdir(parents=True)
    output = refused_commands(tmp_path, capsys, commands_file)
    assert "spec.commandsFile: " in output
    assert expected in output


def test_a_fifo_commands_file_does_not_hang(tmp_path, capsys):
    (tmp_path / "root" / "p" / "b").mkdir(parents=True)
    os.mkfifo(tmp_path / "root" / "p" / "b" / "commands.txt")
    output = refused_commands(tmp_path, capsys)
    assert "the commands file is a FIFO, not a regular file" in output


# ------------------------------------------------------------------------- sierra-root


def test_sierra_root_symlink_loop_does_not_matter_to_an_inline_batch(tmp_path, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    code, _ = validate(tmp_path, capsys, HEAD + INLINE, root=tmp_path / "loop")
    assert code == 0


def test_sierra_root_symlink_loop_is_named_when_needed(tmp_path, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    code, output = validate(
        tmp_path, capsys, HEAD + "spec:\n  commandsFile: p/c.txt\n", root=tmp_path / "loop"
    )
    assert code == 2
    assert f"sierra-root {tmp_path / 'loop'} cannot be resolved (a symlink loop)" in output


def test_local_mode_names_a_sierra_root_loop(tmp_path, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "batch.yaml").write_text(HEAD + INLINE)
    code = main(["local", str(tmp_path / "batch.yaml"), "--sierra-root", str(tmp_path / "loop")])
    assert code == 2
    assert "cannot be resolved (a symlink loop)" in capsys.readouterr().err


def test_local_mode_names_a_sierra_root_it_cannot_create(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    (tmp_path / "batch.yaml").write_text(HEAD + INLINE)
    root = tmp_path / "file" / "root"
    code = main(["local", str(tmp_path / "batch.yaml"), "--sierra-root", str(root)])
    assert code == 2
    assert f"sierra-root {root} cannot be created (Not a directory)" in capsys.readouterr().err


# ---------------------------------------------------------------------- unexpected errors


def test_an_unexpected_error_has_its_own_exit_code_and_one_line(tmp_path, capsys, monkeypatch):
    def broken(*_: Any) -> Any:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(loader, "load", broken)
    (tmp_path / "batch.yaml").write_text(HEAD + INLINE)
    code = main(["validate", str(tmp_path / "batch.yaml")])
    out = capsys.readouterr()
    assert code == EXIT_UNEXPECTED == 4
    assert out.err.startswith("error: unexpected RuntimeError: boom second line (a bug")
    assert out.err.count("\n") == 1
    assert "Traceback" not in out.err


# ------------------------------------------------------ parse_batch: the operator's path


def doc(**spec: Any) -> dict[str, Any]:
    return {**DOC, "spec": {**DOC["spec"], **spec}}


def rejected(document: Any) -> str:
    with pytest.raises(SpecError) as err:
        parse_batch(document)
    return str(err.value)


def test_message_of_a_4302_digit_integer_is_short():
    """Formatting the value must not fail (Python refuses to print 4,301+ digits)."""
    message = rejected(doc(execution={"workers": int("f" * 4000, 16)}))
    assert "spec.execution.workers: Input should be less than or equal to 100 (got an " in message
    assert len(message) < 400


def test_an_alias_bomb_object_is_refused_at_once():
    bomb: Any = ["lol"] * 9
    for _ in range(8):
        bomb = [bomb] * 9
    started = time.monotonic()
    message = rejected(doc(execution={"failurePolicy": bomb}))
    assert time.monotonic() - started < 2
    assert "the document has more than 100,000 values" in message


def test_a_cyclic_document_is_refused():
    cycle: list[Any] = []
    cycle.append(cycle)
    assert "nested deeper than 64 levels" in rejected(doc(x=cycle))


def test_a_non_string_key_is_not_shown_as_an_index():
    message = rejected({**DOC, "spec": {**DOC["spec"], 1: "x"}})
    assert (
        message == "spec: the key 1 is not a string; keys are field names (quote it if it is one)"
    )


def test_a_lone_surrogate_is_named():
    message = rejected(doc(experiments=[{"name": "e", "runs": [{"command": "\ud800"}]}]))
    assert message.startswith("spec.experiments[0].runs[0].command: holds a lone surrogate")


def test_nulls_mean_absent_as_for_the_api_server():
    parse_batch(doc(experiments=None, sierra={"args": ["x"], "postStages": None}))


def test_json_integers_and_strict_types():
    assert parse_batch(doc(execution={"workers": 2.0})).spec.execution.workers == 2
    assert "workers: Input should be a valid integer" in rejected(doc(execution={"workers": True}))
    assert "(got 2.5)" in rejected(doc(execution={"workers": 2.5}))
    assert "(got '2')" in rejected(doc(execution={"workers": "2"}))
    assert "spec.suspend: Input should be a valid boolean (got 1)" in rejected(doc(suspend=1))
    big = rejected(doc(execution={"runTimeoutSeconds": 2**63}))
    assert "less than or equal to 2147483647" in big


def test_metadata_is_checked_as_the_api_server_would():
    assert "metadata.lables: unknown field" in rejected(
        {**DOC, "metadata": {"name": "a", "lables": {}}}
    )
    message = rejected({**DOC, "metadata": {"name": "a.b"}})
    assert message.startswith("metadata.name: 'a.b' must be a DNS-1123 label")
    parse_batch({**DOC, "metadata": {"name": "a", "uid": "u", "creationTimestamp": "2026-01-01"}})


def test_many_problems_are_counted_not_all_listed():
    runs = [{"command": ""}] * 100
    message = rejected(doc(experiments=[{"name": "e", "runs": runs}]))
    assert message.count("\n") == 40
    assert message.endswith("... and 60 more problem(s)")

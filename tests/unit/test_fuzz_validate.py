"""`sierra-operator validate` on mutated batch files and commands files (issue 13).

The examples' batch files and a SIERRA-like commands file, mutated the ways the issue's
fuzzing found crashes with: lines dropped or repeated (repeated keys), values replaced by
YAML 1.1 words, tags, huge numbers, deep or unclosed nesting, anchors and alias bombs, keys
that are not names, characters that are control characters or Rich markup, other encodings,
truncation, whole other documents, special paths; commands files with every line-breaking
character, a BOM, CRLF, bad bytes, odd experiment names, a missing or misplaced file, too
many experiments, paths with NUL bytes or 300-character names. Fixed seed, so CI runs the
same cases each time.

Each case goes through the CLI's own ``main`` in-process and must end with exit 0, or exit 2
with one line per problem naming the batch file (with a line or a field) or a field of the
spec; never a traceback, never another exit code. The counts go to the test output.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sierra_operator.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
BATCH_EXAMPLES = 2000
COMMANDS_EXAMPLES = 600
BASES = [(REPO / "examples" / name).read_text() for name in ("batch.yaml", "minimal.yaml")]
HEAD = "apiVersion: sierra.research.io/v1alpha1\nkind: SierraBatch\nmetadata: {name: demo}\n"
VALUE_LINE = re.compile(r"^(\s*(?:- )?[A-Za-z]+:) ?(\S.*)$")

CHARACTERS = {
    "control": ["\x00", "\x01", "\x08", "\x1b", "\x1c", "\x1e", "\x7f", "\ufeff"],
    "line breaks": ["\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\t"],
    "markup": ["[/x]", "[bold]", ":smile:", "[link=x]"],
    "yaml": ["'", '"', "#", "&a ", "*a ", "{", "[", "]", "- ", ": ", "é"],
}  # fmt: skip
# Replacement values by family, a family drawn first: each gets a fair share of cases.
NASTY_VALUES = {
    "YAML 1.1": ["no", "yes", "on", "off", "y", "~", "null", "true", "'yes'", "0b101", "1_000"],
    "dates": ["2026-02-30", "2026-01-01", "12:30:00", "2026-13-01T25:00:00Z"],
    "numbers": [
        "1.0", "2.5", "-0", ".inf", ".nan", "0o777", "0x1F", "1e400", "9" * 19, "9" * 20,
        "9" * 4301, "0x" + "f" * 4000, "-" + "9" * 30,
    ],
    "tags": [
        "!!int x", '!!int ""', "!!float x", "!!bool maybe", "!!timestamp x", "!!binary aGk=",
        "!!set {a}", "!!omap [a: 1]", "!!python/object:os.system x", "!foo x", "!!str 12",
        "!!int 0x10", "!!null ''", "!!seq x", "!!map [a]",
    ],
    "strings": [
        "'[/x]'", "'[bold]x'", "''", "' '", '"a\\0b"', '"\\x85"', '"a\\u2028b"', '"\\ud800"',
        "|\n  a\n  b", "'" + "x" * 5000 + "'",
    ],
    "collections": ["[]", "{}", "[a, b]", "{a: 1}", "*nope", "&a x", "&a [*a]"],
}  # fmt: skip
# The issue's minimal inputs, drawn half the time (into an integer field, integers first).
ISSUE_VALUES = [
    "!!int x", '!!int ""', "!!float x", "!!bool maybe", "!!timestamp x", "2026-02-30",
    "9" * 4301, "0x" + "f" * 4000,
]  # fmt: skip
INTEGER_VALUES = ["0x" + "f" * 4000, "9" * 4301, "true", "no", "1e400", "2.0", "-1"]
# Fields whose value the issue's minimal inputs replace; one of them is drawn half the time.
TARGETS = ("kind", "name", "workers", "parallelism", "retries", "failurePolicy", "command")
INTEGER_FIELDS = ("workers", "parallelism", "retries")
# The issue's crash classes, as what a case must have drawn to reach each: the test fails
# if some was never drawn, so the seed and the number of examples keep finding them all.
REQUIRED = {
    "value !!int x", 'value !!int ""', "value !!float x", "value !!bool maybe",
    "value !!timestamp x", "value 2026-02-30", "value 9999...(4301)",
    "int field 0xff...(4002)", "alias bomb in failurePolicy", "nesting 1000",
    "unclosed 100000", "name '[/x]'", "character [/x]", "encoding utf-16", "encoding utf-32",
    "encoding bad", "batch path directory", "sierra-root loop", "repeat line",
}  # fmt: skip
NASTY_KEYS = [
    "'[bold]image'", "''", "1", "true", "null", '"a\\nb"', "<<", "? [a]", "? {a: 1}",
    "'spec.x'", "sierra_root", "'[/x]'", "'\\x01'", "image", "suspend",
]  # fmt: skip
DOCUMENTS = [
    "", "---\n---\n", "[]", "- a\n- b\n", "~", "null", "42", "a: b\n", "--- a\n--- b\n",
    "%YAML 1.1\n---\na: 1\n", "%TAG ! tag:x,2000:\n---\n!a 1\n", "a: &a [*a]\n",
    HEAD + "spec:\n  experiments: [{name: e, runs: [{command: 'true'}]}]\n---\n" + HEAD,
]  # fmt: skip


def bomb() -> str:
    lines = ['x-anchors:\n  l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def pick(data: Any, items: list[Any]) -> Any:
    return data.draw(st.sampled_from(items))


def nasty_value(data: Any, key: str = "") -> str:
    """A replacement value: one of the issue's half the time, else of any family."""
    if key in INTEGER_FIELDS and data.draw(st.booleans()):
        return str(pick(data, INTEGER_VALUES))
    if data.draw(st.booleans()):
        return str(pick(data, ISSUE_VALUES))
    family: str = pick(data, sorted(NASTY_VALUES))
    value: str = pick(data, NASTY_VALUES[family])
    return value


def label(value: str) -> str:
    """A drawn value as the coverage check names it (long ones by their size)."""
    return value if len(value) <= 20 else f"{value[:4]}...({len(value)})"


def value_line(lines: list[str], data: Any) -> int:
    """Index of a `key: value` line: one of TARGETS half the time, else any line."""
    targets = [
        n for n, line in enumerate(lines) if (m := VALUE_LINE.match(line)) and key_of(m) in TARGETS
    ]
    if targets and data.draw(st.booleans()):
        return int(pick(data, targets))
    return data.draw(st.integers(0, max(len(lines) - 1, 0)))


def key_of(match: re.Match[str]) -> str:
    return match.group(1).strip(" -:")


def mutate_lines(text: str, data: Any, kind: str, seen: set[str]) -> str:
    lines = text.split("\n")
    i = value_line(lines, data)
    match = VALUE_LINE.match(lines[i]) if lines else None
    key = key_of(match) if match else ""
    if kind == "drop line":
        del lines[i]
    elif kind == "repeat line":
        lines.insert(i, lines[i])
        seen.add("repeat line")
    elif kind == "replace value" and match:
        value = nasty_value(data, key)
        lines[i] = f"{match.group(1)} {value}"
        seen.add(f"value {label(value)}")
        if key in INTEGER_FIELDS:
            seen.add(f"int field {label(value)}")
    elif kind == "nesting" and match:
        depth = pick(data, [64, 65, 1000, 100_000])
        closed = data.draw(st.booleans())
        lines[i] = f"{match.group(1)} " + "[" * depth + ("]" * depth if closed else "")
        seen.add(f"{'nesting' if closed else 'unclosed'} {depth}")
    elif kind == "alias bomb" and match:
        policy = [n for n, line in enumerate(lines) if "failurePolicy:" in line]
        if policy and data.draw(st.booleans()):  # the field whose message expanded it
            i, match = policy[0], VALUE_LINE.match(lines[policy[0]])
            assert match is not None
            key = "failurePolicy"
        level = pick(data, [3, 8])
        lines[i] = f"{match.group(1)} *l{level}"
        lines.insert(0, bomb())
        if level == 8:
            seen.add(f"alias bomb in {key}")
    elif kind == "nasty key":
        indent = " " * pick(data, [0, 2, 4, 6])
        lines.insert(i, f"{indent}{pick(data, NASTY_KEYS)}: {pick(data, ['x', '1', '{}'])}")
    elif kind == "nasty command" and "command:" in text:
        where = [n for n, line in enumerate(lines) if "command:" in line]
        n = pick(data, where)
        lines[n] = lines[n].split("command:")[0] + "command: " + nasty_value(data)
    elif kind == "nasty name":
        name = pick(data, ["'[/x]'", "'[bold]b'", "Demo", "a.b", "a" * 64, "''", "'a\\nb'"])
        seen.add(f"name {name}")
        return text.replace("name: foraging-demo", f"name: {name}").replace(
            "name: minimal", f"name: {name}"
        )
    return "\n".join(lines)


def mutate(content: str | bytes, data: Any, kind: str, seen: set[str]) -> str | bytes:
    """One mutation of a batch file's content (text ones leave encoded bytes alone); what
    it drew goes into ``seen``."""
    if isinstance(content, bytes):
        return content
    if kind == "insert characters":
        at = data.draw(st.integers(0, len(content)))
        character = pick(data, CHARACTERS[pick(data, sorted(CHARACTERS))])
        seen.add(f"character {character}")
        return content[:at] + character + content[at:]
    if kind == "truncate":
        return content[: data.draw(st.integers(0, len(content)))]
    if kind == "other document":
        return pick(data, DOCUMENTS)
    if kind == "encoding":
        encoding = pick(data, ["utf-16", "utf-32", "utf-16-le", "latin-1", "utf-8-sig", "bad"])
        seen.add(f"encoding {encoding}")
        if encoding == "bad":
            at = data.draw(st.integers(0, len(content)))
            raw = content.encode("utf-8", "surrogatepass")
            return raw[:at] + pick(data, [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + raw[at:]
        return (content + "# é\n").encode(encoding, "replace")
    return mutate_lines(content, data, kind, seen)


BATCH_MUTATIONS = [
    "drop line", "repeat line", "replace value", "replace value", "replace value", "nesting",
    "alias bomb",
    "nasty key", "nasty command", "nasty name", "insert characters", "truncate",
    "other document", "encoding", "batch path", "sierra-root",
]  # fmt: skip


def run_validate(batch: Path, root: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", str(batch), "--sierra-root", str(root)])
    return code, out.getvalue(), err.getvalue()


def check_outcome(code: int, out: str, err: str, batch: Path, case: str) -> None:
    """Exit 0, or exit 2 with every problem on a line naming the file or a field."""
    assert "Traceback" not in out + err, case
    assert code in (0, 2), f"exit {code}: {err!r} for {case}"
    if code == 0:
        return
    lines = err.rstrip("\n").split("\n")
    assert lines[0] == "invalid batch:", f"{err!r} for {case}"
    named = (f"{batch}: ", "spec.", "sierra-root ")
    for line in lines[1:]:
        assert line.startswith(named), f"names no file nor field: {line!r} ({case})"


def special_batch_path(tmp: Path, data: Any, seen: set[str]) -> Path:
    """The batch argument is not a plain file: a directory, a symlink loop, nothing."""
    kind = pick(data, ["directory", "loop", "missing", "name too long", "markup"])
    seen.add(f"batch path {kind}")
    if kind == "directory":
        return tmp
    if kind == "loop":
        (tmp / "loop.yaml").symlink_to(tmp / "loop.yaml")
        return tmp / "loop.yaml"
    if kind == "name too long":
        return tmp / ("x" * 300 + ".yaml")
    if kind == "markup":
        (tmp / "[bold]b[" / "x]").mkdir(parents=True)
        shutil.copy(tmp / "batch.yaml", tmp / "[bold]b[" / "x]" / "batch.yaml")
        return tmp / "[bold]b[" / "x]" / "batch.yaml"
    return tmp / "missing.yaml"


def special_root(tmp: Path, data: Any, seen: set[str]) -> Path:
    """--sierra-root is odd: a symlink loop, a file, markup in its name."""
    kind = pick(data, ["loop", "file", "markup", "missing"])
    seen.add(f"sierra-root {kind}")
    if kind == "loop":
        (tmp / "rootloop").symlink_to(tmp / "rootloop")
        return tmp / "rootloop"
    if kind == "file":
        (tmp / "rootfile").write_text("")
        return tmp / "rootfile"
    if kind == "markup":
        return tmp / "[/x]root"
    return tmp / "no" / "such" / "root"


class Tally:
    """What a fuzz campaign drew and how `validate` answered, checked and printed at the end."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.reached: collections.Counter[str] = collections.Counter()

    def record(self, code: int, chosen: list[str], seen: set[str]) -> None:
        self.counts["cases"] += 1
        self.counts["accepted" if code == 0 else "rejected"] += 1
        self.kinds.update(chosen)
        self.reached.update(seen)

    def check(
        self, what: str, mutations: Any, required: Any, capsys: Any
    ) -> collections.Counter[str]:
        """Print the counts; every mutation drawn, every crash class reached, some valid."""
        least = min(self.reached[r] for r in required)
        with capsys.disabled():
            print(f"\nvalidate on {what}: {dict(self.counts)}, each crash class in >= {least}")
        assert set(self.kinds) == set(mutations), f"mutations never drawn: {self.kinds}"
        assert least > 0, (
            f"crash classes never reached: {sorted(set(required) - set(self.reached))}"
        )
        assert self.counts["accepted"] > 0
        return self.counts


def fuzz_settings(examples: int) -> Any:
    """Fixed seed (derandomized), no example database, no deadline: the same cases in CI."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_validate_never_crashes_on_mutated_batch_files(tmp_path, capsys):
    tally = Tally()
    serial = itertools.count()

    @fuzz_settings(BATCH_EXAMPLES)
    @given(st.data())
    def check(data: Any) -> None:
        tmp = tmp_path / str(next(serial))
        tmp.mkdir()
        seen: set[str] = set()
        try:
            content: str | bytes = pick(data, BASES)
            chosen = data.draw(st.lists(st.sampled_from(BATCH_MUTATIONS), min_size=1, max_size=3))
            for kind in chosen:
                content = mutate(content, data, kind, seen)
            batch = tmp / "batch.yaml"
            raw = (
                content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
            )
            batch.write_bytes(raw)
            root = tmp / "root"
            if "batch path" in chosen:
                batch = special_batch_path(tmp, data, seen)
            if "sierra-root" in chosen:
                root = special_root(tmp, data, seen)
            code, out, err = run_validate(batch, root)
            check_outcome(code, out, err, batch, f"{chosen}: {content[:300]!r}")
            tally.record(code, chosen, seen)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    check()
    counts = tally.check("mutated batch files", BATCH_MUTATIONS, REQUIRED, capsys)
    assert counts["rejected"] > counts["cases"] // 2


# ---------------------------------------------------------------------- commands files

EXPERIMENTS = ["c1-exp0", "c1-exp1", "c1-exp2"]
SIERRA_LINE = "python3 /proj/sim.py --config /sierra-root/p/b/exp-inputs/{exp}/run{k}.json"
# What str.splitlines splits at, and the other characters the issue found accepted.
ISSUE_CHARACTERS = ["\x0c", "\x0b", "\u2028", "\u2029", "\x85", "\x1c", "\x00", "\ufeff"]
COMMANDS_MUTATIONS = [
    "insert characters", "insert characters", "blank line", "BOM", "CRLF", "encoding",
    "experiment name", "missing experiment file", "file is a directory", "many experiments",
    "commandsFile", "empty", "truncate",
]  # fmt: skip
# What the issue's commands-file crashes and silent acceptances need a case to have drawn.
REQUIRED_COMMANDS = {
    "encoding utf-16", "encoding bad", "file is a directory", "missing experiment file",
    "commandsFile \"p/b/\\0c.txt\"", "commandsFile p/xx...(308)", "commandsFile '[/x]'",
    "character \x0c", "character \x0b", "character \u2028", "character \x00",
    "character \ufeff", "BOM", "CRLF", "experiment name c1-exp1\n", "experiment name c1 exp1",
    "1001 experiments", "per-experiment layout", "per-batch layout",
}  # fmt: skip
COMMANDS_FILE_VALUES = [
    '"p/b/\\0c.txt"', "p/" + "x" * 300 + "/c.txt", "'[/x]'",  # the crashes: twice as likely
    '"p/b/\\0c.txt"', "p/" + "x" * 300 + "/c.txt", "'[/x]'", "'/etc/passwd'", "'..'",
    "'p/../..'", "p/b/missing.txt", "p", "loop/commands.txt", "out/commands.txt", "'p/b/'",
]  # fmt: skip


def commands_text(experiments: list[str], runs: int = 2) -> str:
    lines = [SIERRA_LINE.format(exp=e, k=k) for k in range(runs) for e in experiments]
    return "# generated by SIERRA stage 1\n\n" + "\n".join(lines) + "\n"


def mutate_commands(text: str | bytes, data: Any, kind: str, seen: set[str]) -> str | bytes:
    """One mutation of a commands file's content; what it drew goes into ``seen``."""
    if isinstance(text, bytes):
        return text
    seen.add(kind)
    if kind == "insert characters":
        at = data.draw(st.integers(0, len(text)))
        issue = data.draw(st.integers(0, 2)) < 2
        any_character = [c for family in CHARACTERS.values() for c in family]
        character = pick(data, ISSUE_CHARACTERS if issue else any_character)
        seen.add(f"character {character}")
        return text[:at] + character + text[at:]
    if kind == "blank line":
        lines = text.split("\n")
        lines[data.draw(st.integers(0, len(lines) - 1))] = pick(data, ["", " ", "\t \t", "#"])
        return "\n".join(lines)
    if kind == "BOM":
        return "\ufeff" + text
    if kind == "CRLF":
        return text.replace("\n", "\r\n")
    if kind == "encoding":
        if data.draw(st.booleans()):
            encoding = pick(data, ["utf-16", "utf-32", "utf-16-be"])
            seen.add(f"encoding {encoding}")
            return text.encode(encoding)
        seen.add("encoding bad")
        at = data.draw(st.integers(0, len(text)))
        return (
            text[:at].encode() + pick(data, [b"\xff", b"\xfe\xfe", b"\xc3("]) + text[at:].encode()
        )
    if kind == "experiment name":
        new = pick(data, ["c1 exp1", "c1-exp1\n", "[/x]", "c1-exp1é", "a" * 70, "c1/x"])
        seen.add(f"experiment name {new}")
        return text.replace("c1-exp1", new)
    if kind == "truncate":
        return text[: data.draw(st.integers(0, len(text)))]
    if kind == "empty":
        return ""
    return text


def layout(tmp: Path, data: Any, chosen: list[str], seen: set[str]) -> str:
    """Write sierra-root under ``tmp``; returns the commandsFile value."""
    root = tmp / "root"
    batch_root = root / "p" / "b"
    batch_root.mkdir(parents=True)
    (root / "loop").symlink_to(root / "loop")
    (root / "out").symlink_to(tmp)
    names = EXPERIMENTS
    if "many experiments" in chosen:
        names = [f"c1-exp{i}" for i in range(pick(data, [999, 1000, 1001]))]
        seen.add(f"{len(names)} experiments")
    per_experiment = data.draw(st.booleans())
    text: str | bytes = commands_text(names)
    for kind in chosen:
        text = mutate_commands(text, data, kind, seen)
    if not per_experiment:
        path = batch_root / "commands.txt"
        if "file is a directory" in chosen:
            path.mkdir()
        else:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        value = "p/b/commands.txt"
    else:
        for name in names[:50]:
            d = batch_root / "exp-inputs" / name
            d.mkdir(parents=True, exist_ok=True)
            if "missing experiment file" in chosen and name == "c1-exp1":
                continue
            if "file is a directory" in chosen and name == "c1-exp1":
                (d / "commands.txt").mkdir()
                continue
            own = text if name == "c1-exp1" else commands_text([name])
            (d / "commands.txt").write_bytes(own if isinstance(own, bytes) else own.encode())
        value = "p/b"
    if "commandsFile" in chosen:
        value = pick(data, COMMANDS_FILE_VALUES)
        seen.add(f"commandsFile {label(value)}")
    seen.add("per-experiment layout" if per_experiment else "per-batch layout")
    return value


def test_validate_never_crashes_on_mutated_commands_files(tmp_path, capsys):
    tally = Tally()
    serial = itertools.count()

    @fuzz_settings(COMMANDS_EXAMPLES)
    @given(st.data())
    def check(data: Any) -> None:
        tmp = tmp_path / str(next(serial))
        tmp.mkdir()
        seen: set[str] = set()
        try:
            chosen = data.draw(
                st.lists(st.sampled_from(COMMANDS_MUTATIONS), min_size=1, max_size=3)
            )
            value = layout(tmp, data, chosen, seen)
            batch = tmp / "batch.yaml"
            batch.write_text(HEAD + f"spec:\n  commandsFile: {value}\n")
            code, out, err = run_validate(batch, tmp / "root")
            check_outcome(code, out, err, batch, f"{chosen}: {value!r}")
            tally.record(code, chosen, seen)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    check()
    counts = tally.check("mutated commands files", COMMANDS_MUTATIONS, REQUIRED_COMMANDS, capsys)
    assert counts["rejected"] > counts["cases"] // 3

"""The documentation cannot drift from the code: the site builds in mkdocs' strict mode, the
reference pages equal what scripts/gen_docs.py generates from the code, every message the
troubleshooting page quotes is still in the code, and every command in a fenced ``bash``
block of the README and docs/ is run (those marked ``<!-- runnable -->``) or checked against
what it names (the real argument parser, files, make targets, the chart)."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from sierra_operator.cli import _parser

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
RUNNABLE = "<!-- runnable -->"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_pages_equal_what_the_code_generates() -> None:
    """docs/reference/ is generated from the model, the CLI parser and the chart's schema."""
    gen = _script("gen_docs")
    for path, text in gen.pages().items():
        assert path.read_text() == text, f"{path}: stale; run: python scripts/gen_docs.py"


def test_reference_pages_name_every_field_option_and_value() -> None:
    """The generator misses nothing: a sample of the sources' names is in the pages."""
    gen = _script("gen_docs")
    text = "\n".join(gen.pages().values())
    for name in (
        "`spec.execution.runsPerPod`",
        "`status.failedRuns`",
        "`--server-timeout SERVER_TIMEOUT`",
        "## sierra-plugin-path",
        "`prefect.server.database.type`",
        "not allowed with spec.sierraRoot.claimName",
    ):
        assert name in text, name


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """Broken links, missing anchors and pages left out of nav fail the build."""
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "crd" / "index.html").exists()


def test_readme_is_short_and_links_into_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README links into docs/"
    for link in links:
        assert (REPO / link).exists(), link


def _cells(line: str) -> int:
    """Cells of a table row as Python-Markdown splits it: at pipes outside code spans,
    unescaped."""
    outside = re.sub(r"`[^`]*`", "", line.strip().strip("|"))
    return len(re.split(r"(?<!\\)\|", outside))


def test_every_table_row_has_its_header_s_cells() -> None:
    """A row with a stray pipe renders as a shifted row, which mkdocs does not warn about."""
    for page in PAGES:
        header = 0
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if not line.startswith("|"):
                header = 0
            elif not header:
                header = _cells(line)
            else:
                assert _cells(line) == header, f"{page.name} line {number}: {line[:80]}"


def _code_strings() -> set[str]:
    """Every string constant in the operator's code (f-strings by their literal parts;
    adjacent literals are joined by the parser, so a message split over lines is whole)."""
    found: set[str] = set()
    for path in (REPO / "operator" / "sierra_operator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def _quoted_in_first_column(page: Path) -> Iterator[str]:
    for line in page.read_text().splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        first = re.split(r"(?<!\\)\|", line)[1]
        yield from re.findall(r"`([^`]+)`", first)


def test_troubleshooting_quotes_messages_that_exist_in_the_code() -> None:
    strings = _code_strings()
    quotes = list(_quoted_in_first_column(DOCS / "troubleshooting.md"))
    assert len(quotes) > 30
    missing = [q for q in quotes if not any(q.strip() in s for s in strings)]
    assert not missing, f"quoted on docs/troubleshooting.md but not in the code: {missing}"


def test_pages_the_code_points_users_to_exist() -> None:
    """Messages and help texts that say "see docs/..." name a page that is there."""
    named = {m for s in _code_strings() for m in re.findall(r"docs/[\w./-]+\.md", s)}
    assert named, "no message names a docs page"
    for page in named:
        assert (REPO / page).exists(), page


def test_a_reworded_message_would_be_caught() -> None:
    """The check above can fail: a message that is not in the code is not found."""
    assert not any("the Prefect server exploded" in s for s in _code_strings())


# --- commands -------------------------------------------------------------------------


def _bash_blocks(page: Path) -> Iterator[tuple[bool, str]]:
    """(marked runnable, text) of each fenced bash block."""
    lines = page.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "```bash":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            runnable = i > 0 and lines[i - 1].strip() == RUNNABLE
            yield runnable, "\n".join(lines[i + 1 : end])


def _commands(block: str) -> Iterator[list[str]]:
    """Each simple command of a block as argv: continuation lines joined, comments dropped,
    split at && ; |, and each $(...) a command of its own (replaced by a word)."""
    text = block.replace("\\\n", " ")
    for inner in re.findall(r"\$\(([^()]*)\)", text):
        yield from _commands(inner)
    text = re.sub(r"\$\(([^()]*)\)", "SUBST", text)
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&;|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        argv: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&"):
                if argv:
                    yield argv
                argv = []
            else:
                argv.append(token)
        if argv:
            yield argv


def _sierra_flags() -> str:
    """The source of SIERRA, of our plugins and of the tutorial's project, where every
    option SIERRA takes is named (SIERRA builds its parser only after loading plugins)."""
    spec = importlib.util.find_spec("sierra")  # not imported: SIERRA imports matplotlib
    assert spec and spec.origin, "sierra-research is not installed"
    roots = [
        Path(spec.origin).parent,
        REPO / "operator" / "sierra_operator" / "sierra",  # sierraop.local, sierraop.cluster
        REPO / "tests" / "sierra_project",  # the tutorial's project: --controller, --scenario
    ]
    return "\n".join(p.read_text() for root in roots for p in root.rglob("*.py"))


def _check(argv: list[str], sierra_source: list[str]) -> None:
    """Fail unless the command is one the repository can stand behind."""
    while argv and re.match(r"^[A-Z_]+=", argv[0]):  # VAR=value cmd
        argv = argv[1:]
    prog, args = argv[0].removeprefix(".venv/bin/"), argv[1:]
    if prog == "sierra-operator":
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                _parser().parse_args(args)
            except SystemExit as exc:
                assert exc.code == 0 and "--help" in args, f"{argv}: {err.getvalue()}"
    elif prog == "sierra":
        if not sierra_source:
            sierra_source.append(_sierra_flags())
        for flag in (a.split("=")[0] for a in args if a.startswith("--")):
            assert f'"{flag}"' in sierra_source[0], f"{argv}: SIERRA has no option {flag}"
        execenv = args[args.index("--execenv") + 1]
        assert execenv in ("sierraop.local", "sierraop.cluster"), argv
    elif prog == "kubectl":
        if "-f" in args:
            assert (REPO / args[args.index("-f") + 1]).exists(), argv
        assert args[0] in ("apply", "get", "describe", "delete", "create", "cluster-info"), argv
    elif prog == "helm":
        assert args[0] in ("install", "upgrade"), argv
        rest = [a for a in args[1:] if a != "--install"]
        out = subprocess.run(
            [str(BIN / "helm"), "template", *rest], cwd=REPO, capture_output=True, text=True
        )
        assert out.returncode == 0, f"{argv}: {out.stderr}"
    elif prog == "make":
        out = subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, f"{argv}: {out.stderr}"
    elif prog in ("pip", "python", "python3"):
        if args[:2] == ["-m", "venv"]:
            return
        if args[:1] == ["install"]:
            extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
                "optional-dependencies"
            ]
            for target in args[args.index("-e") + 1 :][:1]:
                wanted = re.findall(r"\[([^]]+)\]", target)
                assert all(e in extras for w in wanted for e in w.split(",")), argv
            return
        script = REPO / args[0]
        assert script.exists() and script.suffix == ".py", argv
        for flag in (a for a in args if a.startswith("--")):
            assert f'"{flag}"' in script.read_text(), f"{argv}: {script.name} has no {flag}"
    elif prog == "bash":
        assert subprocess.run(["bash", "-n", args[0]], cwd=REPO).returncode == 0, argv
    elif prog == "apt-get":
        assert args[0] == "install", argv
    elif prog in ("export", "ls", "cd", "diff"):
        return
    else:
        raise AssertionError(f"{argv}: no check for `{prog}` in tests/unit/test_docs.py")


def _all_blocks() -> list[tuple[str, bool, str]]:
    return [
        (str(page.relative_to(REPO)), runnable, block)
        for page in PAGES
        for runnable, block in _bash_blocks(page)
    ]


def test_every_command_in_the_docs_is_checked() -> None:
    blocks = _all_blocks()
    assert len(blocks) > 15
    sierra_source: list[str] = []
    checked = 0
    for page, _runnable, block in blocks:
        for argv in _commands(block):
            try:
                _check(argv, sierra_source)
            except AssertionError as exc:
                raise AssertionError(f"{page}: {exc}") from None
            checked += 1
    assert checked > 30


def test_a_wrong_command_fails_the_check() -> None:
    """The checks can fail: a flag the parser does not have, a missing file, a make target."""
    for bad in (
        ["sierra-operator", "local", "x.yaml", "--no-such-flag"],
        ["sierra-operator", "logs", "batch", "c1-exp0", "not-a-number"],
        ["kubectl", "apply", "-f", "examples/no-such.yaml"],
        ["make", "no-such-target"],
        ["sierra", "--execenv", "sierraop.local", "--no-such-sierra-option"],
        ["frobnicate"],
    ):
        with pytest.raises(AssertionError):
            _check(bad, [])


@pytest.mark.parametrize(
    "page,block",
    [(page, block) for page, runnable, block in _all_blocks() if runnable],
)
def test_runnable_blocks_run(page: str, block: str) -> None:
    """The cheap commands (validate, crd, rbac, --help) are run as a reader would."""
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(REPO), "COLUMNS": "100"},
        timeout=300,
    )
    assert out.returncode == 0, f"{page}:\n{block}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # matplotlib's use of pyparsing
def test_bench_figures_are_drawn_from_bench_readme(tmp_path: Path) -> None:
    """scripts/bench_figures.py reads bench/README.md's tables and draws each figure the
    benchmarks page shows; the checked-in PNGs are those figures."""
    figures = _script("bench_figures")
    written = figures.draw(tmp_path)
    assert written, "no figure drawn"
    page = (DOCS / "benchmarks.md").read_text()
    for path in written:
        assert path.stat().st_size > 5000, path
        assert f"img/{path.name}" in page, f"{path.name} not shown on docs/benchmarks.md"
        assert (DOCS / "img" / path.name).exists(), f"docs/img/{path.name} not checked in"


def test_runnable_marker_is_used() -> None:
    """Some blocks are run, not only parsed (a typo in the marker would silently run none)."""
    assert sum(runnable for _page, runnable, _block in _all_blocks()) >= 4

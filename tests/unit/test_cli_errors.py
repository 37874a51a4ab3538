"""Bad input: one clear message naming the field or line and the fix, exit 2, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from sierra_operator.cli import main

pytestmark = pytest.mark.unit

HEAD = """apiVersion: sierra.research.io/v1alpha1
kind: SierraBatch
metadata: {name: demo}
"""


def run_cli(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    batch = tmp_path / "batch.yaml"
    batch.write_text(text)
    root = tmp_path / "root"
    code = main(["local", str(batch), "--sierra-root", str(root)])
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split()), root


CASES = {
    "yaml error": (HEAD + "spec:\n  experiments: [\n", "line 6, column 1: invalid YAML"),
    "unknown field": (
        HEAD + "spec:\n  experiments: [{name: e, runs: [{command: 'true'}]}]\n  excution: {}\n",
        "spec.excution: unknown field; remove it or check its spelling",
    ),
    "negative parallelism": (
        HEAD + "spec:\n  experiments: [{name: e, runs: [{command: 'true'}]}]\n"
        "  execution: {parallelism: -2}\n",
        "spec.execution.parallelism: Input should be greater than or equal to 1 (got -2). "
        "parallelism: At most this many runs",
    ),
    "empty experiment": (
        HEAD + "spec:\n  experiments: [{name: e, runs: []}]\n",
        "spec.experiments[0].runs: List should have at least 1 item",
    ),
    "missing commands file": (
        HEAD + "spec:\n  commandsFile: p/b/commands.txt\n",
        "spec.commandsFile: ",
    ),
    "no source": (HEAD + "spec: {}\n", "set exactly one source of experiments"),
    "wrong kind": (
        HEAD.replace("SierraBatch", "Batch") + "spec: {}\n",
        "kind: Input should be 'SierraBatch'",
    ),
    "not a mapping": ("- a\n- b\n", "expected a SierraBatch mapping"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_with_one_clear_message(name, tmp_path, capsys):
    text, expected = CASES[name]
    code, output, root = run_cli(tmp_path, text, capsys)
    assert code == 2
    assert expected in output
    assert "Traceback" not in output
    assert not root.exists(), "nothing may start (not even sierra-root) before input is valid"


def test_missing_commands_file_says_how_to_fix(tmp_path, capsys):
    text = HEAD + "spec:\n  commandsFile: p/b/commands.txt\n"
    code, output, _ = run_cli(tmp_path, text, capsys)
    assert code == 2
    assert "p/b/commands.txt does not exist; run SIERRA stage 1 first" in output


def test_missing_batch_file(tmp_path, capsys):
    code = main(["local", str(tmp_path / "nope.yaml"), "--sierra-root", str(tmp_path / "r")])
    assert code == 2
    assert "cannot read the batch file" in capsys.readouterr().err


def test_validate_prints_the_plan(tmp_path, capsys):
    batch = tmp_path / "b.yaml"
    batch.write_text(
        HEAD + "spec:\n  experiments: [{name: e1, runs: [{command: a}, {command: b}]}]\n"
    )
    assert main(["validate", str(batch), "--sierra-root", str(tmp_path)]) == 0
    assert "e1: 2 run(s)" in capsys.readouterr().out


VALIDATE_CASES = {
    "cpu not a quantity": (
        "spec:\n  experiments: [{name: e, runs: [{command: 'true'}]}]\n"
        "  execution: {resources: {requests: {cpu: banana}}}\n",
        "spec.execution.resources.requests.cpu: 'banana' is not a Kubernetes quantity; "
        'use e.g. "500m" or "2" for cpu, "1Gi" for memory',
    ),
    "size not a quantity": (
        "spec:\n  experiments: [{name: e, runs: [{command: 'true'}]}]\n"
        "  sierraRoot: {size: 10GB}\n",
        "spec.sierraRoot.size: '10GB' is not a Kubernetes quantity; use e.g. \"10Gi\"",
    ),
    "claim with size": (
        "spec:\n  experiments: [{name: e, runs: [{command: 'true'}]}]\n"
        "  sierraRoot: {claimName: shared, size: 20Gi}\n",
        "spec.sierraRoot.size: not allowed with spec.sierraRoot.claimName (an existing PVC is "
        "adopted as it is); remove one of them",
    ),
    "commands file climbs out": (
        "spec:\n  commandsFile: ../../etc/passwd\n",
        "spec.commandsFile: '../../etc/passwd' leaves sierra-root; give a path relative to "
        "spec.sierraRoot.mountPath, e.g. proj/ctrl/scn/batch/commands.txt",
    ),
    "absolute commands file": (
        "spec:\n  commandsFile: /etc/passwd\n",
        "spec.commandsFile: '/etc/passwd' is absolute; give a path relative to "
        "spec.sierraRoot.mountPath",
    ),
}


def run_validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    batch = tmp_path / "batch.yaml"
    batch.write_text(text)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    code = main(["validate", str(batch), "--sierra-root", str(root)])
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


@pytest.mark.parametrize("name", sorted(VALIDATE_CASES))
def test_validate_rejects_what_the_api_server_would(name, tmp_path, capsys):
    text, expected = VALIDATE_CASES[name]
    code, output = run_validate(tmp_path, HEAD + text, capsys)
    assert code == 2
    assert expected in output
    assert "Traceback" not in output


def test_validate_refuses_a_commands_file_behind_a_symlink_out_of_sierra_root(tmp_path, capsys):
    """The path string stays inside; the file it resolves to does not: refused, not read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "commands.txt").write_text("cat /sierra-root/exp-inputs/c1-exp0/secret\n")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "proj").symlink_to(outside)
    code, output = run_validate(
        tmp_path, HEAD + "spec:\n  commandsFile: proj/commands.txt\n", capsys
    )
    assert code == 2
    assert (
        f"spec.commandsFile: 'proj/commands.txt' leaves sierra-root (it resolves to "
        f"{outside.resolve() / 'commands.txt'}); give a path relative to "
        "spec.sierraRoot.mountPath"
    ) in output

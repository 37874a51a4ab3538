"""The ``sierraop.local`` SIERRA plugin's own logic: SIERRA's stage-2 options -> a SierraBatch
and a ``sierra-operator local`` command; failures -> messages. No SIERRA, no Prefect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sierra_operator import cli
from sierra_operator.core.model import BatchStatus, FailedRun, RunCounts, parse_batch
from sierra_operator.sierra.execenv import (
    BATCH_FILE,
    Stage2Failed,
    Stage2Options,
    batch_document,
    batch_name,
    commands_source,
    failure_message,
    local_command,
    plugin_path,
    run_stage2,
    wait_forwarding_interrupts,
    write_batch_file,
)

pytestmark = pytest.mark.unit


def test_plugin_directory_is_what_sierra_looks_for(capsys):
    local = plugin_path() / "sierraop" / "local"
    assert (local / ".sierraplugin").is_file(), "SIERRA requires the cookie file"
    assert (local / "plugin.py").is_file() and (local / "cmdline.py").is_file()
    assert "def sierra_plugin_type" in (local / "__init__.py").read_text()
    assert cli.main(["sierra-plugin-path"]) == 0
    assert capsys.readouterr().out == f"{plugin_path()}\n"


def test_options_from_sierra_cmdopts():
    opts = Stage2Options.from_cmdopts(
        {
            "exec_jobs_per_node": 3,
            "exec_resume": True,
            "exec_strict": False,
            "exec_retries": 2,
            "sierraop_prefect_api_url": "http://127.0.0.1:9/api",
            "sierraop_work_pool": "p",
            "sierraop_work_queue": None,
            "sierraop_server_timeout": 12.5,
        }
    )
    assert opts == Stage2Options(3, True, False, 2, "http://127.0.0.1:9/api", "p", None, 12.5)
    assert Stage2Options.from_cmdopts({}).parallelism >= 1


@pytest.mark.parametrize(
    ("leaf", "name"),
    [
        ("template-speed.1.3.C3", "template-speed-1-3-c3"),
        (
            "template-population_size.Log8+max_speed.1.9.C5",
            "template-population-size-log8-max-speed-1-9-c5",
        ),
        ("t-" + "x" * 70 + ".C3", "t-" + "x" * 61),
        ("___", "sierra-batch"),
    ],
)
def test_batch_name_is_a_valid_resource_name(leaf, name):
    assert batch_name(Path("/r") / leaf) == name
    parse_batch(batch_document(name, "p/commands.txt", Stage2Options(1)))


def test_batch_document_maps_sierra_options_and_is_valid():
    doc = batch_document("b", "proj/c/s/batch/commands.txt", Stage2Options(4, retries=1))
    batch = parse_batch(doc)
    assert batch.spec.commands_file == "proj/c/s/batch/commands.txt"
    assert batch.spec.execution.parallelism == 4 and batch.spec.execution.retries == 1
    assert batch.spec.execution.failure_policy.value == "Continue", "hpc.local keeps going too"
    assert "prefect" not in doc["spec"]
    strict = parse_batch(
        batch_document("b", "x/commands.txt", Stage2Options(1, strict=True, work_pool="p"))
    )
    assert strict.spec.execution.failure_policy.value == "StopBatch", "--exec-strict"
    assert strict.spec.prefect.work_pool == "p"


def test_commands_file_or_per_experiment_files(tmp_path):
    cmdfile = tmp_path / "commands.txt"
    assert commands_source(tmp_path, cmdfile) == tmp_path, "per-exp: the batch root"
    cmdfile.write_text("x\n")
    assert commands_source(tmp_path, cmdfile) == cmdfile


def test_batch_file_goes_under_our_scratch_dir(tmp_path):
    path = write_batch_file(tmp_path, batch_document("b", "c.txt", Stage2Options(1)))
    assert path == tmp_path / "scratch" / "sierra-operator" / BATCH_FILE
    assert parse_batch(yaml.safe_load(path.read_text())).metadata.name == "b"


def test_local_command_flags(tmp_path):
    base = [sys.executable, "-m", "sierra_operator.cli", "local", str(tmp_path / "b.yaml")]
    base += ["--sierra-root", str(tmp_path)]
    assert local_command(tmp_path / "b.yaml", tmp_path, Stage2Options(2)) == base
    opts = Stage2Options(2, resume=True, prefect_api_url="http://h:1/api", server_timeout=5.0)
    assert local_command(tmp_path / "b.yaml", tmp_path, opts) == [
        *base,
        "--resume",
        "--prefect-api-url",
        "http://h:1/api",
        "--server-timeout",
        "5.0",
    ]


def _write_status(batch_root: Path, failed: int, not_run: int = 0) -> Path:
    status = BatchStatus(
        runs=RunCounts(total=9, failed=failed, succeeded=9 - failed - not_run),
        failed_runs=[
            FailedRun(experiment="c1-exp1", run=k, attempt=2, reason="exit code 3", log="/l")
            for k in range(min(failed, 2))
        ],
    )
    path = batch_root / "scratch" / "sierra-operator" / "status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(status.model_dump_json(by_alias=True))
    return path


def test_failure_message_names_the_runs_from_this_invocations_status(tmp_path):
    path = _write_status(tmp_path, failed=3)
    message = failure_message(tmp_path, since=time.time() - 60)
    assert message is not None
    assert message.splitlines() == [
        "3 of 9 run(s) failed:",
        "  c1-exp1/run0 (attempt 2): exit code 3 [full stderr: /l]",
        "  c1-exp1/run1 (attempt 2): exit code 3 [full stderr: /l]",
        "  ... and 1 more",
    ]
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert failure_message(tmp_path, since=time.time() - 60) is None, "another invocation's"
    assert failure_message(tmp_path / "nowhere", since=0) is None
    _write_status(tmp_path, failed=1, not_run=4)
    first = failure_message(tmp_path, since=0)
    assert first is not None
    assert first.startswith("1 of 9 run(s) failed, 4 not run (--exec-strict stops at the first")


def test_commands_outside_the_sierra_root_are_refused_before_anything_runs(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    with pytest.raises(Stage2Failed, match="not under --sierra-root") as exc:
        run_stage2(root, elsewhere, elsewhere / "commands.txt", Stage2Options(1))
    assert exc.value.exit_code == 2
    assert not (elsewhere / "scratch").exists()


_CHILD = """
import pathlib, signal, sys, time
out, seen = pathlib.Path(sys.argv[1]), []
signal.signal(signal.SIGTERM, lambda *_: seen.append(1) or out.write_text(str(len(seen))))
out.write_text("0")
deadline = time.time() + 30
while not seen and time.time() < deadline:
    time.sleep(0.05)
time.sleep(1.0)  # local mode's cleanup, during which the user presses Ctrl-C again
sys.exit(130)
"""


def test_ctrl_c_is_passed_on_once_and_the_child_is_awaited(tmp_path):
    """Two Ctrl-Cs on SIERRA: the child gets one SIGTERM (a second would cut its cleanup
    short) and SIERRA waits for it to end; the signals are sent to SIERRA's main thread from
    another thread, as the kernel may deliver them while the main thread waits."""
    seen = tmp_path / "sigterms"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(seen)], process_group=0)
    main = threading.main_thread().ident
    assert main is not None

    def press_ctrl_c_twice() -> None:
        while not seen.exists():
            time.sleep(0.05)
        for _ in range(2):
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.3)

    notes: list[str] = []
    presser = threading.Thread(target=press_ctrl_c_twice)
    presser.start()
    try:
        code, interrupted = wait_forwarding_interrupts(child, notes.append)
    finally:
        presser.join()
        if child.poll() is None:
            child.kill()
    assert (code, interrupted) == (130, True)
    assert seen.read_text() == "1", "exactly one SIGTERM reached the child"
    assert len(notes) == 2 and "waiting for it" in notes[0] and "still waiting" in notes[1]

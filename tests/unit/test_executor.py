"""Local executor: flow-run processes die with it (PR_SET_PDEATHSIG); a dead one is reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import os, sys, time
from sierra_operator.local.executor import die_with_parent
parent = os.getpid()
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)  # as a flow-run process: not in the parent's process group
    die_with_parent(parent)
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie is dead


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_child_dies_when_its_parent_is_sigkilled() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.5)  # the child has run die_with_parent
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait()
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, UnboundLocalError, PermissionError):
            pass


def test_execute_on_a_dead_executor_names_its_log(tmp_path: Path) -> None:
    from sierra_operator.local.executor import ExecutorExited, FlowRunExecutor

    log = tmp_path / "executor.log"
    executor = FlowRunExecutor(
        name="executor",
        argv=[sys.executable, "-c", "print('boom', flush=True)"],
        env=dict(os.environ),
        log_path=log,
    )
    executor.start()
    assert executor.proc is not None
    executor.proc.wait(10)
    with pytest.raises(ExecutorExited, match=r"executor\.log") as err:
        for _ in range(100):  # the pipe buffers a little before it breaks
            executor.execute("00000000-0000-0000-0000-000000000000")
    assert "boom" in str(err.value)


def test_a_started_flow_run_process_is_tracked_before_it_is_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sierra_operator.local import executor as mod

    ex = mod._Executor("http://unused")
    read_end, write_end = os.pipe()
    os.close(read_end)
    ex.spare = (12345, write_end)

    def interrupted(fd: int, data: bytes) -> int:
        raise KeyboardInterrupt  # SIGTERM as the id is written

    monkeypatch.setattr(mod.os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ex.start("run-1")
    assert ex.children == {12345: "run-1"}  # stop() will end it


def test_a_dead_spare_is_not_tracked(monkeypatch: pytest.MonkeyPatch) -> None:
    from sierra_operator.local import executor as mod

    ex = mod._Executor("http://unused")
    pids = iter([111, 222])

    def fork_spare() -> None:
        read_end, write_end = os.pipe()
        os.close(read_end)
        ex.spare = (next(pids), write_end)

    def gone(fd: int, data: bytes) -> int:
        raise BrokenPipeError

    crashed: list[str] = []
    monkeypatch.setattr(ex, "fork_spare", fork_spare)
    monkeypatch.setattr(mod.os, "write", gone)
    monkeypatch.setattr(mod, "mark_crashed", lambda url, run, msg: not crashed.append(run))
    ex.start("run-1")
    assert ex.children == {}
    assert crashed == ["run-1"]


def test_a_crash_mark_the_server_refused_is_retried_until_it_lands(monkeypatch) -> None:
    """Local mode's server runs no late-runs service and flow runs send no heartbeats: a
    crash the server never heard of would leave the batch waiting for that flow run
    forever. A real HTTP server on loopback answers 503 twice (SQLite under load), then
    takes the mark; the executor's serve loop tries again until it lands."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sierra_operator.local import executor as mod

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            seen.append("GET")
            if seen.count("GET") <= 2:
                self._answer(503, {"detail": "busy"})
            else:
                self._answer(200, {"state": {"type": "RUNNING"}})

        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            seen.append(json.loads(self.rfile.read(length))["state"]["type"])
            self._answer(201, {})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ex = mod._Executor(f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setattr(ex, "MARK_RETRY_SECONDS", 0.0)
        ex.crashed("run-1", "the flow-run process was killed by signal 9")
        assert "run-1" in ex.unmarked and "CRASHED" not in seen
        for _ in range(5):
            ex.retry_marks()
        assert ex.unmarked == {}
        assert seen == ["GET", "GET", "GET", "CRASHED"]
    finally:
        server.shutdown()

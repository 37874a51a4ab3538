"""Local mode's flow-run executor: one warm Python per batch instead of one fresh per flow run.

A Prefect process worker starts ``python -m prefect.engine`` for every flow run: on a small
machine that is 3-6 s of interpreter start and imports per experiment, the largest cost of
local mode after the server's own start. This executor is started once per batch, while the
Prefect server starts, and imports Prefect and the experiment flow then. The driver writes
the id of each flow run it creates to the executor's stdin; the executor forks a child per
flow run, and the child runs the flow run as Prefect's own entrypoint does (``python -m
prefect.engine``, the command a process worker runs) with everything already imported.

Semantics kept from the process worker: each flow run executes in its own process (its own
process group); a flow-run process that dies without reporting (SIGKILL, OOM) has its flow
run marked Crashed, so the driver retries its runs; SIGTERM stops every flow-run process
with SIGTERM (Prefect's engine then kills the run commands, see ``flows.kill_live_runs``),
then SIGKILL after a grace period; a flow run someone asks Prefect to cancel (the UI,
``prefect flow-run cancel``: state Cancelling) has its process stopped the same way and is
marked Cancelled. The driver closing our stdin means its batch ended:
flow-run processes are given :data:`DRAIN_GRACE` to end on their own first. The parent
process never talks to Prefect through Prefect's client (no threads before a fork): its API
calls (marking a flow run Crashed or Cancelled, asking which are being cancelled) are plain
HTTP.

Run as ``python -m sierra_operator.local.executor``, with ``PREFECT_API_URL`` set.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from uuid import UUID

from sierra_operator.local.server import ManagedProcess, prefect_environment

# Modules a flow run imports lazily while it runs (measured with prefect 3.8.8: ~120
# modules, fastapi and starlette among them): imported once here, not in every flow run.
LAZY_IMPORTS = (
    "anyio._backends._asyncio",
    "anyio.streams.stapled",
    "anyio.streams.tls",
    "encodings.idna",
    "fastapi",
    "graphviz",
    "http.cookies",
    "opentelemetry._logs",
    "opentelemetry.metrics",
    "prefect.utilities.visualization",
    "pydantic.color",
    "rich._emoji_codes",
    "starlette.applications",
    "starlette.responses",
    "starlette.routing",
    "starlette.staticfiles",
)
READY = "ready"  # the line the executor prints once its imports are done
STOP_GRACE = 5.0  # within the driver's grace for the executor itself
DRAIN_GRACE = 10.0  # flow runs reporting their end, once the batch has ended
_FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class ExecutorExited(RuntimeError):
    """The executor process is gone: a flow run could not be handed to it (the driver
    reports this as its LocalError; the message names the executor's log)."""


@dataclass
class FlowRunExecutor(ManagedProcess):
    """The driver's handle on the executor process (started before the server is ready)."""

    pipe_stdin: ClassVar[bool] = True
    submitted: list[str] = field(default_factory=list)

    @classmethod
    def for_batch(cls, home: Path, api_url: str, name: str, log_dir: Path) -> FlowRunExecutor:
        """An executor talking to ``api_url``, logging to ``log_dir/<name>.log``."""
        return cls(
            name=name,
            argv=[sys.executable, "-m", "sierra_operator.local.executor"],
            env=prefect_environment(home, api_url),
            log_path=log_dir / f"{name}.log",
        )

    def execute(self, flow_run_id: str) -> None:
        """Hand one flow run to the executor; it starts it at once.

        Raises :class:`ExecutorExited` if the executor died (its stdin is a broken pipe),
        naming its log, rather than a BrokenPipeError traceback."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{flow_run_id}\n".encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise ExecutorExited(
                f"the flow-run executor exited ({exc}); see {self.log_path}, which ends:\n"
                f"{self.log_tail()}"
            ) from None
        self.submitted.append(flow_run_id)

    def finish(self) -> None:
        """The batch ended: close the executor's stdin so it lets its flow-run processes
        end on their own (:data:`DRAIN_GRACE`), wait for it, then :meth:`stop` whatever is
        left. Unlike a SIGTERM, this does not interrupt a flow run reporting its end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=DRAIN_GRACE + STOP_GRACE + 5.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.stop()


# ------------------------------------------------------------------- the executor process


def _say(line: str) -> None:
    """One line of the executor's log, timed like Prefect's own lines."""
    print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} | {line}", flush=True)


def _api(url: str, method: str = "GET", body: dict[str, object] | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def _mark(api_url: str, flow_run_id: str, state: str, message: str, *, unless: set[str]) -> bool:
    """Set the flow run's state to ``state`` (forced) unless its state is one of
    ``unless``; False when the server could not be told (the caller tries again)."""
    name = state.capitalize()
    try:
        run = _api(f"{api_url}/flow_runs/{flow_run_id}")
        now = (run or {}).get("state") or {} if isinstance(run, dict) else {}
        if now.get("type") in unless:
            return True
        _api(
            f"{api_url}/flow_runs/{flow_run_id}/set_state",
            "POST",
            {"state": {"type": state, "name": name, "message": message}, "force": True},
        )
        _say(f"flow run {flow_run_id}: marked {name} ({message})")
        return True
    except (urllib.error.URLError, OSError, ValueError) as exc:
        _say(f"flow run {flow_run_id}: could not mark it {name} yet: {exc}")
        return False


def mark_crashed(api_url: str, flow_run_id: str, message: str) -> bool:
    """Mark a flow run Crashed unless it reached a final state (what a worker does when the
    flow-run process exits without reporting). False when the server could not be told:
    the caller tries again (:meth:`_Executor.retry_marks`), since nothing else would end
    that flow run (no heartbeats, no late-runs service on local mode's server)."""
    return _mark(api_url, flow_run_id, "CRASHED", message, unless=_FINAL)


def _execute(flow_run_id: str) -> None:
    """What ``python -m prefect.engine`` does for a flow run, minus loading the flow from its
    deployment (an API read and the pull steps: the flow is imported already, and each
    run's command is given its working directory explicitly)."""
    from prefect._internal.metrics import RunMetrics
    from prefect.engine import handle_engine_signals
    from prefect.flow_engine import load_flow_run, run_flow
    from prefect.logging.loggers import flow_run_logger
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from sierra_operator.runs.flows import run_experiment

    # No heartbeats: the flow run's end waits up to 1 s for the heartbeat thread, and this
    # executor itself reports a flow-run process that dies (heartbeats let a server find such
    # runs when nobody watches them).
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        handle_engine_signals(UUID(flow_run_id)),
    ):
        flow_run = load_flow_run(flow_run_id=UUID(flow_run_id))
        with RunMetrics(flow_run, run_experiment):
            logger = flow_run_logger(flow_run)
            run_flow(run_experiment, flow_run=flow_run, error_logger=logger)  # type: ignore[arg-type]


def skip_suspension_observer() -> bool:
    """Do not watch our flow runs for suspension (``suspend_flow_run``, which the
    experiment flow never calls): for a flow run of a deployment, Prefect's engine opens an
    events subscription (a thread, its own event loop, a websocket to ``/events/out``) and
    waits for it before the flow starts: 0.3 s of every experiment's start measured on a
    2-core machine, and a subscriber the server serves for nothing. Checked against
    prefect 3.8; False (nothing changed) if this Prefect has no such observer."""
    import contextlib

    import prefect.flow_engine

    if not hasattr(prefect.flow_engine, "observe_flow_run_suspension"):
        return False

    def unobserved(*args: object, **kwargs: object) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    prefect.flow_engine.observe_flow_run_suspension = unobserved
    return True


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send this process SIGTERM when its parent ``parent_pid`` dies.

    A flow-run process is in its own process group, so an executor SIGKILLed (the OOM
    killer) would leave it running, unobserved, with nobody to mark it Crashed. If the
    parent already died before the ``prctl`` (we were re-parented), exit at once. Linux
    only: elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _become_flow_run_process(parent_pid: int) -> None:
    """In a forked child: its own process group, default signals, no stdin of ours; dies
    with the executor ``parent_pid``."""
    os.setpgid(0, 0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    die_with_parent(parent_pid)


def _read_line(fd: int) -> str | None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 256)
        if not chunk:
            return None
        data += chunk
    return data.decode().strip()


def _spare(feed: int, parent_pid: int) -> None:
    """A child forked ahead of need: waits for its flow run's id on ``feed``, executes it,
    exits (without an id: exits 0, the executor is stopping). Never returns."""
    code = 0
    flow_run_id = ""
    try:
        _become_flow_run_process(parent_pid)
        flow_run_id = _read_line(feed) or ""
        if flow_run_id:
            os.environ["PREFECT__FLOW_RUN_ID"] = flow_run_id
            _execute(flow_run_id)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        print(f"flow run {flow_run_id}: {type(exc).__name__}: {exc}", flush=True)
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()  # Prefect drains its log and event services here
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"the flow-run process was killed by signal {os.WTERMSIG(status)}"
    return f"the flow-run process exited with code {os.waitstatus_to_exitcode(status)}"


def cancelling(api_url: str, flow_run_ids: list[str]) -> set[str]:
    """Which of ``flow_run_ids`` someone asked Prefect to cancel (state Cancelling: the UI's
    or ``prefect flow-run cancel``'s request, which a worker carries out). One request for
    all of them; nothing if the server cannot be reached now (asked again later)."""
    try:
        found = _api(
            f"{api_url}/flow_runs/filter",
            "POST",
            {
                "flow_runs": {
                    "id": {"any_": flow_run_ids},
                    "state": {"type": {"any_": ["CANCELLING"]}},
                },
                "limit": len(flow_run_ids),
            },
        )
    except (urllib.error.URLError, OSError, ValueError):
        return set()
    return {str(run["id"]) for run in found} if isinstance(found, list) else set()


def mark_cancelled(api_url: str, flow_run_id: str) -> bool:
    """Finish a cancellation the way a worker does: the process is gone, the flow run is
    Cancelled, also over the Crashed its engine reported on our SIGTERM (not if it had
    completed or failed first). False if the server could not be told."""
    message = "cancelled on request; its runs were stopped"
    return _mark(api_url, flow_run_id, "CANCELLED", message, unless=_FINAL - {"CRASHED"})


class _Executor:
    """Flow-run processes forked from this warm one; one spare is always forked ahead."""

    MARK_RETRY_SECONDS: ClassVar[float] = 2.0
    CANCEL_POLL_SECONDS: ClassVar[float] = 1.0

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.children: dict[int, str] = {}
        self.spare: tuple[int, int] | None = None  # (pid, write end of its pipe)
        # Flow runs whose process died and that the server has not been told of yet:
        # id -> (message, when to try again).
        self.unmarked: dict[str, tuple[str, float]] = {}
        self.cancelled: set[str] = set()  # flow runs stopped because cancelling was asked
        self.next_cancel_poll = 0.0

    def crashed(self, flow_run_id: str, message: str) -> None:
        """Tell the server the flow run crashed, now or, if it cannot be reached, later."""
        if not mark_crashed(self.api_url, flow_run_id, message):
            self.unmarked[flow_run_id] = (message, time.monotonic() + self.MARK_RETRY_SECONDS)

    def watch_cancelling(self) -> None:
        """Stop the processes of flow runs someone asked to cancel (SIGTERM: Prefect's
        engine kills their run commands). At most once a second, only while flow runs
        execute: an idle executor asks the server nothing."""
        now = time.monotonic()
        if not self.children or now < self.next_cancel_poll:
            return
        self.next_cancel_poll = now + self.CANCEL_POLL_SECONDS
        asked = cancelling(self.api_url, sorted(set(self.children.values()) - self.cancelled))
        for pid, flow_run_id in list(self.children.items()):
            if flow_run_id in asked:
                self.cancelled.add(flow_run_id)
                _say(f"flow run {flow_run_id}: cancelling was asked; stopping process {pid}")
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def retry_marks(self) -> None:
        """Try again the crash marks that are due (a server answering 503 under load)."""
        now = time.monotonic()
        for flow_run_id, (message, due) in list(self.unmarked.items()):
            if due <= now:
                del self.unmarked[flow_run_id]
                self.crashed(flow_run_id, message)

    def fork_spare(self) -> None:
        """Fork the next flow-run process now, so a flow run does not wait for the fork."""
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            _spare(read_end, parent)
        os.close(read_end)
        self.spare = (pid, write_end)

    def start(self, flow_run_id: str) -> None:
        """Hand the flow run to the spare (a fresh fork if it died), then fork the next."""
        for _ in range(2):
            if self.spare is None:
                self.fork_spare()
            assert self.spare is not None
            pid, feed = self.spare
            # Tracked before it is told: a SIGTERM (KeyboardInterrupt) right after the write
            # would otherwise leave a flow-run process that stop() and reap() never see.
            self.children[pid] = flow_run_id
            self.spare = None
            try:
                os.write(feed, f"{flow_run_id}\n".encode())
            except OSError:  # the spare is gone (killed): a new one takes it
                del self.children[pid]
                continue
            finally:
                os.close(feed)
            _say(f"flow run {flow_run_id}: started in process {pid}")
            self.fork_spare()
            return
        self.crashed(flow_run_id, "no flow-run process could be started")

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare[0]:
                os.close(self.spare[1])
                self.spare = None
                continue
            flow_run_id = self.children.pop(pid, None)
            if flow_run_id is None:
                continue
            _say(f"flow run {flow_run_id}: {_describe(status)}")
            if flow_run_id in self.cancelled:
                self.cancelled.discard(flow_run_id)
                if not mark_cancelled(self.api_url, flow_run_id):
                    self.crashed(flow_run_id, "cancelled on request; its runs were stopped")
            elif status != 0:
                self.crashed(flow_run_id, _describe(status))

    def stop_spare(self) -> None:
        """End the spare flow-run process (it has no flow run)."""
        if self.spare is not None:
            pid, feed = self.spare
            os.close(feed)  # it exits on EOF; the kill is for one that is not reading yet
            self.spare = None
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM every flow-run process (Prefect's engine kills their commands), then
        SIGKILL what is left after :data:`STOP_GRACE`."""
        self.stop_spare()
        for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
            for pid in list(self.children):
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.children and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
            if not self.children:
                return

    def drain(self, grace: float) -> None:
        """Let flow-run processes end on their own, for up to ``grace`` seconds: the driver
        is done, their runs are final and they are reporting so (a SIGTERM now would
        interrupt that, and Prefect's handling of it is slow)."""
        self.stop_spare()
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self.reap()
            self.retry_marks()
            time.sleep(0.02)

    def serve(self) -> None:
        """Start the flow runs named on stdin until it ends (the driver is done, or gone)."""
        buffered = b""
        while True:
            self.reap()
            self.retry_marks()
            self.watch_cancelling()
            ready, _, _ = select.select([0], [], [], 0.05)
            if not ready:
                continue
            chunk = os.read(0, 4096)
            if not chunk:
                return
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                if line.strip():
                    self.start(line.decode().strip())


def main() -> None:
    """Import everything a flow run needs, say so, then execute flow runs until stdin ends."""
    api_url = os.environ["PREFECT_API_URL"].rstrip("/")
    # Warm: what every flow-run process needs, imported once here instead of per flow run.
    import prefect._internal.metrics
    import prefect.engine
    import prefect.flow_engine
    import prefect.settings
    import prefect.task_engine  # noqa: F401

    import sierra_operator.runs.flows  # noqa: F401 - the flow's module

    for module in LAZY_IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    skip_suspension_observer()
    executor = _Executor(api_url)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    executor.fork_spare()
    _say(READY)
    try:
        executor.serve()  # returns when the driver closes our stdin: its batch has ended
        executor.drain(DRAIN_GRACE)
    except KeyboardInterrupt:  # SIGTERM: stop now
        pass
    finally:
        executor.stop()
        _say("stopped")
    # No interpreter teardown (Prefect imported: ~0.4 s): nothing is left to flush.
    os._exit(0)


if __name__ == "__main__":
    main()

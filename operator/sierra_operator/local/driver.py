"""`sierra-operator local`: run a batch on this machine with the same engine as the operator.

Wiring only: load and validate the batch (before anything starts), start the flow-run
executor (:mod:`~sierra_operator.local.executor`, it imports Prefect while the server starts)
and a private Prefect server (or use ``--prefect-api-url``), create pool/queue/deployment,
then loop: observe Prefect (+ run records) -> :func:`machine.decide` -> create the flow run
and hand it to the executor -> show progress. On Ctrl-C/SIGTERM it stops its flow runs and
its own processes and records the batch as Interrupted; finished runs keep their records.
Prefect's client is imported only once the server is starting: the two overlap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from rich.console import Console

from sierra_operator.core import names
from sierra_operator.core.machine import (
    Decision,
    RunObservation,
    RunPhase,
    SubmitRuns,
    decide,
    next_wave,
    set_condition,
)
from sierra_operator.core.model import BatchPhase, BatchStatus, Condition, ImageStatus
from sierra_operator.inputs.loader import LoadedBatch
from sierra_operator.local.executor import ExecutorExited, FlowRunExecutor
from sierra_operator.local.prefetch import Prefetch
from sierra_operator.local.progress import ProgressView, summary_table
from sierra_operator.local.record_watch import RecordWatch
from sierra_operator.local.server import LocalPrefectServer, health_ok
from sierra_operator.runs import ledger

if TYPE_CHECKING:
    from sierra_operator.runs.prefect_api import PrefectBatch

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OK = 0
EXIT_RUNS_FAILED = 1
EXIT_INTERRUPTED = 130


class LocalError(RuntimeError):
    """Local mode could not run the batch (server, workers, pool); the message says why."""


@dataclass
class LocalOptions:
    """Command-line choices of `sierra-operator local`."""

    sierra_root: Path
    prefect_api_url: str | None = None
    pool: str | None = None
    queue: str | None = None
    workers: int | None = None
    resume: bool = False
    server_timeout: float = 300.0
    # Prefect is observed when a run of the current experiment starts or ends (its files
    # appear: record_watch), and at least this often (what only Prefect knows).
    poll_interval: float = 0.5


@dataclass
class LocalResult:
    """How the batch ended."""

    status: BatchStatus
    failed_runs: tuple[tuple[str, int], ...]
    exit_code: int
    status_file: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def batch_identity(name: str) -> str:
    """Unique id of one invocation: tags its flow runs, names its deployment and workers."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def with_resumed(
    observed: dict[tuple[str, int], RunObservation], resumed: set[tuple[str, int]]
) -> dict[tuple[str, int], RunObservation]:
    """Runs recorded as succeeded by an earlier invocation count as succeeded now."""
    merged = {key: RunObservation(RunPhase.SUCCEEDED, 1) for key in resumed}
    merged.update(observed)
    return merged


class LocalRun:
    """One invocation of local mode; owns exactly the processes and Prefect objects it makes."""

    def __init__(
        self, loaded: LoadedBatch, opts: LocalOptions, console: Console, home: Path | None = None
    ) -> None:
        self.loaded = loaded
        self.opts = opts
        self.console = console
        spec = loaded.batch.spec
        self.batch_id = batch_identity(loaded.batch.metadata.name)
        self.home = home or Path(tempfile.mkdtemp(prefix="sierra-operator-prefect-"))
        self.server: LocalPrefectServer | None = None
        self.executor: FlowRunExecutor | None = None
        self.prefect: PrefectBatch | None = None
        self.pool = opts.pool or spec.prefect.work_pool or names.DEFAULT_LOCAL_POOL
        self.queue = opts.queue or spec.prefect.work_queue or names.DEFAULT_QUEUE
        self.status = BatchStatus(phase=BatchPhase.PENDING, work_pool=self.pool)
        self.timings: dict[str, float] = {}
        # Gates of this batch only, even in a home shared with other batches.
        self.prefetch = Prefetch(self.home / "gates" / self.batch_id)
        self.watch = RecordWatch()
        self._loop = asyncio.new_event_loop()

    def _await(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    # ------------------------------------------------------------------ lifecycle

    def start_prefect(self, view: ProgressView) -> str:
        """Our own server on a free port, or the given one (checked before use); the
        executor starts first, so its imports overlap with the server's start."""
        if self.opts.prefect_api_url:
            url = self.opts.prefect_api_url.rstrip("/")
            if not health_ok(url):
                raise LocalError(
                    f"--prefect-api-url {url} does not answer /health; start the server or "
                    "drop the option to let local mode start its own"
                )
            self.start_executor(url)
            return url
        t0 = time.monotonic()
        self.server = LocalPrefectServer(self.home, lean=True)
        self.start_executor(self.server.api_url)
        view.note(f"starting a Prefect server on {self.server.api_url} (PREFECT_HOME={self.home})")
        self.server.start()
        # Prefect's client imports (seconds on a small machine) overlap with the start.
        import prefect.workers.process  # noqa: F401

        from sierra_operator.runs import prefect_api  # noqa: F401

        self.server.wait_ready(self.opts.server_timeout)
        self.timings["server_start"] = time.monotonic() - t0
        view.note(f"Prefect server ready in {self.timings['server_start']:.1f}s")
        return self.server.api_url

    def build_image(self, view: ProgressView) -> None:
        """``spec.image.build`` in local mode: build and push with DOCKER_HOST's engine and
        your `docker login` credentials, before anything else starts (runs here do not use
        the image: this prepares it for the cluster). The digest goes into status.json."""
        from sierra_operator.images.builder import ImageError, build_and_push
        from sierra_operator.images.spec import build_hash, is_directory_context

        image = self.loaded.batch.spec.image
        assert image is not None and image.build is not None
        context = image.build.context
        if is_directory_context(context):
            local = (self.loaded.workdir / context).resolve()
            image = image.model_copy(
                update={"build": image.build.model_copy(update={"context": str(local)})}
            )
        t0 = time.monotonic()
        try:
            pushed = build_and_push(image, os.environ.get("DOCKER_HOST"), None, None, view.note)
        except ImageError as exc:
            raise LocalError(f"image: {exc}") from None
        self.timings["image_build"] = time.monotonic() - t0
        self.status = self.status.model_copy(
            update={
                "image": ImageStatus(
                    ref=pushed.ref, digest=pushed.digest, build_hash=build_hash(image)
                )
            }
        )

    def start_executor(self, api_url: str) -> None:
        """The process that executes this batch's flow runs (see its module)."""
        log_dir = ledger.state_dir(self.loaded.batch_root) / "workers"
        self.executor = FlowRunExecutor.for_batch(
            self.home, api_url, f"{self.batch_id}-executor", log_dir
        )
        self.executor.start()

    def provision(self, api_url: str) -> None:
        """Pool, queue and deployment (the flow runs' home on Prefect) on a shared server;
        on our own private one only the flow (:meth:`PrefectBatch.ensure_flow`)."""
        from prefect.workers.process import ProcessWorker

        from sierra_operator.runs.prefect_api import PoolConflict, PrefectBatch

        self.prefect = PrefectBatch(
            api_url, self.batch_id, self.pool, self.queue, read_records=True, _listed=True
        )
        if self.server is not None:  # our own: only the executor runs its flow runs
            self._await(self.prefect.ensure_flow())
            self.status = self.status.model_copy(update={"work_pool": None})
            return
        template = ProcessWorker.get_default_base_job_template()
        try:
            self._await(self.prefect.ensure_deployment(str(self.loaded.workdir), template))
        except PoolConflict as exc:
            raise LocalError(str(exc)) from None

    def check_workers(self) -> None:
        """Fail clearly if the executor died (nothing would ever run)."""
        if self.executor is not None and not self.executor.running():
            tail = self.executor.log_tail()
            raise LocalError(f"the flow-run executor exited; its log ends:\n{tail}")

    def tick(self, resumed: set[tuple[str, int]]) -> Decision:
        """Observe, decide, act: one turn of the loop."""
        assert self.prefect is not None
        spec = self.loaded.batch.spec
        observed = with_resumed(self._await(self.prefect.observe()), resumed)
        now = datetime.now(UTC)
        decision = decide(
            spec.execution, self.loaded.plan, observed, self.status, now, suspend=False
        )
        for action in decision.actions:
            if not self.prefetch.release(action, self.prefect):
                self._start(action)
        if decision.status != self.status:
            self.status = decision.status
            ledger.write_status(self.loaded.batch_root, self.status)
        if decision.done:
            self.prefetch.withdraw()
        elif not decision.actions:
            wave = next_wave(spec.execution, self.loaded.plan, observed, self.status, now)
            if wave is not None and self.prefetch.held is None:
                gate = self.prefetch.new_gate(wave)
                self.prefetch.hold(wave, self._start(wave, gate), gate)
        return decision

    def _start(self, action: SubmitRuns, gate: Path | None = None) -> UUID:
        """Create the wave's flow run and hand it to the executor; with ``gate``, a
        prepared wave (:mod:`~sierra_operator.local.prefetch`) that waits there."""
        assert self.prefect is not None and self.executor is not None
        spec = self.loaded.batch.spec
        parameters: dict[str, Any] = {
            "batch_id": self.batch_id,
            "batch_root": str(self.loaded.batch_root),
            "workdir": str(self.loaded.workdir),
            "parallelism": spec.execution.parallelism,
            "timeout_seconds": spec.execution.run_timeout_seconds,
            # SIERRA batches: nothing of ours under exp-outputs/
            "run_output": spec.experiments is not None,
        }
        if gate is not None:
            parameters["gate"] = str(gate)
        run_id = self._await(
            self.prefect.submit(
                action, parameters, prepared=gate.name if gate is not None else None
            )
        )
        try:
            self.executor.execute(str(run_id))
        except ExecutorExited as exc:  # it died: say so, with its log, not a traceback
            raise LocalError(str(exc)) from None
        return run_id

    def interrupt(self) -> None:
        """Stop our flow runs (the executor stops their processes, which kill their
        commands), mark them Cancelled and record the batch as Interrupted (records stay)."""
        self.prefetch.withdraw()
        if self.executor is not None:
            self.executor.stop()
        if self.prefect is not None:
            try:
                self._await(self.prefect.mark_cancelled())
            except Exception as exc:  # the server may be the thing that died
                self.console.print(f"could not cancel flow runs: {exc}", markup=False)
        now = datetime.now(UTC)
        self.status = self.status.model_copy(
            update={
                "phase": BatchPhase.INTERRUPTED,
                "message": "interrupted; run again with --resume to finish it",
                "conditions": set_condition(
                    self.status.conditions,
                    Condition(
                        type="Complete",
                        status="False",
                        reason="Interrupted",
                        message="interrupted by a signal; --resume re-runs only unfinished runs",
                    ),
                    now,
                ),
                "finished_at": now,
            }
        )
        ledger.write_status(self.loaded.batch_root, self.status)

    def shutdown(self) -> None:
        """Stop what we started, in order: executor, Prefect objects, server, temp home."""
        if self.executor is not None:
            self.executor.finish()  # after interrupt(): stopped already, nothing to do
        # Our own server's database goes with its home: only a shared server is cleaned up.
        if self.prefect is not None and self.server is None:
            try:
                self._await(self.prefect.cleanup())
            except Exception as exc:
                self.console.print(
                    f"could not delete the work pool/deployment: {exc}", markup=False
                )
        if self.server is not None:
            t0 = time.monotonic()
            # Its database is thrown away with its home: nothing to shut down gracefully.
            self.server.stop(grace=0.05)
            self.timings["server_stop"] = time.monotonic() - t0
        self._loop.close()
        shutil.rmtree(self.home, ignore_errors=True)

    # ------------------------------------------------------------------ main loop

    def run(self) -> LocalResult:
        """Execute the batch; returns when it ends, raises LocalError on infrastructure failure."""
        plan = self.loaded.plan
        resumed: set[tuple[str, int]] = set()
        if self.opts.resume:
            resumed = set(ledger.succeeded_runs(self.loaded.batch_root, plan))
        view = ProgressView(self.console, plan.total_runs)
        previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
        decision: Decision | None = None
        try:
            view.note(
                f"batch {self.loaded.batch.metadata.name}: {len(plan.experiments)} experiments, "
                f"{plan.total_runs} runs; records under {ledger.state_dir(self.loaded.batch_root)}"
            )
            if resumed:
                view.note(f"--resume: {len(resumed)} run(s) already succeeded, not re-run")
            image = self.loaded.batch.spec.image
            if image is not None and image.build is not None:
                self.build_image(view)
            api_url = self.start_prefect(view)
            t0 = time.monotonic()
            self.provision(api_url)
            self.timings["provisioning"] = time.monotonic() - t0
            t0 = time.monotonic()
            alive = self.check_workers
            while True:
                decision = self.tick(resumed)
                view.update(decision.status)
                if decision.done and not decision.actions:
                    break
                self.check_workers()
                self.watch.wait(self._current_dir(decision), self.opts.poll_interval, alive)
            self.timings["execution"] = time.monotonic() - t0
            t0 = time.monotonic()
            # Runs are final (their records are written). On a shared server, let their flow
            # runs report themselves before the executor stops; our own server's database
            # is thrown away with its home: nobody would read what they report.
            if self.prefect is not None and self.server is None:
                self._await(self.prefect.wait_idle())
        except KeyboardInterrupt:
            view.close()
            self.console.print("interrupted: cancelling runs and stopping what local mode started")
            self.interrupt()
            return LocalResult(self.status, (), EXIT_INTERRUPTED, self._status_path(), self.timings)
        finally:
            view.close()
            signal.signal(signal.SIGTERM, previous_term)
            self.shutdown()
        self.timings["finishing"] = time.monotonic() - t0
        self.console.print(summary_table(decision.status, decision.failed_runs))
        code = EXIT_OK if decision.status.phase is BatchPhase.SUCCEEDED else EXIT_RUNS_FAILED
        return LocalResult(
            decision.status, decision.failed_runs, code, self._status_path(), self.timings
        )

    def _current_dir(self, decision: Decision) -> Path | None:
        """Where the current experiment's runs write their files (what the loop watches)."""
        name = decision.status.current_experiment_name
        return ledger.state_dir(self.loaded.batch_root) / name if name else None

    def _status_path(self) -> Path:
        return ledger.state_dir(self.loaded.batch_root) / names.STATUS_FILE


def run_local(
    loaded: LoadedBatch, opts: LocalOptions, console: Console | None = None
) -> LocalResult:
    """Run a loaded batch in local mode."""
    return LocalRun(loaded, opts, console or Console()).run()

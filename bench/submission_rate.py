"""Benchmark: flow-run submission rate, SQLite vs PostgreSQL Prefect, sequential vs
concurrent, one create per flow run vs bulk creates.

For each database (the embedded SQLite Prefect uses by default, then a private PostgreSQL
from Debian's package, see tests/postgres_env.py) it starts its own Prefect server (private
home, free port), creates a kubernetes-type pool with no worker (nothing executes: only
submission is measured) and times ``PrefectBatch.submit_each`` (what the operator calls per
wave: one flow run per experimental run, idempotency key, tags) with each ``--concurrency``
(requests in flight at once) and each of ``--paths``: ``single``, one create per flow run
(what a server without the bulk endpoint gets, and all there was before 2026-11-26), and
``bulk``, up to 100 flow runs per request; then one ``observe()`` of the last wave. The pool
has the operator's template (runs/pool_template.py: no variables left to validate per flow
run); ``bulk-variables`` is ``bulk`` with prefect-kubernetes' template and its variables, as
the operator's pools had until 2026-11-26 (the server validates them per flow run).
Baseline: the first row (SQLite, single, one request at a time), measured in the same
invocation. ``--raw`` also times a raw ``create_flow_run_from_deployment`` loop on SQLite
(the adapter's own cost; target: the adapter >= 0.8x the raw rate). Target: 1,000 runs
submitted in < 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.postgres_env import PrivatePostgres, missing_reason  # noqa: E402

from sierra_operator.cluster.job_template import (  # noqa: E402
    default_kubernetes_template,
    render_base_job_template,
)
from sierra_operator.core.machine import RunAttempt, SubmitRuns  # noqa: E402
from sierra_operator.core.model import SierraBatchSpec  # noqa: E402
from sierra_operator.local.server import LocalPrefectServer, ManagedProcess  # noqa: E402
from sierra_operator.runs.pool_template import fixed  # noqa: E402
from sierra_operator.runs.prefect_api import PrefectBatch  # noqa: E402


@dataclass
class Result:
    """One submit_each of ``runs`` runs at ``concurrency``: how long, how many made it."""

    database: str
    path: str
    runs: int
    concurrency: int
    seconds: float
    created: int
    error: str = ""
    observe: float = 0.0
    cpu_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # per create: client, server, database

    @property
    def rate(self) -> float:
        return self.created / self.seconds if self.seconds else 0.0


async def submit(api_url: str, database: str, runs: int, concurrency: int, path: str) -> Result:
    """A fresh batch (own pool, deployment, ids) submitting one ``runs``-run wave along
    ``path``: ``bulk``, or ``single`` (the batch told the server has no bulk endpoint)."""
    batch_id = f"bench-{uuid.uuid4().hex[:8]}"
    ours = PrefectBatch(api_url, batch_id, f"pool-{batch_id}", "q", pool_type="kubernetes")
    ours.submit_concurrency = concurrency
    if path == "single":
        ours._bulk_create = False  # what it remembers after a 404/405 from the bulk route
    variables = path.endswith("-variables")
    await ours.ensure_pool(default_kubernetes_template() if variables else operator_template())
    await ours.ensure_deployment("/tmp")
    action = SubmitRuns("c1-exp0", 0, tuple(RunAttempt(i, f"run {i}", 1) for i in range(runs)))
    params = {"batch_id": batch_id, "batch_root": "/tmp", "workdir": "/tmp"}
    error = ""
    t0 = time.perf_counter()
    try:
        await ours.submit_each(action, params)
    except Exception as exc:  # what a reconcile would see: reported, not fatal here
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    seconds = time.perf_counter() - t0
    result = Result(database, path, runs, concurrency, seconds, len(ours._unsettled), error)
    t0 = time.perf_counter()
    await ours.observe()
    result.observe = time.perf_counter() - t0
    return result


def operator_template() -> dict[str, Any]:
    """The template the operator gives a batch's pool (cluster/reconciler.py's _pool)."""
    spec = SierraBatchSpec.model_validate(
        {"image": {"repository": "r/x"}, "experiments": [{"name": "e", "runs": [{"command": "x"}]}]}
    )
    return fixed(
        render_base_job_template(
            default_kubernetes_template(),
            spec,
            image="r/x@sha256:0",
            namespace="bench",
            service_account="bench-worker",
            claim_name="bench-sierra-root",
        )
    )


async def raw_loop(api_url: str, runs: int) -> float:
    """The same creates without the adapter, one at a time: seconds."""
    ours = PrefectBatch(api_url, "bench-raw", "bench-raw-pool", "q", pool_type="kubernetes")
    await ours.ensure_pool(default_kubernetes_template())
    deployment = await ours.ensure_deployment("/tmp")
    t0 = time.perf_counter()
    async with ours.client() as client:
        for i in range(runs):
            await client.create_flow_run_from_deployment(
                deployment,
                parameters={"runs": [{"index": i, "command": f"run {i}", "attempt": 1}]},
                tags=["sierra-batch:bench-raw"],
            )
    return time.perf_counter() - t0


def tree_cpu(process: ManagedProcess | None) -> float:
    """CPU seconds (user + system) used so far by ``process``'s tree (the Prefect server and
    its children; the postmaster and its backends): a cost per create that the other tenants
    of a shared machine disturb far less than wall time. A process that ended counts too,
    in its parent's cutime/cstime once reaped: PostgreSQL backends come and go with the
    server's connections, and summing the live ones only read 0 or less for the database."""
    if process is None or process.proc is None:
        return 0.0
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        stats[int(stat.parent.name)] = (int(fields[1]), ticks)
    tree, grew = {process.proc.pid}, True
    while grew:
        more = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def measure(
    database: str,
    url: str | None,
    runs: int,
    levels: list[int],
    paths: list[str],
    raw: bool,
    pause: float,
    db: ManagedProcess | None = None,
) -> tuple[list[Result], float | None]:
    """Start a Prefect server on ``url`` (None: SQLite), run every level along every path,
    stop it. Between measurements the server gets ``pause`` seconds to finish the background
    work (events) the previous one left, which would otherwise slow the next one."""
    home = Path(tempfile.mkdtemp(prefix="sierra-bench-prefect-"))
    server = LocalPrefectServer(home, database_url=url)
    server.start()
    try:
        server.wait_ready(300)
        results = []
        for level in levels:
            for path in paths:
                time.sleep(pause)
                before = (time.process_time(), tree_cpu(server), tree_cpu(db))
                results.append(asyncio.run(submit(server.api_url, database, runs, level, path)))
                after = (time.process_time(), tree_cpu(server), tree_cpu(db))
                created = max(results[-1].created, 1)
                cpu = [1000 * (a - b) / created for a, b in zip(after, before, strict=True)]
                results[-1].cpu_ms = (cpu[0], cpu[1], cpu[2])
        raw_seconds = asyncio.run(raw_loop(server.api_url, runs)) if raw else None
        return results, raw_seconds
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs per wave on PostgreSQL")
    parser.add_argument("--sqlite-runs", type=int, default=200, help="runs per wave on SQLite")
    parser.add_argument("--concurrency", default="1,8", help="requests in flight, comma list")
    parser.add_argument(
        "--paths", default="single,bulk", help="single, bulk, bulk-variables: comma list"
    )
    parser.add_argument("--raw", action="store_true", help="also a raw loop on SQLite")
    parser.add_argument("--postgresql-only", action="store_true", help="skip SQLite")
    parser.add_argument("--pause", type=float, default=20.0, help="seconds between levels")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    paths = [p for p in args.paths.split(",") if p]
    if not paths or set(paths) - {"single", "bulk", "bulk-variables"}:
        parser.error(f"--paths: single, bulk and/or bulk-variables, not {args.paths!r}")
    # SIGTERM (e.g. `timeout`) must still run the finally blocks: never orphan a server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results: list[Result] = []
    raw = None
    if not args.postgresql_only:
        results, raw = measure(
            "SQLite", None, args.sqlite_runs, levels, paths, args.raw, args.pause
        )
    reason = missing_reason()
    if reason:
        print(f"PostgreSQL skipped: {reason}")
    else:
        postgres = PrivatePostgres().start()
        try:
            results += measure(
                "PostgreSQL",
                postgres.url,
                args.runs,
                levels,
                paths,
                False,
                args.pause,
                postgres.process,
            )[0]
        finally:
            postgres.stop()
    base = results[0]
    load = os.getloadavg()
    date = time.strftime("%Y-%m-%d %H:%M")
    print(
        "| date | load (1/5/15 min) | database | path | runs | requests in flight | "
        "submitted in | rate | vs first row | CPU ms per flow run (client/server/database) | "
        "observe() | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {date} | {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} | {r.database} | {r.path} | "
            f"{r.created}/{r.runs} | {r.concurrency} | {r.seconds:.1f} s | {r.rate:.1f}/s | "
            f"**{r.rate / base.rate:.1f}x** | {r.cpu_ms[0]:.0f}/{r.cpu_ms[1]:.0f}/"
            f"{r.cpu_ms[2]:.0f} | {r.observe:.2f} s | {r.error or 'none'} |"
        )
    if raw is not None:
        print(
            f"raw loop on SQLite: {args.sqlite_runs / raw:.1f}/s; adapter/raw (sequential) "
            f"{base.rate / (args.sqlite_runs / raw):.2f}x"
        )


if __name__ == "__main__":
    main()

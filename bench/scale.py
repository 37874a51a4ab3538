"""Benchmark: N batches x M runs on one operator and one Prefect server.

Real parts: the operator process (`sierra-operator run`), the Prefect server (PostgreSQL-
backed when Debian's postgresql is installed, see tests/postgres_env.py; ``--database
sqlite`` for the embedded one) and the clients over sockets. Stand-ins: tests/kube_api.py
for the API server, and instead of worker pods running Jobs (10,000 pods cannot run on a
2-core machine) this script completes each flow run ``--run-seconds`` after it is created,
by setting its state COMPLETED in Prefect, as a run's engine would. The operator's Prefect
requests go through bench/counting_proxy.py, which counts them and the flow runs they read.

Each ``--sizes`` entry (e.g. ``10x100,100x100``) gets a fresh API emulator and operator
(one Prefect server for all: its history grows, as a lab's does). Baseline: the operator's
RSS before any batch exists, in the same run. Reported per size: the operator's peak RSS and
RSS per batch; Kubernetes and Prefect requests per second and per tick (tick = one reconcile
interval) while batches are active, and in an idle window once every batch is finished
(target: zero); flow runs read per tick vs runs active; advance latency (experiment i's last
run ended -> experiment i+1's first run created, Prefect's timestamps) with every batch
active. Targets: RSS < 250 MB at 100 x 100, advance latency median < 1 s, Kubernetes
requests O(batches whose status changed), Prefect requests O(active runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.cluster import (  # noqa: E402
    OPERATOR_USER,
    KubeAPI,
    Operator,
    audit,
    batch_doc,
    start_kube_api,
    wait_for,
)
from tests.postgres_env import PrivatePostgres, missing_reason  # noqa: E402

from sierra_operator.local.server import LocalPrefectServer, ManagedProcess  # noqa: E402

NAMESPACE = "scale"


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) one process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of one process (the operator), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Counts:
    """What the operator had asked of each API at one moment."""

    at: float
    kube: list[dict[str, Any]]
    prefect: dict[str, int]
    flow_runs_read: int

    def kube_since(self, before: Counts) -> list[dict[str, Any]]:
        return self.kube[len(before.kube) :]

    def prefect_since(self, before: Counts) -> int:
        return sum(self.prefect.values()) - sum(before.prefect.values())


@dataclass
class Size:
    """One measured size and what was seen."""

    batches: int
    runs: int
    experiments: int = 4
    big_wave: int = 0  # runs of one more batch's single experiment, submitted meanwhile
    rss_base: float = 0.0
    rss_peak: float = 0.0
    rss_end: float = 0.0
    wall: float = 0.0
    active: tuple[Counts, Counts] | None = None
    idle: tuple[Counts, Counts] | None = None
    active_runs: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    submit_spans: list[float] = field(default_factory=list)
    cpu: float = 0.0  # the operator's CPU while batches were active, in cores
    big_span: float = 0.0  # the big wave: first to last flow run created
    during_big: list[float] = field(default_factory=list)  # others' latencies meanwhile


class Completer:
    """Stand-in for worker pods: every flow run on the (private) server is set COMPLETED
    ``run_seconds`` after it was created (the state a run's engine reports at its end)."""

    def __init__(self, api_url: str, run_seconds: float, in_flight: int = 8) -> None:
        self.api_url = api_url
        self.run_seconds = run_seconds
        self.gate = asyncio.Semaphore(in_flight)
        self.pending = 0  # flow runs created and not completed yet, at the last look
        self.stop = False

    async def run(self) -> None:
        from prefect.client.orchestration import PrefectClient
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort
        from prefect.states import Completed

        async with PrefectClient(api=self.api_url) as client:

            async def complete(run_id: Any) -> None:
                async with self.gate:
                    await client.set_flow_run_state(run_id, Completed(), force=True)

            while not self.stop:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                        ),
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                    limit=200,
                )
                self.pending = len(runs)
                now = time.time()
                due = [r.id for r in runs if r.created.timestamp() + self.run_seconds <= now]
                await asyncio.gather(*(complete(i) for i in due))
                if not due:
                    await asyncio.sleep(0.2)


def snapshot(kube_tmp: Path, proxy_url: str) -> Counts:
    counts = httpx.get(proxy_url.removesuffix("/api") + "/__counts", timeout=30).json()
    mine = [e for e in audit(kube_tmp) if e["user"] == OPERATOR_USER]
    return Counts(time.monotonic(), mine, counts["requests"], counts["flow_runs_read"])


def phases(kube: KubeAPI) -> dict[str, int]:
    with kube.http() as http:
        items = http.get(f"/apis/sierra.research.io/v1alpha1/namespaces/{NAMESPACE}/sierrabatches")
    out: dict[str, int] = {}
    for item in items.json()["items"]:
        phase = (item.get("status") or {}).get("phase", "-")
        out[phase] = out.get(phase, 0) + 1
    return out


@dataclass
class Wave:
    """One experiment of one batch as Prefect recorded it."""

    first: datetime
    last: datetime
    ended: datetime | None  # its last run's end, once all ended


async def waves_of(api_url: str, uids: set[str]) -> dict[tuple[str, int], Wave]:
    """Every experiment of the batches ``uids``, from Prefect's timestamps."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        runs = []
        while True:
            page = await client.read_flow_runs(limit=200, offset=len(runs))
            runs += page
            if len(page) < 200:
                break
    grouped: dict[tuple[str, int], list[Any]] = {}
    for run in runs:
        batch = next((t for t in run.tags if t.startswith("sierra-batch:")), "")
        if batch.removeprefix("sierra-batch:") in uids:
            exp = int(str(run.parameters["experiment"]).split("exp")[1])
            grouped.setdefault((batch.removeprefix("sierra-batch:"), exp), []).append(run)
    out = {}
    for key, wave in grouped.items():
        ends = [r.end_time for r in wave]
        ended = max(ends) if all(ends) else None
        out[key] = Wave(min(r.created for r in wave), max(r.created for r in wave), ended)
    return out


def latencies(
    waves: dict[tuple[str, int], Wave], within: tuple[datetime, datetime] | None = None
) -> list[float]:
    """Per experiment i > 0: created(first run of i) - ended(last run of i-1); only those
    that started ``within`` a window if given."""
    out = []
    for (batch, exp), wave in waves.items():
        before = waves.get((batch, exp - 1))
        if before is None or before.ended is None:
            continue
        if within is not None and not within[0] <= wave.first <= within[1]:
            continue
        out.append((wave.first - before.ended).total_seconds())
    return out


def measure(
    size: Size,
    tmp: Path,
    api_url: str,
    run_seconds: float,
    interval: float,
    env: dict[str, str],
    prefix: str,
) -> None:
    """One size: fresh emulator, proxy and operator; all batches from creation to done.
    Batch names start with ``prefix``: the Prefect server (and so its pool names, which
    come from namespace and batch name) is shared by all sizes."""
    kube = start_kube_api(tmp, [NAMESPACE])
    proxy = ManagedProcess(
        "proxy",
        [sys.executable, str(REPO / "bench" / "counting_proxy.py"), api_url, str(tmp / "url")],
        dict(os.environ),
        tmp / "proxy.log",
    )
    proxy.start()
    operator = None
    try:
        proxy_url = wait_for(
            lambda: (tmp / "url").exists() and (tmp / "url").read_text(), 30, "the proxy"
        )
        wait_for(lambda: snapshot(tmp, proxy_url), 30, "the proxy to answer", every=1)
        operator = Operator(
            kube, proxy_url, tmp / "operator.log", reconcile_seconds=interval, env=env
        ).start()
        assert operator.process is not None and operator.process.proc is not None
        pid = operator.process.proc.pid
        time.sleep(15)  # started, watching, nothing to do: the baseline
        size.rss_base = rss_mb(pid)
        per_exp = size.runs // size.experiments
        t0 = time.monotonic()
        uids, big = set(), ""
        if size.big_wave:
            doc = batch_doc(
                f"{prefix}big", tmp / "root", [["true"] * size.big_wave], parallelism=1000
            )
            big = kube.create_batch(NAMESPACE, doc)["metadata"]["uid"]
        for i in range(size.batches):
            doc = batch_doc(
                f"{prefix}b{i:03d}",
                tmp / "root",
                [["true"] * per_exp for _ in range(size.experiments)],
                parallelism=per_exp,
            )
            uids.add(kube.create_batch(NAMESPACE, doc)["metadata"]["uid"])
        completer = Completer(api_url, run_seconds)
        loop = asyncio.new_event_loop()
        task = loop.create_task(completer.run())
        start = snapshot(tmp, proxy_url)
        cpu0 = cpu_seconds(pid)
        while True:
            loop.run_until_complete(asyncio.sleep(2.0))
            if task.done():
                task.result()  # a stand-in failure ends the benchmark, loudly
            size.rss_peak = max(size.rss_peak, rss_mb(pid))
            size.active_runs.append(completer.pending)
            seen = phases(kube)
            if seen.get("Succeeded", 0) == size.batches + bool(big):
                break
            if time.monotonic() - t0 > 3600:
                raise AssertionError(f"not done after an hour: {seen}")
        size.wall = time.monotonic() - t0
        size.active = (start, snapshot(tmp, proxy_url))
        size.cpu = (cpu_seconds(pid) - cpu0) / (size.active[1].at - start.at)
        completer.stop = True
        loop.run_until_complete(task)
        time.sleep(5)  # the last status writes land
        quiet = snapshot(tmp, proxy_url)
        time.sleep(30)
        size.idle = (quiet, snapshot(tmp, proxy_url))
        size.rss_end = rss_mb(pid)
        waves = asyncio.run(waves_of(api_url, uids | {big}))
        size.latencies = latencies({k: w for k, w in waves.items() if k[0] != big})
        size.submit_spans = [(w.last - w.first).total_seconds() for w in waves.values()]
        if big:
            wave = waves[(big, 0)]
            size.big_span = (wave.last - wave.first).total_seconds()
            others = {k: w for k, w in waves.items() if k[0] != big}
            size.during_big = latencies(others, (wave.first, wave.last))
        loop.close()
    finally:
        if operator is not None:
            operator.stop()
        proxy.stop()
        kube.proc.kill()


def row(size: Size, interval: float) -> str:
    assert size.active is not None and size.idle is not None
    a0, a1 = size.active
    i0, i1 = size.idle
    secs = a1.at - a0.at
    ticks = secs / interval
    kube = a1.kube_since(a0)
    patches = sum(1 for e in kube if e["resource"] == "sierrabatches/status")
    events = sum(1 for e in kube if e["resource"] == "events")
    idle_secs = i1.at - i0.at
    idle_kube = len(i1.kube_since(i0))
    idle_prefect = i1.prefect_since(i0)
    prefect = a1.prefect_since(a0)
    read = a1.flow_runs_read - a0.flow_runs_read
    active = statistics.mean(size.active_runs) if size.active_runs else 0
    lat = sorted(size.latencies)
    p90 = lat[int(0.9 * (len(lat) - 1))] if lat else float("nan")
    per_batch = (size.rss_peak - size.rss_base) / size.batches
    load = os.getloadavg()
    big = ""
    if size.big_wave:
        during = statistics.median(size.during_big) if size.during_big else float("nan")
        big = (
            f" {size.big_wave}-run wave submitted in {size.big_span:.1f} s; meanwhile "
            f"{len(size.during_big)} advances of other batches, median {during:.2f} s |"
        )
    return (
        f"| {datetime.now():%Y-%m-%d %H:%M} | {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} | "
        f"{size.batches} x {size.runs} | {size.wall:.0f} s | "
        f"{size.rss_base:.0f} -> {size.rss_peak:.0f} MB ({per_batch:.2f} MB/batch), "
        f"{size.cpu:.2f} cores | "
        f"{len(kube) / secs:.1f}/s, {len(kube) / ticks:.1f}/tick ({patches / ticks:.1f} status "
        f"patches, {events / ticks:.1f} Events) | {idle_kube} in {idle_secs:.0f} s | "
        f"{prefect / secs:.1f}/s, {prefect / ticks:.1f}/tick | {read / ticks:.0f} read/tick "
        f"vs {active:.0f} active | {idle_prefect} in {idle_secs:.0f} s | "
        f"{statistics.median(lat):.2f} s (p90 {p90:.2f}, max {max(lat):.2f}) | "
        f"{max(size.submit_spans):.1f} s |{big}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10x100,100x100", help="BATCHESxRUNS, comma list")
    parser.add_argument("--run-seconds", type=float, default=2.0, help="each run's duration")
    parser.add_argument("--interval", type=float, default=1.0, help="reconcile seconds")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--submit-concurrency", type=int, default=None)
    parser.add_argument("--experiments", type=int, default=4, help="experiments per batch")
    parser.add_argument("--big-wave", type=int, default=0, help="one more batch, 1 x N runs")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--workdir", type=Path, help="instead of a new temp dir (logs, data)")
    args = parser.parse_args()
    sizes = [
        Size(*map(int, s.split("x")), args.experiments, args.big_wave)
        for s in args.sizes.split(",")
    ]
    env = {"SIERRA_OPERATOR_LOG_LEVEL": os.environ.get("SIERRA_OPERATOR_LOG_LEVEL", "WARNING")}
    if args.submit_concurrency:
        env["SIERRA_OPERATOR_SUBMIT_CONCURRENCY"] = str(args.submit_concurrency)
    # SIGTERM (e.g. `timeout`) must still run the finally below: never orphan a server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="sierra-bench-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o755)  # PostgreSQL's own user must reach its cluster below
    postgres = None
    if args.database == "postgresql":
        reason = missing_reason()
        if reason:
            raise SystemExit(f"--database postgresql: {reason}")
        (tmp / "postgresql").mkdir()
        postgres = PrivatePostgres(root=tmp / "postgresql").start()
    server = LocalPrefectServer(tmp / "prefect", database_url=postgres and postgres.url)
    server.start()
    rows = []
    try:
        server.wait_ready(300)
        for i, size in enumerate(sizes):
            here = tmp / f"size{i}"
            here.mkdir()
            measure(size, here, server.api_url, args.run_seconds, args.interval, env, f"s{i}-")
            rows.append(row(size, args.interval))
            print(rows[-1], flush=True)
            if size.active:  # what the requests were, for the reader of the row
                a0, a1 = size.active
                kinds = Counter(f"{e['verb']} {e['resource']}" for e in a1.kube_since(a0))
                prefect = Counter(a1.prefect)
                prefect.subtract(a0.prefect)
                print("Kubernetes:", json.dumps(dict(kinds.most_common())), flush=True)
                print("Prefect:", json.dumps(dict(prefect.most_common())), flush=True)
    finally:
        server.stop()
        if postgres is not None:
            postgres.stop()
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        "| date | load (1/5/15 min) | batches x runs | wall | operator RSS (no batch -> peak), CPU "
        "| Kubernetes, active | Kubernetes, all finished | Prefect, active | flow runs read "
        "| Prefect, all finished | advance latency median | slowest wave submitted in |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        grow = (big.rss_peak - big.rss_base) / max(small.rss_peak - small.rss_base, 1e-9)
        print(
            f"{big.batches / small.batches:.0f}x the batches: {grow:.1f}x the memory above the "
            "no-batch baseline"
        )


if __name__ == "__main__":
    main()

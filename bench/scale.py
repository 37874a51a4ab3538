"""Benchmark: N batches x M runs on one operator and one Prefect server.

Real parts: the operator process (`sierra-operator run`), the Prefect server (PostgreSQL-
backed when Debian's postgresql is installed, see tests/postgres_env.py; ``--database
sqlite`` for the embedded one) and the clients over sockets. Stand-ins: tests/kube_api.py
for the API server, and instead of workers and pods running Jobs (10,000 pods cannot run on
a 2-core machine) this script's `Completer`: it polls Prefect every 0.15 s and takes a flow
run only when a worker would be handed it (SCHEDULED, expected start time <= now, neither
its work queue nor its work pool paused: flow runs held ahead in a paused queue wait until
the operator unpauses it), sets it RUNNING (Prefect records its start time) and COMPLETED
``--run-seconds`` later, as a run's engine would. Unlike a real worker it hands out work
within ~0.15 s (not every PREFECT_WORKER_QUERY_SECONDS), starts it at once (no pod, no
engine start) and ignores concurrency limits. The operator's Prefect requests go through
bench/counting_proxy.py, which counts them and the flow runs they read.

Each ``--sizes`` entry (e.g. ``10x100,100x100``) gets a fresh API emulator and operator
(one Prefect server for all: its history grows, as a lab's does). Baseline: the operator's
RSS before any batch exists, in the same run. Reported per size: the operator's peak RSS and
RSS per batch; Kubernetes and Prefect requests per second and per tick (tick = one reconcile
interval) while batches are active, and in an idle window once every batch is finished
(target: zero); flow runs read per tick vs runs active (not completed: held, waiting or
running); advance latency with every batch active: experiment i's last run ended ->
experiment i+1's first run runnable (Prefect's timestamps: its flow run created, or for a
wave held ahead its queue unpaused, the queue's last update), and next to it the same to the
first run started (adds the stand-in's pickup on a busy server) and to its creation (the
older rows' figure, negative for a held wave). ``--stagger S`` creates the batches over S
seconds instead of at once (in lockstep every batch advances at the same moment).
Targets: RSS < 250 MB at 100 x 100, advance latency median < 1 s,
Kubernetes requests O(batches whose status changed), Prefect requests O(active runs).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

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
    big_after: float = 0.0  # seconds after the others' creation that batch is created
    rss_base: float = 0.0
    rss_peak: float = 0.0
    rss_end: float = 0.0
    wall: float = 0.0
    active: tuple[Counts, Counts] | None = None
    idle: tuple[Counts, Counts] | None = None
    active_runs: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # to the first run runnable
    started_latencies: list[float] = field(default_factory=list)  # to the first run's start
    created_latencies: list[float] = field(default_factory=list)  # to the first run's creation
    held: int = 0  # advances to a wave held ahead (released, not created, at the advance)
    stagger: float = 0.0  # seconds over which the batches are created (0: all at once)
    submit_spans: list[float] = field(default_factory=list)
    cpu: float = 0.0  # the operator's CPU while batches were active, in cores
    big_span: float = 0.0  # the big wave: first to last flow run created
    during_big: list[float] = field(default_factory=list)  # others' latencies meanwhile
    during_big_started: list[float] = field(default_factory=list)  # the same, to the start


class Completer:
    """Stand-in for the workers and their pods: takes a flow run only when a Prefect worker
    would be handed it, and ends it ``run_seconds`` later.

    Runnable, as Prefect's scheduler (``get_scheduled_flow_runs``) decides for a worker:
    state SCHEDULED, expected start time <= now, and neither its work queue nor its work pool
    paused (so flow runs the operator holds ahead in a paused queue wait there until it
    unpauses the queue). Taking one sets it RUNNING (forced: Prefect records its
    ``start_time``, as when a run's engine starts it); ``run_seconds`` later it is set
    COMPLETED (its ``end_time``). Each poll (every ``poll`` seconds) costs: one read of the
    queues of the flow runs known held (their pause flags), one read of the SCHEDULED flow
    runs due, minus those known held (so held ones, however many, never hide runnable ones
    from a 200-run page), one read of the queues not seen yet, and the pools' pause flags at
    most once a second; the held flow runs are re-read every 5 s (withdrawn ones leave)."""

    PAGE = 200

    def __init__(
        self, api_url: str, run_seconds: float, in_flight: int = 8, poll: float = 0.15
    ) -> None:
        self.api_url = api_url
        self.run_seconds = run_seconds
        self.poll = poll
        self.gate = asyncio.Semaphore(in_flight)  # state changes in flight
        self.pending = 0  # flow runs not completed yet at the last look: held, due, running
        self.stop = False
        self.held: dict[UUID, Any] = {}  # SCHEDULED flow runs last seen in a paused queue/pool
        self.released: dict[UUID, datetime] = {}  # held flow runs: when their queue unpaused
        self.running: set[UUID] = set()  # taken, not completed yet
        self.pools: dict[UUID, tuple[float, bool]] = {}  # pool -> (read at, paused)
        self.ends: set[asyncio.Task[None]] = set()
        self.unqueued = False  # a flow run without a work queue was seen (no worker gets it)

    async def run(self) -> None:
        from prefect.client.orchestration import PrefectClient

        async with PrefectClient(api=self.api_url) as client:
            purged = time.monotonic()
            try:
                while not self.stop:
                    for end in [e for e in self.ends if e.done()]:
                        self.ends.discard(end)
                        end.result()  # a failed state change ends the benchmark, loudly
                    if time.monotonic() - purged > 5.0:
                        await self._purge(client)
                        purged = time.monotonic()
                    full = await self._poll(client)
                    if not full:
                        await asyncio.sleep(self.poll)
            finally:
                for end in self.ends:
                    end.cancel()
                await asyncio.gather(*self.ends, return_exceptions=True)

    async def _poll(self, client: Any) -> bool:
        """One look, as a worker's; takes what is runnable. True if the page was full."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterExpectedStartTime,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        # Held flow runs whose queue (and pool) is unpaused now are released: not excluded
        # from the read below, which finds them if they are still SCHEDULED.
        queues = await self._queues(client, {r.work_queue_id for r in self.held.values()})
        await self._read_pools(client, self._pool_ids(self.held.values(), queues))
        for run in list(self.held.values()):
            if self._runnable(run, queues):
                del self.held[run.id]
                # When its queue was unpaused: the queue's last update (nothing else updates
                # it here; the operator deletes a released queue later, so read it now).
                self.released[run.id] = queues[run.work_queue_id].updated
        now: Any = datetime.now(UTC)  # a datetime: pydantic makes it Prefect's DateTime
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=now),
                id=FlowRunFilterId(not_any_=list(self.held)) if self.held else None,
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=self.PAGE,
        )
        queues |= await self._queues(client, {r.work_queue_id for r in runs} - set(queues))
        await self._read_pools(client, self._pool_ids(runs, queues))
        take = []
        for run in runs:
            if self._runnable(run, queues):
                take.append(run.id)
            else:
                self.held[run.id] = run
        self.running.update(take)
        self.pending = len(self.held) + len(self.running)
        await asyncio.gather(*(self._take(client, i) for i in take))
        return len(runs) == self.PAGE

    def _runnable(self, run: Any, queues: dict[UUID, Any]) -> bool:
        queue = queues.get(run.work_queue_id)
        if queue is None:  # no queue (or deleted): no worker is ever handed it
            if run.work_queue_id is None and not self.unqueued:
                self.unqueued = True
                print(f"note: flow run {run.id} has no work queue: never taken", flush=True)
            return False
        pool = run.work_pool_id or queue.work_pool_id
        return not queue.is_paused and not (pool is not None and self.pools[pool][1])

    @staticmethod
    def _pool_ids(runs: Any, queues: dict[UUID, Any]) -> set[UUID]:
        out = set()
        for run in runs:
            queue = queues.get(run.work_queue_id)
            pool = run.work_pool_id or (queue.work_pool_id if queue is not None else None)
            if pool is not None:
                out.add(pool)
        return out

    async def _queues(self, client: Any, ids: set[Any]) -> dict[UUID, Any]:
        """The work queues ``ids`` as they are now (pause flag, pool), by id."""
        from prefect.client.schemas.filters import WorkQueueFilter, WorkQueueFilterId

        wanted = [i for i in ids if i is not None]
        out = {}
        for at in range(0, len(wanted), self.PAGE):
            chunk = wanted[at : at + self.PAGE]
            for queue in await client.read_work_queues(
                work_queue_filter=WorkQueueFilter(id=WorkQueueFilterId(any_=chunk)),
                limit=self.PAGE,
            ):
                out[queue.id] = queue
        return out

    async def _read_pools(self, client: Any, ids: set[UUID]) -> None:
        """Refresh the pause flags of pools ``ids`` read more than a second ago."""
        from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterId

        now = time.monotonic()
        stale = [i for i in ids if i not in self.pools or now - self.pools[i][0] > 1.0]
        for at in range(0, len(stale), self.PAGE):
            chunk = stale[at : at + self.PAGE]
            for pool_id in chunk:  # one not found (deleted) hands nothing out
                self.pools[pool_id] = (now, True)
            for pool in await client.read_work_pools(
                work_pool_filter=WorkPoolFilter(id=WorkPoolFilterId(any_=chunk)),
                limit=self.PAGE,
            ):
                self.pools[pool.id] = (now, pool.is_paused)

    async def _purge(self, client: Any) -> None:
        """Forget held flow runs that are no longer SCHEDULED (a withdrawn wave's)."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        ids = list(self.held)
        still: set[UUID] = set()
        for at in range(0, len(ids), self.PAGE):
            page = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=ids[at : at + self.PAGE]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    ),
                ),
                limit=self.PAGE,
            )
            still.update(r.id for r in page)
        for run_id in set(ids) - still:
            del self.held[run_id]

    async def _take(self, client: Any, run_id: UUID) -> None:
        """Start one flow run (RUNNING: its start_time) and end it ``run_seconds`` later."""
        from prefect.states import Running

        async with self.gate:
            await client.set_flow_run_state(run_id, Running(), force=True)
        end = asyncio.ensure_future(self._end(client, run_id, time.monotonic()))
        self.ends.add(end)

    async def _end(self, client: Any, run_id: UUID, started: float) -> None:
        from prefect.states import Completed

        await asyncio.sleep(max(0.0, started + self.run_seconds - time.monotonic()))
        async with self.gate:
            await client.set_flow_run_state(run_id, Completed(), force=True)
        self.running.discard(run_id)


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
    """One experiment of one batch as Prefect recorded it (its flow runs that ran: a held
    wave withdrawn before it ran is not part of it, its replacement is)."""

    first: datetime  # its first flow run created
    last: datetime  # its last flow run created
    started: datetime | None  # its first flow run to start (RUNNING), once one did
    ended: datetime | None  # its last run's end, once all ended
    released: datetime | None = None  # a held wave: its queue unpaused (the queue's update)


async def waves_of(
    api_url: str, uids: set[str], released: dict[UUID, datetime] | None = None
) -> dict[tuple[str, int], Wave]:
    """Every experiment of the batches ``uids``, from Prefect's timestamps."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        runs: list[Any] = []
        while True:
            page = await client.read_flow_runs(limit=200, offset=len(runs))
            runs += page
            if len(page) < 200:
                break
    released = released or {}  # held flow runs: their queue's unpausing, as the stand-in saw
    grouped: dict[tuple[str, int], list[Any]] = {}
    for run in runs:
        batch = next((t for t in run.tags if t.startswith("sierra-batch:")), "")
        if batch.removeprefix("sierra-batch:") in uids:
            exp = int(str(run.parameters["experiment"]).split("exp")[1])
            grouped.setdefault((batch.removeprefix("sierra-batch:"), exp), []).append(run)
    out = {}
    for key, wave in grouped.items():
        # Flow runs that never started (a held wave withdrawn: Cancelled) are not the wave.
        ran = [r for r in wave if r.start_time is not None] or wave
        starts = [r.start_time for r in ran if r.start_time is not None]
        ends = [r.end_time for r in ran]
        unpaused = [released[r.id] for r in ran if r.id in released]
        out[key] = Wave(
            min(r.created for r in ran),
            max(r.created for r in ran),
            min(starts) if starts else None,
            max(ends) if all(ends) else None,
            min(unpaused) if unpaused else None,
        )
    return out


def latencies(
    waves: dict[tuple[str, int], Wave],
    within: tuple[datetime, datetime] | None = None,
    to: str = "runnable",
) -> list[float]:
    """Per experiment i > 0: (its first run runnable) - ended(last run of i-1): the
    operator's part of an advance (seeing i-1 end, deciding, then creating i's flow runs or,
    held ahead, unpausing their queue), what the issue's "first run created" means once
    waves are created ahead. ``to="started"``: to the first run's start instead, which adds
    the stand-in's pickup (a real worker's poll interval and pod start); ``to="created"``:
    to its creation, the figure of the older rows (negative for a held wave). Only advances
    whose experiment i started ``within`` a window if given."""
    out = []
    for (batch, exp), wave in waves.items():
        before = waves.get((batch, exp - 1))
        if before is None or before.ended is None or wave.started is None:
            continue
        if within is not None and not within[0] <= wave.started <= within[1]:
            continue
        moment = {"runnable": wave.released or wave.first, "started": wave.started}.get(
            to, wave.first
        )
        out.append((moment - before.ended).total_seconds())
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

        def create_big() -> str:
            doc = batch_doc(
                f"{prefix}big", tmp / "root", [["true"] * size.big_wave], parallelism=1000
            )
            return str(kube.create_batch(NAMESPACE, doc)["metadata"]["uid"])

        if size.big_wave and not size.big_after:
            big = create_big()
        for i in range(size.batches):
            doc = batch_doc(
                f"{prefix}b{i:03d}",
                tmp / "root",
                [["true"] * per_exp for _ in range(size.experiments)],
                parallelism=per_exp,
            )
            uids.add(kube.create_batch(NAMESPACE, doc)["metadata"]["uid"])
            time.sleep(size.stagger / size.batches)  # out of lockstep, as a lab's batches are
        completer = Completer(api_url, run_seconds)
        loop = asyncio.new_event_loop()
        task = loop.create_task(completer.run())
        start = snapshot(tmp, proxy_url)
        cpu0 = cpu_seconds(pid)
        while True:
            loop.run_until_complete(asyncio.sleep(2.0))
            if size.big_wave and not big and time.monotonic() - t0 >= size.big_after:
                big = create_big()  # while the other batches advance
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
        waves = asyncio.run(waves_of(api_url, uids | {big}, completer.released))
        others = {k: w for k, w in waves.items() if k[0] != big}
        size.latencies = latencies(others)
        size.started_latencies = latencies(others, to="started")
        size.created_latencies = latencies(others, to="created")
        size.held = sum(1 for (_, e), w in others.items() if e > 0 and w.released is not None)
        size.submit_spans = [(w.last - w.first).total_seconds() for w in waves.values()]
        if big:
            wave = waves[(big, 0)]
            size.big_span = (wave.last - wave.first).total_seconds()
            size.during_big = latencies(others, (wave.first, wave.last))
            size.during_big_started = latencies(others, (wave.first, wave.last), to="started")
        loop.close()
    finally:
        if operator is not None:
            operator.stop()
        proxy.stop()
        kube.proc.kill()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


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
    created = median(size.created_latencies)
    big = ""
    if size.big_wave:
        big = (
            f" {size.big_wave}-run wave submitted in {size.big_span:.1f} s; meanwhile "
            f"{len(size.during_big)} advances of other batches, median "
            f"{median(size.during_big):.2f} s (first run started: "
            f"{median(size.during_big_started):.2f} s) |"
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
        f"{median(lat):.2f} s (p90 {p90:.2f}, max {max(lat, default=float('nan')):.2f}; "
        f"{size.held} of {len(lat)} held ahead; first run started: "
        f"{median(size.started_latencies):.2f} s; created: {created:.2f} s) | "
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
    parser.add_argument(
        "--big-wave-after",
        type=float,
        default=0.0,
        help="create that batch this many seconds after the others (0: first)",
    )
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="create the batches evenly over this many seconds (default 0: in lockstep)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--workdir", type=Path, help="instead of a new temp dir (logs, data)")
    args = parser.parse_args()
    sizes = [
        Size(
            *map(int, s.split("x")),
            args.experiments,
            args.big_wave,
            big_after=args.big_wave_after,
            stagger=args.stagger,
        )
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
        "| Prefect, all finished | advance latency median (first run runnable) "
        "| slowest wave submitted in |"
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

"""The operator's open Prefect clients, shared by every batch, with what they share: the
bound on flow-run creates in flight and the merged reads of flow and task runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, TaskRun

from sierra_operator.runs.coalesce import CoalescedReads
from sierra_operator.runs.fair_gate import FairGate

PAGE = 200
"""Flow or task runs asked for per read (Prefect's largest page)."""


async def task_runs_of(client: PrefectClient, flow_run_ids: list[UUID]) -> list[TaskRun]:
    """Every task run of these flow runs, page by page."""
    out: list[TaskRun] = []
    while flow_run_ids:
        page = await client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=flow_run_ids)),
            limit=PAGE,
            offset=len(out),
        )
        out.extend(page)
        if len(page) < PAGE:
            break
    return out


class PrefectClients:
    """One open client per (API URL, API key), shared by every batch of a long-lived process.

    Opening a PrefectClient costs ~18 ms of CPU (an httpx client with its TLS context) and
    a new connection: once per batch per tick, 100 active batches would need more than a
    core for that alone. A shared client keeps its connections (at most 16 in flight: the
    operator's bound on concurrent Prefect requests). PrefectClient nests: ``async with``
    on an open one neither reopens nor closes it. Bound to the event loop that opened it.
    """

    def __init__(self, submit_concurrency: int = 1) -> None:
        self._open: dict[tuple[str, str | None], PrefectClient] = {}
        self.submit_concurrency = max(1, submit_concurrency)
        self._gates: dict[tuple[str, str | None, bool], FairGate] = {}
        self._flow_run_reads: dict[tuple[str, str | None], CoalescedReads[UUID, FlowRun]] = {}
        self._task_run_reads: dict[tuple[str, str | None], CoalescedReads[UUID, list[TaskRun]]] = {}

    def flow_run_reads(self, api_url: str, api_key: str | None) -> CoalescedReads[UUID, FlowRun]:
        """Flow runs by id, every batch's reads of one API merged (see :mod:`.coalesce`)."""
        key = (api_url, api_key)
        if key not in self._flow_run_reads:

            async def fetch(ids: list[UUID]) -> dict[UUID, FlowRun]:
                found: dict[UUID, FlowRun] = {}
                async with self.get(api_url, api_key) as client:
                    for i in range(0, len(ids), PAGE):
                        chunk = FlowRunFilterId(any_=ids[i : i + PAGE])
                        page = await client.read_flow_runs(
                            flow_run_filter=FlowRunFilter(id=chunk), limit=PAGE
                        )
                        found.update((fr.id, fr) for fr in page)
                return found

            self._flow_run_reads[key] = CoalescedReads(fetch)
        return self._flow_run_reads[key]

    def task_run_reads(
        self, api_url: str, api_key: str | None
    ) -> CoalescedReads[UUID, list[TaskRun]]:
        """Task runs by flow run id (packed waves), every batch's reads of one API merged."""
        key = (api_url, api_key)
        if key not in self._task_run_reads:

            async def fetch(ids: list[UUID]) -> dict[UUID, list[TaskRun]]:
                found: dict[UUID, list[TaskRun]] = {}
                async with self.get(api_url, api_key) as client:
                    for tr in await task_runs_of(client, ids):
                        if tr.flow_run_id is not None:
                            found.setdefault(tr.flow_run_id, []).append(tr)
                return found

            self._task_run_reads[key] = CoalescedReads(fetch)
        return self._task_run_reads[key]

    def submit_gate(self, api_url: str, api_key: str | None, ahead: bool = False) -> FairGate:
        """The bound on requests creating flow runs (a bulk create, or a single one) in flight
        on the shared client for ``api_url`` and ``api_key``, across every batch: a gate per
        wave would let many batches' waves
        together exceed the client's 16 connections and fail with httpx.PoolTimeout. The
        gate takes turns between batches (:mod:`.fair_gate`): a batch's one request waits
        for at most one of each other waiting batch's, not for a big wave's every request.

        ``ahead``: creates of waves held ahead (runs/held.py) have a gate of their own, one
        request at a time: no wave waits for them to start, and a server's CPU is what every
        advance waits for, so a burst of them would delay the reads and releases that start
        waves. A batch finding this gate taken holds its wave at a later tick instead of
        waiting here (:func:`sierra_operator.runs.held.hold`)."""
        bound = 1 if ahead else self.submit_concurrency
        return self._gates.setdefault((api_url, api_key, ahead), FairGate(bound))

    @asynccontextmanager
    async def get(self, api_url: str, api_key: str | None) -> AsyncIterator[PrefectClient]:
        """The open client for ``api_url`` with ``api_key`` (opened on first use)."""
        key = (api_url, api_key)
        client = self._open.get(key)
        if client is None:
            client = PrefectClient(api=api_url, api_key=api_key)
            await client.__aenter__()
            if self._open.setdefault(key, client) is not client:  # opened meanwhile
                await client.__aexit__(None, None, None)
                client = self._open[key]
        async with client:
            yield client

    @property
    def opened(self) -> int:
        """How many clients are open (one per API URL and key in use)."""
        return len(self._open)

    async def close(self) -> None:
        """Close every client (at shutdown)."""
        clients, self._open = list(self._open.values()), {}
        self._gates = {}
        for client in clients:
            await client.__aexit__(None, None, None)

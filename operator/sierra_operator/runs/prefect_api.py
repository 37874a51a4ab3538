"""Prefect adapter: one batch's work pool, queue, deployment and flow runs.

Translates the machine's actions into Prefect API calls, and reads the batch's flow and
task runs back (what they say about its runs: :mod:`.observations`). Holds no decisions.
Talks to an explicit API URL (never the user's profile), through the clients every batch
of the operator shares (:mod:`.clients`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    DeploymentFlowRunCreate,
    DeploymentUpdate,
    FlowRunCreate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun, WorkPool
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Cancelled, Cancelling, Scheduled, to_state_create

from sierra_operator.core import names
from sierra_operator.core.machine import (
    RunAttempt,
    RunKey,
    RunObservation,
    SubmitRuns,
    pack,
)
from sierra_operator.runs.clients import PAGE, PrefectClients, task_runs_of
from sierra_operator.runs.fair_gate import FairGate
from sierra_operator.runs.observations import (
    FINAL_STATES,
    flow_run_observations,
    is_single_run,
    ledger_lookup,
    never_taken,
    state_type,
)

if TYPE_CHECKING:
    import httpx
    from prefect.client.orchestration.routes import ServerRoutes

log = logging.getLogger(__name__)

BULK_CREATE_ROUTE = "/deployments/{id}/create_flow_run/bulk"
"""Prefect's bulk create of flow runs from a deployment (one transaction per request); its
client library does not wrap it (3.8.8)."""
BULK_CREATE_LIMIT = 100
"""The most flow runs the server takes in one bulk create (its ``BULK_CREATE_LIMIT``)."""
REFUSED_NAMES = 5
"""Flow runs named per reason in a :class:`FlowRunsRefused` message; the rest are counted."""
REASON_LINE_CHARS = 200
"""How much of the server's reason for a refused flow run (an exception, with its SQL) is kept."""
SQLITE_LOCKED = "database is locked"
"""A flow run refused for this (SQLite) is sent again: see :meth:`PrefectBatch._submit_chunk`."""
BULK_RETRY_SECONDS = 0.5
"""First wait before flow runs refused for :data:`SQLITE_LOCKED` are sent again; doubled
each time up to :data:`BULK_RETRY_MAX_WAIT`."""
BULK_RETRY_MAX_WAIT = 4.0
"""Longest wait between two sends of flow runs refused for :data:`SQLITE_LOCKED`."""
BULK_RETRY_PATIENCE = 60.0
"""Seconds of waits after which flow runs still refused for :data:`SQLITE_LOCKED` raise:
about what Prefect's client waits for a single create answered 503 (2 + 4 + ... + 32 s)."""


class PoolConflict(RuntimeError):
    """The work pool name is taken by a pool this batch did not create."""


class FlowRunsRefused(RuntimeError):
    """The server reported flow runs of a bulk create FAILED (the others were created)."""


def _no_bulk_endpoint(response: httpx.Response) -> bool:
    """Whether a refused bulk create means the server has no such endpoint: 405, or a 404
    that is not the endpoint's own "Deployment not found" (raised as is, as a single create
    would)."""
    if response.status_code == 405:
        return True
    if response.status_code != 404:
        return False
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):  # not JSON (a proxy's page, say)
        return True
    return bool(detail != "Deployment not found")


def _refused_message(experiment: str, refused: list[tuple[str, str]], total: int) -> str:
    """``refused`` (flow run name, the server's reason) as one message, by reason."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in refused:
        by_reason.setdefault(reason, []).append(name)
    parts = []
    for reason, names_ in by_reason.items():
        reason = reason.strip().splitlines()[0] if reason.strip() else "no reason given"
        if len(reason) > REASON_LINE_CHARS:
            reason = reason[: REASON_LINE_CHARS - 3] + "..."
        listed = ", ".join(names_[:REFUSED_NAMES])
        more = f" and {len(names_) - REFUSED_NAMES} more" if len(names_) > REFUSED_NAMES else ""
        parts.append(f"{listed}{more}: {reason}")
    others = " (the others were created)" if len(refused) < total else ""
    return (
        f"Prefect refused {len(refused)} of {total} flow runs of {experiment} in a bulk "
        f"create{others}: {'; '.join(parts)}"
    )


@dataclass(frozen=True)
class PlanRun:
    """Where the planning flow run of one spec generation stands."""

    id: UUID
    state: str  # "pending", "completed" or "failed"
    text: str | None
    message: str


@dataclass(frozen=True)
class HoldQueue:
    """A paused work queue a wave is held in until the state machine starts it (runs/held.py)."""

    id: UUID
    experiment: str
    paused: bool


@dataclass
class PrefectBatch:
    """One batch's objects on one Prefect server."""

    api_url: str
    batch_id: str
    pool: str
    queue: str
    pool_type: str = "process"
    concurrency_limit: int | None = None
    # Requests creating flow runs in flight at once in submit_each (1: one after the other).
    submit_concurrency: int = 1
    api_key: str | None = field(default=None, repr=False)
    _key_read_at: float | None = field(default=None, repr=False)
    deployment_id: UUID | None = None
    # Local mode's private server (see :meth:`ensure_flow`): flow runs of the flow itself.
    flow_id: UUID | None = None
    # Flow runs already final, with the observations they gave: never read again.
    _final: dict[UUID, dict[RunKey, tuple[int, RunObservation]]] = field(default_factory=dict)
    # The last observations of every flow run of the batch, and which may still change.
    _observed: dict[UUID, dict[RunKey, tuple[int, RunObservation]]] = field(default_factory=dict)
    _unsettled: set[UUID] = field(default_factory=set)
    # Every flow run of the batch read once. Local mode sets it from the start: its batch
    # id is new (one per invocation), so there is nothing to list yet.
    _listed: bool = False
    # Flow runs of waves held ahead, observed, not reported: local mode's prepared ones whose
    # gate has not opened (""), the operator's in a paused hold queue (its name).
    _hidden: dict[UUID, str] = field(default_factory=dict)
    # The operator's held waves (runs/held.py): this batch's hold queues by name (None: not
    # read yet) and whether its workers poll them (None: not asked yet).
    hold_queues: dict[str, HoldQueue] | None = None
    holds_allowed: bool | None = None
    _taken_held: set[UUID] = field(default_factory=set)  # held, yet seen taken by a worker
    flow_runs_read: int = 0  # flow runs read by observe() so far (what it costs Prefect)
    # Which flow run executes (experiment, run, attempt): to stop an attempt for good.
    attempt_flow_runs: dict[tuple[str, int, int], UUID] = field(default_factory=dict)
    # Local mode: the run records on sierra-root settle runs whose task state is not known yet.
    read_records: bool = False
    # Published plans already read, by plan key: (plan JSON, never changes once published).
    plans: dict[str, str] = field(default_factory=dict)
    _plan_runs: dict[str, UUID] = field(default_factory=dict)
    # The operator's shared open clients (None: a client per call, e.g. local mode).
    clients: PrefectClients | None = field(default=None, repr=False)
    # Whether the server has the bulk create of flow runs (None: not asked yet).
    _bulk_create: bool | None = field(default=None, repr=False)

    def set_api_key(self, key: str | None) -> None:
        """Use ``key`` from now on; :meth:`api_key_fresh` says when to read it again."""
        self.api_key = key
        self._key_read_at = time.monotonic()

    def api_key_fresh(self, max_age: float = 60.0) -> bool:
        """Whether the key was read from its Secret less than ``max_age`` seconds ago."""
        read_at = self._key_read_at
        return read_at is not None and time.monotonic() - read_at < max_age

    def client(self) -> AbstractAsyncContextManager[PrefectClient]:
        """A client bound to this batch's server, independent of any Prefect profile: the
        shared open one of :attr:`clients` if set (the operator), else a fresh one."""
        if self.clients is not None:
            return self.clients.get(self.api_url, self.api_key)
        return PrefectClient(api=self.api_url, api_key=self.api_key)

    async def ensure_pool(self, base_job_template: dict[str, Any]) -> WorkPool | None:
        """Create the pool and queue; refuse a same-named pool made by someone else. The
        pool as it was, if it existed (for :meth:`update_pool`)."""
        async with self.client() as client:
            try:
                existing = await client.read_work_pool(self.pool)
            except ObjectNotFound:
                existing = None
            if existing is not None and existing.description != names.pool_description(
                self.batch_id
            ):
                raise PoolConflict(
                    f"work pool {self.pool!r} already exists on {self.api_url} and was not "
                    "created by this batch; it is left untouched. Pass --pool NAME (or set "
                    "spec.prefect.workPool) to use another name."
                )
            if existing is None:
                await client.create_work_pool(
                    WorkPoolCreate(
                        name=self.pool,
                        type=self.pool_type,
                        description=names.pool_description(self.batch_id),
                        base_job_template=base_job_template,
                        concurrency_limit=self.concurrency_limit,
                    )
                )
            try:
                await client.create_work_queue(name=self.queue, work_pool_name=self.pool)
            except ObjectAlreadyExists:
                pass  # made by an earlier reconcile whose status patch did not land
        return existing

    async def update_pool(self, base_job_template: dict[str, Any], pool: WorkPool) -> bool:
        """Replace the job template and concurrency limit of ``pool`` (as read) if they
        differ (a rebuilt image, or a changed spec: new runs use its digest, resources and
        parallelism); whether they did (a change such as ``suspend`` leaves both as they
        were)."""
        if (
            pool.base_job_template == base_job_template
            and pool.concurrency_limit == self.concurrency_limit
        ):
            return False
        async with self.client() as client:
            await client.update_work_pool(
                self.pool,
                WorkPoolUpdate(
                    base_job_template=base_job_template, concurrency_limit=self.concurrency_limit
                ),
            )
        return True

    @property
    def deployment_name(self) -> str:
        """This batch's deployment of the experiment flow."""
        return f"{names.DEPLOYMENT_NAME}-{self.batch_id}"

    @property
    def _deployment_ref(self) -> str:
        return f"{names.EXPERIMENT_FLOW_NAME}/{self.deployment_name}"

    @property
    def _plan_deployment_ref(self) -> str:
        return f"{names.PLAN_FLOW_NAME}/{self.plan_deployment_name}"

    async def resolve_deployment(self) -> UUID:
        """The deployment id, looked up by name (after an operator restart).

        A deployment made by an operator version whose flow lived at another module path is
        pointed at this version's flow first: runs created from now on run in this version's
        image, where the old path does not import."""
        if self.deployment_id is None:
            async with self.client() as client:
                found = await client.read_deployment_by_name(self._deployment_ref)
                if found.entrypoint != names.FLOW_ENTRYPOINT:
                    await client.update_deployment(
                        found.id, DeploymentUpdate(entrypoint=names.FLOW_ENTRYPOINT)
                    )
            self.deployment_id = found.id
        return self.deployment_id

    async def ensure_deployment(
        self, working_directory: str, pool_template: dict[str, Any] | None = None
    ) -> UUID:
        """Deployment of the experiment flow, imported by module path in the run process.

        With ``pool_template``, the pool and queue are made first (:meth:`ensure_pool`). One
        write after the other: two at once on a SQLite server can be refused ("database is
        locked", 503), which Prefect's client retries only after 2 s."""
        from sierra_operator.runs.flows import run_experiment

        async with self.client() as client:
            if pool_template is not None:
                await self.ensure_pool(pool_template)
            flow_id = await client.create_flow(run_experiment)
            self.deployment_id = await self._create_deployment(
                client, flow_id, self.deployment_name, names.FLOW_ENTRYPOINT, working_directory
            )
        return self.deployment_id

    async def _deploy(
        self,
        client: PrefectClient,
        flow: Any,
        name: str,
        entrypoint: str,
        working_directory: str,
    ) -> UUID:
        flow_id = await client.create_flow(flow)
        return await self._create_deployment(client, flow_id, name, entrypoint, working_directory)

    async def _create_deployment(
        self,
        client: PrefectClient,
        flow_id: UUID,
        name: str,
        entrypoint: str,
        working_directory: str,
    ) -> UUID:
        return await client.create_deployment(
            flow_id=flow_id,
            name=name,
            entrypoint=entrypoint,
            work_pool_name=self.pool,
            work_queue_name=self.queue,
            tags=[names.batch_tag(self.batch_id)],
            # A pull step keeps `flow-run execute` from copying the cwd around, and sets
            # where relative paths in commands resolve.
            pull_steps=[
                {
                    "prefect.deployments.steps.set_working_directory": {
                        "directory": working_directory
                    }
                }
            ],
            enforce_parameter_schema=False,
        )

    @property
    def plan_deployment_name(self) -> str:
        """This batch's deployment of the planning flow."""
        return f"{names.PLAN_DEPLOYMENT_NAME}-{self.batch_id}"

    async def plan(self, sierra_root: str, commands_file: str, key: str) -> PlanRun:
        """The planning flow run named ``key``: created once (idempotency key, so also after a
        restart), then read by id until it is final; its artifact holds the plan. Its
        deployment is made here, when a batch first needs one."""
        from sierra_operator.runs.flows import plan_batch

        async with self.client() as client:
            run_id = self._plan_runs.get(key)
            if run_id is not None:
                run = await client.read_flow_run(run_id)
            else:
                deployment_id = await self._deploy(
                    client,
                    plan_batch,
                    self.plan_deployment_name,
                    names.PLAN_FLOW_ENTRYPOINT,
                    sierra_root,
                )
                run = await client.create_flow_run_from_deployment(
                    deployment_id,
                    parameters={
                        "sierra_root": sierra_root,
                        "commands_file": commands_file,
                        "batch_id": self.batch_id,
                        "plan_key": key,
                    },
                    name=f"plan-{key}",
                    tags=[names.batch_tag(self.batch_id), "sierra-plan"],
                    idempotency_key=f"{self.batch_id}/plan/{key}",
                )
                self._plan_runs[key] = run.id
            state = state_type(run)
            if state is StateType.COMPLETED:
                artifacts = await client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])
                    ),
                    limit=1,
                )
                text = str(artifacts[0].data) if artifacts else None
                return PlanRun(run.id, "completed", text, "")
            if state in FINAL_STATES:
                message = run.state.message if run.state is not None else ""
                return PlanRun(run.id, "failed", None, message or str(state))
            return PlanRun(run.id, "pending", None, "")

    def _flow_run_create(
        self,
        experiment: str,
        runs: tuple[RunAttempt, ...],
        parameters: dict[str, Any],
        *,
        name: str,
        tags: list[str],
        key: str,
        work_queue: str | None = None,
    ) -> DeploymentFlowRunCreate:
        """One flow run of the experiment flow executing ``runs``, as the client's create
        sends it (Scheduled now); ``key`` makes it idempotent. Single and bulk creates both
        send this: the same flow run either way. ``work_queue``: a queue of the pool other
        than the deployment's (a held wave's)."""
        return DeploymentFlowRunCreate(
            parameters={
                **parameters,
                "experiment": experiment,
                "runs": [
                    {"index": r.index, "command": r.command, "attempt": r.attempt} for r in runs
                ],
            },
            # Held: Scheduled by type (a worker takes it once its queue is released), named so
            # that Prefect's late-runs service leaves it alone (it marks only "Scheduled" ones
            # Late, a state write per flow run) and the UI says why it waits.
            state=to_state_create(Scheduled(name=names.HELD_STATE) if work_queue else Scheduled()),
            name=name,
            tags=[names.batch_tag(self.batch_id), names.experiment_tag(experiment), *tags],
            idempotency_key=key,
            work_queue_name=work_queue,
        )

    async def _create_run(self, client: PrefectClient, create: DeploymentFlowRunCreate) -> UUID:
        """The flow run ``create`` describes, from one create (its key makes it idempotent);
        of the flow itself when there is no deployment (:meth:`ensure_flow`)."""
        if self.flow_id is not None and self.deployment_id is None:
            direct = FlowRunCreate(flow_id=self.flow_id, **create.model_dump(exclude_unset=True))
            response = await client.request(
                "POST", "/flow_runs/", json=direct.model_dump(mode="json", exclude_unset=True)
            )
            return UUID(response.json()["id"])
        created = await client.create_flow_run_from_deployment(
            await self.resolve_deployment(),
            parameters=create.parameters,
            name=create.name,
            tags=create.tags,
            idempotency_key=create.idempotency_key,
            work_queue_name=create.work_queue_name,
            state=Scheduled(name=create.state.name) if create.state is not None else None,
        )
        return created.id

    async def ensure_flow(self) -> UUID:
        """Register only the experiment flow (local mode on its own private server).

        Local mode's executor is handed each flow run's id and runs the flow itself: no
        worker polls a pool, nothing reads a deployment, and the private server (no UI) is
        thrown away with its home. Flow runs of the flow itself spare the pool, queue and
        deployment writes before the first run (4 of the 5 requests of provisioning)."""
        from sierra_operator.runs.flows import run_experiment

        async with self.client() as client:
            self.flow_id = await client.create_flow(run_experiment)
        return self.flow_id

    async def _create_runs(
        self, client: PrefectClient, creates: list[DeploymentFlowRunCreate]
    ) -> list[dict[str, Any]] | None:
        """The server's result for each of ``creates`` (at most :data:`BULK_CREATE_LIMIT`), in
        their order, from one bulk create; None if the server has no bulk endpoint.

        Sent through the client's own request path (its retries of 429/502/503 and of lost
        connections, its auth and API key), like the creates it wraps; a retried request
        creates nothing twice (idempotency keys: the server answers an existing key with
        that flow run's id). Whether the server has the endpoint is remembered
        (:meth:`submit_each` says why)."""
        if self._bulk_create is False:  # found out by a request ahead of this one
            return None
        route = cast("ServerRoutes", BULK_CREATE_ROUTE)  # a route the client does not list
        try:
            response = await client.request(
                "POST",
                route,
                path_params={"id": await self.resolve_deployment()},
                json=[c.model_dump(mode="json", exclude_unset=True) for c in creates],
            )
        except PrefectHTTPStatusError as exc:
            if not _no_bulk_endpoint(exc.response):
                raise
            if self._bulk_create is None:
                log.info(
                    "batch %s: %s has no bulk create of flow runs (%s): one create per flow run",
                    self.batch_id,
                    self.api_url,
                    exc.response.status_code,
                )
            self._bulk_create = False
            return None
        self._bulk_create = True
        results = response.json().get("results")
        if not isinstance(results, list) or len(results) != len(creates):
            raise RuntimeError(
                f"Prefect answered a bulk create of {len(creates)} flow runs with "
                f"{response.text[:200]!r}"
            )
        return results

    async def submit(
        self,
        action: SubmitRuns,
        parameters: dict[str, Any],
        *,
        prepared: str | None = None,
    ) -> UUID:
        """Create the flow run of one wave; the idempotency key makes a repeat a no-op.

        ``prepared``: a wave made ahead, held at a gate (``parameters["gate"]``) named
        ``prepared``: a key of its own per preparation, so neither the same wave submitted
        for real later (the prepared one died, say) nor the same wave prepared again after
        a withdraw is handed an earlier flow run; hidden from :meth:`observe` until
        :meth:`reveal` (until its gate opens, its runs are not submitted as far as the
        state machine knows)."""
        first_attempt = min(r.attempt for r in action.runs)
        key = f"{self.batch_id}/{action.wave_key}"
        if prepared is not None:
            key += f"/prepared/{prepared}"
        async with self.client() as client:
            run_id = await self._create_run(
                client,
                self._flow_run_create(
                    action.experiment,
                    action.runs,
                    parameters,
                    name=names.wave_flow_run_name(action.experiment, first_attempt),
                    tags=[],
                    key=hashlib.sha256(key.encode()).hexdigest(),
                ),
            )
        if prepared is not None:
            self._hidden[run_id] = ""
        self._unsettled.add(run_id)
        return run_id

    def reveal(self, flow_run_id: UUID) -> None:
        """A prepared flow run's gate opened: its runs count from the next observe on."""
        self._hidden.pop(flow_run_id, None)

    def taken(self, flow_run_id: UUID) -> bool:
        """Whether a held flow run was last seen taken by a worker (runs/held.py)."""
        return flow_run_id in self._taken_held

    def held_in(self, queue: str) -> list[UUID]:
        """The flow runs known to wait in hold queue ``queue`` (hidden from observe)."""
        return [run_id for run_id, where in self._hidden.items() if where == queue]

    def runs_in(self, flow_run_ids: list[UUID]) -> set[tuple[RunKey, int]]:
        """The (run, attempt) pairs the flow runs ``flow_run_ids`` were last observed with."""
        return {
            (key, attempt)
            for run_id in flow_run_ids
            for key, (attempt, _) in self._observed.get(run_id, {}).items()
        }

    async def state_types(self, flow_run_ids: list[UUID]) -> dict[UUID, StateType | None]:
        """Each flow run's state type now (in the operator, merged with other batches' reads)."""
        async with self.client() as client:
            found = await self._flow_runs_by_id(client, flow_run_ids)
        return {fr.id: state_type(fr) for fr in found}

    def ahead_busy(self) -> bool:
        """Whether another batch's wave held ahead is being created on this client now."""
        if self.clients is None:
            return False
        return self.clients.submit_gate(self.api_url, self.api_key, ahead=True).locked()

    def reveal_queue(self, queue: str) -> None:
        """Hold queue ``queue`` was released: its flow runs count from the next observe on."""
        for run_id in self.held_in(queue):
            del self._hidden[run_id]

    def ended(self, flow_run_id: UUID) -> bool:
        """Whether the flow run was last observed final (a prepared one that died before
        its gate opened must not be released: its wave is submitted anew)."""
        return flow_run_id in self._final

    async def submit_each(
        self,
        action: SubmitRuns,
        parameters: dict[str, Any],
        runs_per_pod: int = 1,
        in_pod: int = 1,
        hold_queue: str | None = None,
    ) -> list[UUID]:
        """One flow run per group of ``runs_per_pod`` runs of the wave (cluster: each group
        is its own Job/pod, executing ``in_pod`` of its runs at a time).

        ``hold_queue``: the wave is held ahead (runs/held.py): its flow runs go to that paused
        queue under keys of their own, hidden from :meth:`observe` until the queue is
        released (:meth:`reveal_queue`).

        A group of one run is that run's flow run (its state is the run's outcome); a larger
        group is a wave of its own, observed through its task runs like local mode's.

        The flow runs are created in bulk, :data:`BULK_CREATE_LIMIT` per request (one server
        transaction each): a server spends ~50-60 ms of CPU per single create, and 1,000 of
        them took minutes on a small machine. At most :attr:`submit_concurrency` requests
        are in flight at once (with shared :attr:`clients`: at most theirs, across every
        batch on that client), so no more connections than the server can serve.
        Idempotency keys name batch, experiment, (first) run and attempt, so a request
        retried (by Prefect's client after a 503 or a lost connection, or by a restarted
        operator re-deciding the same wave) never makes a second flow run: the server
        answers a known key with that flow run's id. Each id is remembered as soon as its
        request returns: runs of a wave that failed half-way are still observed next tick.
        On a failure the other requests in flight finish (none is cancelled after the server
        may have committed it), and the batch is listed again next :meth:`observe`, so a
        flow run whose id never came back is still found. Flow runs the server reports
        FAILED raise :class:`FlowRunsRefused` with its reasons (the rest are created), once
        those refused for a passing reason were sent again (:meth:`_submit_chunk`).

        A server without the bulk endpoint (404/405: a Prefect older than the endpoint, or
        a proxy in front of the API that does not route it) gets one create per flow run,
        as before the endpoint existed: same flow runs, same keys, just slower. That is
        remembered for this batch, so later waves do not spend a refused request each; a
        restarted operator asks once again (the server may have been upgraded).
        """
        gate = (  # shared by every batch on a shared client: its connections are shared
            self.clients.submit_gate(self.api_url, self.api_key, ahead=hold_queue is not None)
            if self.clients is not None
            else FairGate(max(1, self.submit_concurrency))
        )
        creates = [
            self._group_create(action.experiment, runs, parameters, in_pod, hold_queue)
            for runs in pack(action.runs, runs_per_pod)
        ]
        async with self.client() as client:
            await self.resolve_deployment()  # once, not raced by every request
            # Not a TaskGroup: one failed request would cancel the ones in flight, and a
            # cancelled one may already be committed by the server with its ids lost. Every
            # request finishes; ids that came back are recorded (in _submit_chunk).
            try:
                results = await asyncio.gather(
                    *(
                        self._submit_chunk(
                            client, gate, action.experiment, creates[i : i + BULK_CREATE_LIMIT]
                        )
                        for i in range(0, len(creates), BULK_CREATE_LIMIT)
                    ),
                    return_exceptions=True,
                )
            except BaseException:  # cancelled from outside: creates may be committed unseen
                self._listed = False
                raise
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # A request that failed (a timeout, say) may still have been committed: re-list
            # every flow run of the batch next observe(), so none is missed and its runs are
            # not packed again under a new key (run twice).
            self._listed = False
            raise errors[0]  # as a sequential loop would: callers catch it
        return [run_id for ids in results if not isinstance(ids, BaseException) for run_id in ids]

    def _group_create(
        self,
        experiment: str,
        runs: tuple[RunAttempt, ...],
        parameters: dict[str, Any],
        in_pod: int,
        hold_queue: str | None = None,
    ) -> DeploymentFlowRunCreate:
        """The flow run of one group of a wave's runs (:meth:`submit_each`): one run is named
        and tagged after it; a larger group is a wave of its own (``/pod`` key); a held one
        waits in ``hold_queue``, whose name ends its key: the same runs submitted as usual
        later (the held wave withdrawn), or held again for another spec, are other flow
        runs."""
        first = runs[0]
        where = f"{self.batch_id}/{experiment}/{first.index}/{first.attempt}"
        if len(runs) == 1:
            name = f"{experiment}-run{first.index}-try{first.attempt}"
            tags, key, parallel = [names.run_tag(first.index)], where, 1
        else:
            name = f"{experiment}-runs{first.index}-{runs[-1].index}-try{first.attempt}"
            tags, key, parallel = [], f"{where}/pod", max(1, min(in_pod, len(runs)))
        return self._flow_run_create(
            experiment,
            runs,
            {**parameters, "parallelism": parallel},
            name=name,
            tags=tags,
            key=key + (f"/{hold_queue}" if hold_queue else ""),
            work_queue=hold_queue,
        )

    async def _submit_chunk(
        self,
        client: PrefectClient,
        gate: FairGate,
        experiment: str,
        chunk: list[DeploymentFlowRunCreate],
    ) -> list[UUID]:
        """The ids of ``chunk``'s flow runs, in its order, each recorded as it comes back:
        one bulk create, or one create each on a server without the endpoint.

        The server reports each flow run CREATED or FAILED. On SQLite a whole request is
        often refused with "database is locked": its transaction reads before it writes,
        and another writer (the server's own event persister, or another bulk create)
        committed in between (SQLITE_BUSY_SNAPSHOT, at once, no waiting). A single create
        gets a 503 for that, which Prefect's client retries; the bulk endpoint reports it
        per flow run in a 200, so those are sent again here, after waits doubling from
        :data:`BULK_RETRY_SECONDS` to :data:`BULK_RETRY_MAX_WAIT` (outside the gate), for
        :data:`BULK_RETRY_PATIENCE` at most. The waits stay short: of N bulk creates in
        flight on SQLite, each round one commits and the others are refused, so the last
        needs N sends. Any other refusal, or one that outlasts that patience, raises
        :class:`FlowRunsRefused`."""
        ids: dict[int, UUID] = {}
        pending = list(range(len(chunk)))
        waited, wait = 0.0, BULK_RETRY_SECONDS
        while True:
            results = None
            if self._bulk_create is not False:
                async with gate.turn(self.batch_id):
                    results = await self._create_runs(client, [chunk[i] for i in pending])
            refused: list[tuple[int, str]] = []
            if results is None:  # no bulk endpoint: one create each, below
                break
            for i, result in zip(pending, results, strict=True):
                run_id = result.get("flow_run_id")
                if result.get("status") == "CREATED" and run_id:
                    ids[i] = self._created(chunk[i], UUID(str(run_id)))
                else:
                    refused.append((i, str(result.get("error") or result.get("status"))))
            pending = [i for i, _ in refused]
            passing = all(SQLITE_LOCKED in reason for _, reason in refused)
            if not refused or not passing or waited + wait > BULK_RETRY_PATIENCE:
                break
            await asyncio.sleep(wait * random.uniform(0.8, 1.2))
            waited, wait = waited + wait, min(2 * wait, BULK_RETRY_MAX_WAIT)
        if refused:
            failed = [(str(chunk[i].name), reason) for i, reason in refused]
            raise FlowRunsRefused(_refused_message(experiment, failed, len(chunk)))
        singles = await asyncio.gather(
            *(self._submit_one(client, gate, chunk[i]) for i in pending), return_exceptions=True
        )
        for single in singles:
            if isinstance(single, BaseException):
                raise single  # the others finished (above): none cancelled in flight
        ids.update(zip(pending, cast(list[UUID], singles), strict=True))
        return [ids[i] for i in range(len(chunk))]

    async def _submit_one(
        self, client: PrefectClient, gate: FairGate, create: DeploymentFlowRunCreate
    ) -> UUID:
        """One create, recorded as it comes back (a server without the bulk endpoint)."""
        async with gate.turn(self.batch_id):
            run_id = await self._create_run(client, create)
        return self._created(create, run_id)

    def _created(self, create: DeploymentFlowRunCreate, run_id: UUID) -> UUID:
        """Remember a flow run as soon as its id comes back: observed from the next tick on,
        hidden if it waits in a hold queue."""
        self._unsettled.add(run_id)
        if create.work_queue_name:
            self._hidden[run_id] = create.work_queue_name
        return run_id

    async def _flow_runs(self, client: PrefectClient, **filters: Any) -> list[FlowRun]:
        out: list[FlowRun] = []
        while True:
            page = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(**filters), limit=PAGE, offset=len(out)
            )
            out.extend(page)
            if len(page) < PAGE:
                return out

    async def _task_runs(self, client: PrefectClient, ids: list[UUID]) -> list[TaskRun]:
        if self.clients is not None:  # the operator: merged with other batches' reads
            found = await self.clients.task_run_reads(self.api_url, self.api_key).read(ids)
            return [tr for runs in found.values() for tr in runs]
        return await task_runs_of(client, ids)

    async def _flow_runs_by_id(self, client: PrefectClient, ids: list[UUID]) -> list[FlowRun]:
        if not ids:
            return []
        if self.clients is not None:  # the operator: merged with other batches' reads
            found = await self.clients.flow_run_reads(self.api_url, self.api_key).read(ids)
            return list(found.values())
        return await self._flow_runs(client, id=FlowRunFilterId(any_=ids))

    async def observe(self) -> dict[RunKey, RunObservation]:
        """Latest attempt of every submitted run of this batch, as Prefect reports it now.

        Reads every flow run of the batch once (a restarted driver knows nothing), then only
        those not settled yet plus the ones it submitted since: O(active runs) per call, not
        O(all runs). Only observations that can no longer change are settled (a final flow
        run whose runs are all known); anything unknown is read again next time.
        """
        async with self.client() as client:
            if not self._listed:
                flow_runs = await self._flow_runs(
                    client, tags=FlowRunFilterTags(all_=[names.batch_tag(self.batch_id)])
                )
                self._listed = True
            else:
                flow_runs = await self._flow_runs_by_id(client, sorted(self._unsettled))
            self.flow_runs_read += len(flow_runs)
            live = [fr for fr in flow_runs if fr.id not in self._final]
            waves = [fr.id for fr in live if not is_single_run(fr)]
            tasks = await self._task_runs(client, waves)
        by_flow: dict[UUID, dict[int, TaskRun]] = {}
        for tr in tasks:
            index = names.run_index_of_task_run(tr.name)
            if tr.flow_run_id is not None and index is not None:
                by_flow.setdefault(tr.flow_run_id, {})[index] = tr
        lookup = ledger_lookup if self.read_records else None
        now = datetime.now(UTC)
        held = {name for name, q in (self.hold_queues or {}).items() if q.paused}
        for fr in live:
            if fr.work_queue_name in held and never_taken(fr):  # also after a restart
                self._hidden.setdefault(fr.id, fr.work_queue_name)
            elif self._hidden.get(fr.id):  # held, yet a worker took it (queue unpaused by hand)
                self._taken_held.add(fr.id)
            observations, settled = flow_run_observations(fr, by_flow.get(fr.id, {}), lookup, now)
            self._observed[fr.id] = observations
            if settled:
                self._final[fr.id] = observations
                self._unsettled.discard(fr.id)
            else:
                self._unsettled.add(fr.id)
        latest: dict[RunKey, tuple[int, RunObservation]] = {}
        for flow_run_id, observations in self._observed.items():
            if flow_run_id in self._hidden:  # held: not submitted as far as decide knows
                continue
            for key, (attempt, obs) in observations.items():
                # Only flow runs the state machine sees: a withdrawn held one of the same
                # attempt must never be taken for the one that executes (retries wait on it).
                self.attempt_flow_runs[(*key, attempt)] = flow_run_id
                if key not in latest or attempt > latest[key][0]:
                    latest[key] = (attempt, obs)
        return {key: obs for key, (_, obs) in latest.items()}

    async def _live(self, client: PrefectClient) -> list[FlowRun]:
        """Every flow run of the batch not final yet."""
        flow_runs = await self._flow_runs(
            client, tags=FlowRunFilterTags(all_=[names.batch_tag(self.batch_id)])
        )
        return [fr for fr in flow_runs if state_type(fr) not in FINAL_STATES]

    async def _wait_final(self, client: PrefectClient, live: list[UUID], timeout: float) -> int:
        deadline = asyncio.get_running_loop().time() + timeout
        while live and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            runs = await self._flow_runs(client, id=FlowRunFilterId(any_=live))
            live = [fr.id for fr in runs if state_type(fr) not in FINAL_STATES]
        return len(live)

    async def wait_idle(self, timeout: float = 30.0) -> int:
        """Wait (bounded) for flow runs to finish on their own, e.g. before stopping workers."""
        async with self.client() as client:
            live = [fr.id for fr in await self._live(client)]
            return await self._wait_final(client, live, timeout)

    async def cancel_active(self, timeout: float = 30.0) -> int:
        """Cancel this batch's unfinished flow runs and wait (bounded) until they are final.

        Flow runs held in a paused queue (runs/held.py) are set Cancelled at once: no worker
        has them, so none would confirm a Cancelling."""
        async with self.client() as client:
            live = await self._live(client)
            for fr in live:
                held = names.held_experiment(self.queue, fr.work_queue_name or "") is not None
                if held and state_type(fr) is StateType.SCHEDULED:
                    await client.set_flow_run_state(fr.id, Cancelled(), force=True)
                else:
                    await client.set_flow_run_state(fr.id, Cancelling(), force=True)
            return await self._wait_final(client, [fr.id for fr in live], timeout)

    async def mark_cancelled(self) -> int:
        """Mark this batch's unfinished flow runs Cancelled, once nothing executes them any
        more (local mode stopped its executor); returns how many it marked."""
        async with self.client() as client:
            live = await self._live(client)
            for fr in live:
                await client.set_flow_run_state(
                    fr.id, Cancelled(message="local mode was interrupted"), force=True
                )
            return len(live)

    async def cleanup(self) -> None:
        """Delete this batch's deployments and pool; a pool someone else made is left alone."""
        async with self.client() as client:
            for ref in (self._deployment_ref, self._plan_deployment_ref):
                try:
                    deployment = await client.read_deployment_by_name(ref)
                    await client.delete_deployment(deployment.id)
                except ObjectNotFound:
                    pass
            try:
                pool = await client.read_work_pool(self.pool)
            except ObjectNotFound:
                return
            if pool.description == names.pool_description(self.batch_id):
                await client.delete_work_pool(self.pool)

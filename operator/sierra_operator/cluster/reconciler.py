"""One reconcile of one SierraBatch: parse, provision, observe, decide, act.

Sequencing of adapters only: decisions are :func:`sierra_operator.core.machine.decide`'s and the
renderers'. Everything is re-derived from the object (spec + status) and what Kubernetes and
Prefect report now, so a restarted operator continues where it was and creates nothing twice
(existing children are kept, flow runs carry idempotency keys).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from kubernetes_asyncio.client import ApiClient
from prefect.exceptions import PrefectHTTPStatusError

from sierra_operator.cluster import kube
from sierra_operator.cluster.image_stage import ImageRequest, ImageStage
from sierra_operator.cluster.job_template import (
    default_kubernetes_template,
    render_base_job_template,
)
from sierra_operator.cluster.manifests import BatchRef, WorkerConfig, claim_name, render_children
from sierra_operator.cluster.settings import OperatorSettings
from sierra_operator.core import merge_patch, names
from sierra_operator.core.machine import (
    RunKey,
    RunObservation,
    SubmitRuns,
    decide,
    next_wave,
    pod_shape,
    set_condition,
)
from sierra_operator.core.model import (
    TERMINAL_PHASES,
    BatchPhase,
    BatchStatus,
    Condition,
    ImageSpec,
    SecretKeyRef,
    SierraBatch,
    SierraBatchSpec,
    SpecError,
    parse_batch,
    read_status,
    stored_batch,
)
from sierra_operator.core.plan import Plan, PlanError, plan_from_experiments, plan_from_json
from sierra_operator.runs import held as held_waves
from sierra_operator.runs.clients import PrefectClients
from sierra_operator.runs.pool_template import fixed
from sierra_operator.runs.prefect_api import FlowRunsRefused, PoolConflict, PrefectBatch

log = logging.getLogger(__name__)

Event = tuple[str, str, str]
"""(type, reason, message) of a Kubernetes Event to post on the batch."""

# A Prefect server that cannot be reached, answers with an error, or refuses flow runs of a
# bulk create (with its reason): a condition, retried.
PREFECT_ERRORS = (httpx.TransportError, PrefectHTTPStatusError, FlowRunsRefused)


@dataclass
class Outcome:
    """The status to store and the Events to post (type, reason, message)."""

    status: BatchStatus
    events: list[Event] = field(default_factory=list)


class _Stop(Exception):
    """A stage cannot go on this reconcile; ``outcome`` is what to store and post."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.status.message)
        self.outcome = outcome


@dataclass
class _Batch:
    """One reconcile's view of one batch: what every stage reads, and the Events so far."""

    batch: SierraBatch
    ref: BatchRef
    generation: int | None
    previous: BatchStatus
    settings: OperatorSettings
    kube_api: ApiClient
    now: datetime
    events: list[Event] = field(default_factory=list)

    @property
    def spec(self) -> SierraBatchSpec:
        return self.batch.spec

    @property
    def image(self) -> ImageSpec:
        assert self.spec.image is not None  # checked by _validated
        return self.spec.image

    def stop(
        self,
        status: BatchStatus,
        type_: str,
        reason: str,
        message: str,
        phase: BatchPhase,
        summary: str | None = None,
    ) -> _Stop:
        """A :class:`_Stop` keeping the Events gathered so far."""
        outcome = _blocked(status, self.now, type_, reason, message, phase, summary)
        outcome.events = self.events + outcome.events
        return _Stop(outcome)


def status_document(status: BatchStatus) -> dict[str, Any]:
    """The status as the API server stores it: absent fields absent, never ``null`` (a JSON
    merge patch deletes a key set to ``null``, so a stored status holds none)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def status_patch(stored: Mapping[str, Any] | None, status: BatchStatus) -> dict[str, Any]:
    """The JSON merge patch that turns the stored status into ``status``; ``{}`` when the
    API server would store the same thing again, so an unchanged batch costs no write.

    Top-level fields this version does not know are left as they are (as
    :func:`read_status` ignores them), not deleted.
    """
    known = {f.alias or n for n, f in BatchStatus.model_fields.items()}
    old = {k: v for k, v in (stored or {}).items() if k in known}
    return merge_patch.diff(old, status_document(status))


def _condition(
    status: BatchStatus, now: datetime, type_: str, ok: bool, reason: str, message: str = ""
) -> BatchStatus:
    cond = Condition(
        type=type_,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        observed_generation=status.observed_generation,
    )
    return status.model_copy(update={"conditions": set_condition(status.conditions, cond, now)})


def _changed(before: BatchStatus, after: BatchStatus, type_: str) -> bool:
    old = {c.type: (c.status, c.reason, c.message) for c in before.conditions}
    new = {c.type: (c.status, c.reason, c.message) for c in after.conditions}
    return old.get(type_) != new.get(type_)


def batch_prefect(
    batch: SierraBatch,
    namespace: str,
    uid: str,
    api_url: str,
    api_key: str | None = None,
    submit_concurrency: int = 1,
) -> PrefectBatch:
    """The batch's pool, queue and deployment on its Prefect server."""
    spec = batch.spec
    return PrefectBatch(
        api_url=api_url,
        api_key=api_key,
        batch_id=uid,
        pool=spec.prefect.work_pool or names.cluster_pool(namespace, batch.metadata.name),
        queue=spec.prefect.work_queue or names.DEFAULT_QUEUE,
        pool_type="kubernetes",
        # Pods at once: with runsPerPod, each pod executes several runs at a time.
        concurrency_limit=pod_shape(spec.execution.parallelism, spec.execution.runs_per_pod).pods,
        submit_concurrency=submit_concurrency,
    )


def _is_true(status: BatchStatus, type_: str) -> bool:
    return any(c.type == type_ and c.status == "True" for c in status.conditions)


def api_url_of(batch: SierraBatch, settings: OperatorSettings) -> str | None:
    """The batch's Prefect API: its own, else the operator's default."""
    return batch.spec.prefect.api_url or settings.prefect_api_url


def _blocked(
    status: BatchStatus,
    now: datetime,
    type_: str,
    reason: str,
    message: str,
    phase: BatchPhase,
    summary: str | None = None,
) -> Outcome:
    """Stop here: condition ``type_`` False, the phase and summary set, a Warning Event
    when the condition changed (not on every reconcile)."""
    new = _condition(status, now, type_, False, reason, message)
    new = new.model_copy(update={"phase": phase, "message": summary or message})
    events = [("Warning", reason, new.message)] if _changed(status, new, type_) else []
    return Outcome(new, events)


async def reconcile(
    body: Mapping[str, Any],
    settings: OperatorSettings,
    kube_api: ApiClient,
    now: datetime,
    cache: dict[tuple[str, str, str], PrefectBatch] | None = None,
    images: ImageStage | None = None,
    clients: PrefectClients | None = None,
) -> Outcome:
    """Bring one batch one step closer to done; returns the status to store.

    ``cache`` keeps each batch's :class:`PrefectBatch` between reconciles so flow runs
    already final are not read again (an optimisation only: an empty cache is correct).
    ``images`` keeps builds in flight between reconciles (one per operator). ``clients``
    are the operator's open Prefect clients, shared by all batches (None: one per call).
    """
    meta = body.get("metadata", {})
    previous = read_status(body.get("status"))
    status = previous.model_copy(update={"observed_generation": meta.get("generation")})
    try:
        batch = _validated(body, status, now)
        status = _condition(status, now, "Valid", True, "Valid")
        if previous.phase in TERMINAL_PHASES and _is_true(previous, "Complete"):
            # Final: workers were scaled to 0 in the reconcile that reached this phase (and
            # the phase was only stored after that succeeded). A finished batch is not
            # restarted; one that failed validation is retried once its spec is fixed. The
            # new generation is recorded as seen, so the timer's filter turns it off again.
            return Outcome(
                previous.model_copy(update={"observed_generation": meta.get("generation")})
            )
        ctx = _Batch(
            batch,
            BatchRef(batch.metadata.name, meta["namespace"], meta["uid"]),
            meta.get("generation"),
            previous,
            settings,
            kube_api,
            now,
        )
        images = images or ImageStage(settings.docker_host)
        return await _stages(ctx, status, cache, images, clients)
    except _Stop as stop:
        return stop.outcome


def _validated(body: Mapping[str, Any], status: BatchStatus, now: datetime) -> SierraBatch:
    """The parsed batch, or a stop with ``Valid=False`` naming the field."""

    def invalid(reason: str, message: str) -> _Stop:
        return _Stop(_blocked(status, now, "Valid", reason, message, BatchPhase.FAILED))

    try:
        batch = parse_batch(stored_batch(body))
    except SpecError as exc:
        raise invalid("InvalidSpec", str(exc)) from None
    if batch.spec.image is None:
        raise invalid(
            "InvalidSpec",
            "spec.image: required in the cluster (the image every run pod uses); add "
            "spec.image.repository and spec.image.tag",
        )
    if batch.spec.sierra is not None:
        raise invalid(
            "NotSupported",
            "spec.sierra: running SIERRA stage 1 is not supported by the operator yet; run "
            "`sierra-cli ... --pipeline 1` with the same sierra-root and set "
            "spec.commandsFile to the batch's commands.txt",
        )
    return batch


async def _stages(
    ctx: _Batch,
    status: BatchStatus,
    cache: dict[tuple[str, str, str], PrefectBatch] | None,
    images: ImageStage,
    clients: PrefectClients | None,
) -> Outcome:
    api_url = _api_url(ctx, status)
    status, image = await _image(ctx, status, images)
    prefect = await _prefect(ctx, status, api_url, cache)
    prefect.clients = clients
    if ctx.previous.phase in (BatchPhase.PENDING, BatchPhase.BUILDING):
        status = status.model_copy(
            update={"phase": BatchPhase.PROVISIONING, "work_pool": prefect.pool}
        )
    status = await _children(ctx, status, prefect, api_url)
    try:
        status = await _pool(ctx, status, prefect, image, api_url)
        status, plan, batch_root = await _plan(ctx, status, prefect)
        outcome = await _advance(ctx, status, prefect, plan, batch_root)
        await _scale_for_suspend(ctx, outcome.status)
        return outcome
    except PREFECT_ERRORS as exc:
        raise ctx.stop(
            status,
            "PoolReady",
            "PrefectUnavailable",
            f"Prefect API {api_url} failed: {type(exc).__name__}: {exc}; retrying",
            status.phase,
        ) from None


async def _scale_for_suspend(ctx: _Batch, status: BatchStatus) -> None:
    """Workers to 0 when the batch becomes Suspended, back to ``execution.workers`` when it
    is resumed: on those transitions only, not every reconcile.

    Also to 0 again when a suspended batch's spec changed: :func:`_children` has just patched
    the worker Deployment to the spec's replicas. The status is stored only after this
    returns, so a failed scale is retried by the next reconcile (same transition again).
    """
    was_suspended = ctx.previous.phase is BatchPhase.SUSPENDED
    if status.phase is BatchPhase.SUSPENDED:
        if was_suspended and ctx.previous.observed_generation == ctx.generation:
            return
        replicas = 0
    elif was_suspended and not ctx.spec.suspend and status.phase not in TERMINAL_PHASES:
        replicas = ctx.spec.execution.workers
    else:
        return
    await kube.scale_workers(
        ctx.kube_api, ctx.ref.namespace, names.worker_name(ctx.ref.name), replicas
    )


def _api_url(ctx: _Batch, status: BatchStatus) -> str:
    api_url = api_url_of(ctx.batch, ctx.settings)
    if not api_url:
        raise ctx.stop(
            status,
            "PoolReady",
            "NoPrefectApiUrl",
            "no Prefect API: set spec.prefect.apiUrl, or SIERRA_OPERATOR_PREFECT_API_URL "
            "(or PREFECT_API_URL) on the operator",
            BatchPhase.PENDING,
            summary="waiting for a Prefect API URL",
        )
    return api_url


async def _image(ctx: _Batch, status: BatchStatus, images: ImageStage) -> tuple[BatchStatus, str]:
    """The image run pods use (built, pushed and pinned first if asked)."""
    got = await images.ensure(
        ImageRequest(
            ctx.ref.uid, ctx.ref.namespace, ctx.image, ctx.previous, ctx.generation, ctx.kube_api
        )
    )
    ctx.events += got.events
    if got.image is None:
        stop = ctx.stop(status, "ImageReady", got.reason, got.message, got.phase)
        if got.reason == "Building":  # progress, not a problem: the milestones are the Events
            stop.outcome.events = list(got.events)
        raise stop
    status = _condition(status, ctx.now, "ImageReady", True, got.reason, got.message)
    return status.model_copy(update={"image": got.status}), got.image


async def _prefect(
    ctx: _Batch,
    status: BatchStatus,
    api_url: str,
    cache: dict[tuple[str, str, str], PrefectBatch] | None,
) -> PrefectBatch:
    """The batch's Prefect objects, with the API key from ``spec.prefect.apiKeySecret`` (or
    the operator's own key for its default server)."""
    prefect = batch_prefect(
        ctx.batch,
        ctx.ref.namespace,
        ctx.ref.uid,
        api_url,
        submit_concurrency=ctx.settings.submit_concurrency,
    )
    if cache is not None:
        fresh = prefect
        prefect = cache.setdefault((ctx.ref.uid, api_url, prefect.pool), prefect)
        prefect.concurrency_limit = fresh.concurrency_limit  # the spec's, if it changed
    ref = ctx.spec.prefect.api_key_secret
    if ref is None:
        prefect.api_key = _default_api_key(ctx.settings, api_url)
    elif not prefect.api_key_fresh():  # read at most once a minute: no GET per reconcile
        key = await _secret_api_key(ctx.kube_api, ctx.ref.namespace, ref)
        if key is None:
            raise ctx.stop(
                status,
                "PoolReady",
                "PrefectApiKeyMissing",
                f"spec.prefect.apiKeySecret: Secret {ref.name!r} with key {ref.key!r} not found "
                f"in namespace {ctx.ref.namespace}; create it: kubectl create secret generic "
                f"{ref.name} --from-literal={ref.key}=<api key>",
                BatchPhase.PENDING,
            )
        prefect.set_api_key(key)
    return prefect


def _default_api_key(settings: OperatorSettings, api_url: str) -> str | None:
    """The operator's own key (PREFECT_API_KEY), for its own default server only."""
    return settings.prefect_api_key if api_url == settings.prefect_api_url else None


async def _secret_api_key(kube_api: ApiClient, namespace: str, ref: SecretKeyRef) -> str | None:
    """The key ``spec.prefect.apiKeySecret`` names, or None if the Secret or key is missing."""
    data = await kube.read_secret(kube_api, namespace, ref.name)
    if data is None or ref.key not in data:
        return None
    return data[ref.key].decode().strip()


async def _children(
    ctx: _Batch, status: BatchStatus, prefect: PrefectBatch, api_url: str
) -> BatchStatus:
    """PVC, worker RBAC and Deployment; checked (GET each) only when the spec is new or
    changed, so the tick rate costs Prefect reads only."""
    if ctx.previous.observed_generation != ctx.generation or not _is_true(
        ctx.previous, "StorageReady"
    ):
        worker = WorkerConfig(prefect.pool, api_url, ctx.settings.worker_image)
        # A changed spec reaches the worker Deployment (Prefect URL, replicas); the other
        # children are the same for any spec, and a PVC's spec cannot change.
        changed = ctx.previous.observed_generation not in (None, ctx.generation)
        created = [
            f"{manifest['kind']}/{manifest['metadata']['name']}"
            for manifest in render_children(ctx.ref, ctx.spec, worker)
            if await kube.ensure(
                ctx.kube_api, manifest, update=changed and manifest["kind"] == "Deployment"
            )
        ]
        if created:
            ctx.events.append(("Normal", "Created", "created " + ", ".join(created)))
    root = ctx.spec.sierra_root
    return _condition(
        status,
        ctx.now,
        "StorageReady",
        True,
        "Adopted" if root.claim_name is not None else "Created",
        f"sierra-root is PVC {claim_name(ctx.ref, ctx.spec)} mounted at {root.mount_path}",
    )


async def _pool(
    ctx: _Batch, status: BatchStatus, prefect: PrefectBatch, image: str, api_url: str
) -> BatchStatus:
    """Work pool, queue and deployment once; the job template and concurrency limit again
    when the image or the spec changed (resources, parallelism: the pool's limit is the
    bound a worker enforces, so a raised parallelism must reach it)."""
    image_changed = ctx.previous.image != status.image
    spec_changed = ctx.previous.observed_generation not in (None, ctx.generation)
    if not _is_true(ctx.previous, "PoolReady") or image_changed or spec_changed:
        template = fixed(
            render_base_job_template(
                default_kubernetes_template(),
                ctx.spec,
                image=image,
                namespace=ctx.ref.namespace,
                service_account=names.worker_name(ctx.ref.name),
                claim_name=claim_name(ctx.ref, ctx.spec),
            )
        )
        try:
            existing = await prefect.ensure_pool(template)
        except PoolConflict as exc:
            # Not fatal: fixing spec.prefect.workPool (or deleting the stale pool) recovers.
            raise ctx.stop(
                status, "PoolReady", "PoolNameTaken", str(exc), BatchPhase.PENDING
            ) from None
        # An existing pool gets the template and limit of this spec and image whenever they
        # differ, also when PoolReady is False: a reconcile that saw the change and then
        # failed (Prefect away) must not leave the pool as it was for good. Runs not yet
        # started use them.
        updated = existing is not None and await prefect.update_pool(template, existing)
        ready = _is_true(ctx.previous, "PoolReady")
        if ready and image_changed:
            ctx.events.append(("Normal", "ImageChanged", f"new runs use {image}"))
        elif updated:
            ctx.events.append(
                (
                    "Normal",
                    "PoolUpdated",
                    f"work pool {prefect.pool}: at most {prefect.concurrency_limit} pods at "
                    "once, job template from the spec",
                )
            )
        if not ready:
            await prefect.ensure_deployment(ctx.spec.sierra_root.mount_path)
            ctx.events.append(("Normal", "PoolReady", f"work pool {prefect.pool} on {api_url}"))
    status = _condition(status, ctx.now, "PoolReady", True, "Created", f"work pool {prefect.pool}")
    return status.model_copy(update={"work_pool": prefect.pool})


async def _plan(
    ctx: _Batch, status: BatchStatus, prefect: PrefectBatch
) -> tuple[BatchStatus, Plan, str]:
    """The experiments and the batch root: inline ones at once; ``spec.commandsFile`` read by
    a planning flow run in a pod that mounts sierra-root, its plan published as an artifact.

    The key of the plan the batch runs is kept in status, so a restarted operator re-reads
    that plan; a failed planning is retried when the spec changes (a new key).
    """
    spec = ctx.spec
    mount = spec.sierra_root.mount_path
    if spec.experiments is not None:
        root = f"{mount.rstrip('/')}/{ctx.ref.name}"
        return status, plan_from_experiments(spec.experiments), root
    assert spec.commands_file is not None  # exactly one source, and not spec.sierra
    key = names.plan_key(spec.commands_file, ctx.generation, ctx.previous.plan_key)
    failed = next((c for c in ctx.previous.conditions if c.type == "Planned"), None)
    if failed is not None and failed.reason == "PlanFailed" and key != ctx.previous.plan_key:
        if failed.observed_generation == ctx.generation:  # same spec: do not plan again
            raise ctx.stop(status, "Planned", "PlanFailed", failed.message, BatchPhase.FAILED)
    text = prefect.plans.get(key)
    if text is None:
        run = await prefect.plan(mount, spec.commands_file, key)
        if run.state == "failed":
            raise ctx.stop(
                status,
                "Planned",
                "PlanFailed",
                f"planning flow run {run.id} failed: {run.message}; fix spec.commandsFile "
                "(or the files under sierra-root) and change the spec to plan again",
                BatchPhase.FAILED,
            )
        if run.state == "pending" or run.text is None:
            stop = ctx.stop(
                status,
                "Planned",
                "Planning",
                f"reading {spec.commands_file} in flow run {run.id}",
                BatchPhase.PROVISIONING,
            )
            stop.outcome.events = list(ctx.events)  # progress, not a warning
            raise stop
        text = prefect.plans[key] = run.text
    try:
        plan, root = plan_from_json(text)
    except PlanError as exc:
        raise ctx.stop(status, "Planned", "PlanFailed", str(exc), BatchPhase.FAILED) from None
    if ctx.previous.plan_key != key:
        ctx.events.append(
            ("Normal", "Planned", f"{len(plan.experiments)} experiments, {plan.total_runs} runs")
        )
    status = _condition(
        status,
        ctx.now,
        "Planned",
        True,
        "Planned",
        f"{len(plan.experiments)} experiments, {plan.total_runs} runs from {spec.commands_file}",
    )
    return status.model_copy(update={"plan_key": key}), plan, root


async def _advance(
    ctx: _Batch, status: BatchStatus, prefect: PrefectBatch, plan: Plan, batch_root: str
) -> Outcome:
    """Observe the runs, let the state machine decide, submit what it asks for; then hold
    the wave that comes next, if any, so it starts with one request (runs/held.py)."""
    spec = ctx.spec
    await held_waves.load(prefect)  # once per operator process: which waves are held
    observed = await prefect.observe()
    decision = decide(
        spec.execution,
        plan,
        observed,
        status,
        ctx.now,
        suspend=spec.suspend,
        generation=ctx.generation,
    )
    parameters = {
        "batch_id": ctx.ref.uid,
        "batch_root": batch_root,
        "workdir": spec.sierra_root.mount_path,
        "timeout_seconds": spec.execution.run_timeout_seconds,
        # SIERRA batches: nothing of ours under exp-outputs/
        "run_output": spec.experiments is not None,
    }
    held: list[str] = []
    for action in decision.actions:
        waiting = await _previous_attempts_left(ctx, prefect, action)
        if waiting:
            # Decided again next reconcile, once they are gone; said, not silent.
            held.append(f"{action.experiment}: retry waits until the Job(s) of {waiting} are gone")
            continue
        shape = pod_shape(spec.execution.parallelism, spec.execution.runs_per_pod)
        if not await held_waves.release(prefect, action, ctx.generation):
            await prefect.submit_each(
                action, parameters, spec.execution.runs_per_pod, in_pod=shape.in_pod
            )
        ctx.events.append(
            (
                "Normal",
                "ExperimentStarted" if action.runs[0].attempt == 1 else "RunsRetried",
                f"{action.experiment}: submitted {len(action.runs)} run(s)",
            )
        )
    status = decision.status
    if held:
        status = status.model_copy(update={"message": "; ".join(held)})
    ctx.events += failure_events(ctx.previous, status)
    if status.phase in TERMINAL_PHASES:
        await held_waves.withdraw(prefect)
        await kube.scale_workers(
            ctx.kube_api, ctx.ref.namespace, names.worker_name(ctx.ref.name), 0
        )
        kind = "Normal" if status.phase is BatchPhase.SUCCEEDED else "Warning"
        ctx.events.append((kind, status.phase.value, status.message))
    elif not decision.actions and not spec.suspend:
        await _hold_next(ctx, prefect, plan, observed, status, parameters)
    return Outcome(status, ctx.events)


async def _hold_next(
    ctx: _Batch,
    prefect: PrefectBatch,
    plan: Plan,
    observed: Mapping[RunKey, RunObservation],
    status: BatchStatus,
    parameters: dict[str, Any],
) -> None:
    """Create the wave that comes next, held (runs/held.py), while the current one executes.

    Only for a batch whose workers poll every queue of its pool (asked once per operator
    process: an older version's workers never see a hold queue). An optimisation only: a
    hold that fails is logged and the wave is submitted as usual when decided."""
    execution = ctx.spec.execution
    wave = next_wave(execution, plan, observed, status, ctx.now)
    if wave is None:
        return
    shape = pod_shape(execution.parallelism, execution.runs_per_pod)
    try:
        if prefect.holds_allowed is None:
            prefect.holds_allowed = await kube.workers_poll_every_queue(
                ctx.kube_api, ctx.ref.namespace, names.worker_name(ctx.ref.name)
            )
        if prefect.holds_allowed:
            await held_waves.hold(
                prefect, wave, parameters, execution.runs_per_pod, shape.in_pod, ctx.generation
            )
    except Exception as exc:  # an optimisation: never what fails a reconcile
        log.warning("batch %s: could not hold %s ahead: %s", ctx.ref.uid, wave.experiment, exc)


async def _previous_attempts_left(ctx: _Batch, prefect: PrefectBatch, action: SubmitRuns) -> str:
    """The retried runs whose previous attempt is not stopped for good yet (its Job, and so
    its pod, deleted and confirmed gone), e.g. ``run3 attempt 1``; empty when none: two
    attempts of a run never overlap."""
    left = []
    for run in action.runs:
        previous = prefect.attempt_flow_runs.get((action.experiment, run.index, run.attempt - 1))
        if previous is not None and not await kube.delete_flow_run_jobs(
            ctx.kube_api, ctx.ref.namespace, str(previous)
        ):
            left.append(f"run{run.index} attempt {run.attempt - 1}")
    return ", ".join(left)


MAX_RUN_EVENTS = 10
"""Failed runs that get an Event each; beyond that one Event per tick sums them up."""


def failure_events(previous: BatchStatus, status: BatchStatus) -> list[Event]:
    """Warning Events for runs that failed since ``previous`` (bounded: a batch with 1,000
    failures posts at most :data:`MAX_RUN_EVENTS` + one per reconcile that saw new ones)."""
    new = status.runs.failed - previous.runs.failed
    if new <= 0:
        return []
    seen = {(f.experiment, f.run) for f in previous.failed_runs}
    fresh = [f for f in status.failed_runs if (f.experiment, f.run) not in seen]
    events: list[Event] = []
    budget = max(0, MAX_RUN_EVENTS - previous.runs.failed)
    for run in fresh[:budget]:
        where = f" (stderr: {run.log})" if run.log else ""
        events.append(
            (
                "Warning",
                "RunFailed",
                f"{run.experiment}/run{run.run} attempt {run.attempt} failed: {run.reason}{where}",
            )
        )
    rest = new - len(events)
    if rest > 0:
        events.append(
            (
                "Warning",
                "RunsFailed",
                f"{rest} more run(s) failed ({status.runs.failed} in all); "
                "`kubectl describe` lists the first ones with their reasons",
            )
        )
    return events


async def finalize(
    body: Mapping[str, Any], settings: OperatorSettings, kube_api: ApiClient | None = None
) -> list[Event]:
    """On delete: cancel live runs, delete pool and deployment. Never blocks deletion."""
    meta = body.get("metadata", {})
    try:
        batch = parse_batch(stored_batch(body))
    except SpecError:
        return []  # it never started anything
    api_url = api_url_of(batch, settings)
    if not api_url:
        return []
    api_key = _default_api_key(settings, api_url)
    ref = batch.spec.prefect.api_key_secret
    if ref is not None and kube_api is not None:
        api_key = await _secret_api_key(kube_api, meta["namespace"], ref)
    prefect = batch_prefect(batch, meta["namespace"], meta["uid"], api_url, api_key)
    try:
        left = await prefect.cancel_active(timeout=20)
        await prefect.cleanup()
    except Exception as exc:  # Prefect gone: deletion must still go through
        return [
            (
                "Warning",
                "PrefectCleanupFailed",
                f"could not cancel runs / delete work pool {prefect.pool} on {api_url}: {exc}; "
                "the batch is deleted anyway, delete the pool by hand",
            )
        ]
    message = f"cancelled live runs, deleted work pool {prefect.pool}"
    if left:
        message += f" ({left} run(s) did not confirm cancellation)"
    return [("Normal", "Cleaned", message)]

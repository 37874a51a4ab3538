"""One reconcile of one SierraBatch: parse, provision, observe, decide, act.

Sequencing of adapters only: decisions are :func:`sierra_operator.machine.decide`'s and the
renderers'. Everything is re-derived from the object (spec + status) and what Kubernetes and
Prefect report now, so a restarted operator continues where it was and creates nothing twice
(existing children are kept, flow runs carry idempotency keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes_asyncio.client import ApiClient

from sierra_operator import kube, names
from sierra_operator.job_template import default_kubernetes_template, render_base_job_template
from sierra_operator.machine import decide, set_condition
from sierra_operator.manifests import BatchRef, WorkerConfig, claim_name, render_children
from sierra_operator.model import (
    TERMINAL_PHASES,
    BatchPhase,
    BatchStatus,
    Condition,
    ImageStatus,
    SierraBatch,
    SpecError,
    parse_batch,
)
from sierra_operator.plan import Plan, plan_from_experiments
from sierra_operator.prefect_api import PoolConflict, PrefectBatch
from sierra_operator.settings import OperatorSettings


@dataclass
class Outcome:
    """The status to store and the Events to post (type, reason, message)."""

    status: BatchStatus
    events: list[tuple[str, str, str]] = field(default_factory=list)


def read_status(raw: Mapping[str, Any] | None) -> BatchStatus:
    """The stored status; fields this version does not know are ignored, not fatal."""
    known = {f.alias or n for n, f in BatchStatus.model_fields.items()}
    try:
        return BatchStatus.model_validate({k: v for k, v in (raw or {}).items() if k in known})
    except ValueError:
        return BatchStatus()


def status_patch(status: BatchStatus) -> dict[str, Any]:
    """The status as a JSON merge patch body (absent fields become null: removed)."""
    return status.model_dump(mode="json", by_alias=True)


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


def batch_prefect(batch: SierraBatch, namespace: str, uid: str, api_url: str) -> PrefectBatch:
    """The batch's pool, queue and deployment on its Prefect server."""
    spec = batch.spec
    return PrefectBatch(
        api_url=api_url,
        batch_id=uid,
        pool=spec.prefect.work_pool or names.cluster_pool(namespace, batch.metadata.name),
        queue=spec.prefect.work_queue or names.DEFAULT_QUEUE,
        pool_type="kubernetes",
        concurrency_limit=spec.execution.parallelism,
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
) -> Outcome:
    """Bring one batch one step closer to done; returns the status to store.

    ``cache`` keeps each batch's :class:`PrefectBatch` between reconciles so flow runs
    already final are not read again (an optimisation only: an empty cache is correct).
    """
    meta = body.get("metadata", {})
    namespace, uid = meta["namespace"], meta["uid"]
    previous = read_status(body.get("status"))
    status = previous.model_copy(update={"observed_generation": meta.get("generation")})
    try:
        batch = parse_batch(dict(body))
    except SpecError as exc:
        return _blocked(status, now, "Valid", "InvalidSpec", str(exc), BatchPhase.FAILED)
    spec = batch.spec
    if spec.image is None:
        return _blocked(
            status,
            now,
            "Valid",
            "InvalidSpec",
            "spec.image: required in the cluster (the image every run pod uses); add "
            "spec.image.repository and spec.image.tag",
            BatchPhase.FAILED,
        )
    if spec.experiments is None:
        return _blocked(
            status,
            now,
            "Valid",
            "NotSupported",
            "spec.commandsFile and spec.sierra are not supported by the operator yet; use "
            "inline spec.experiments, or `sierra-operator local` for SIERRA commands files",
            BatchPhase.FAILED,
        )
    status = _condition(status, now, "Valid", True, "Valid")
    if previous.phase in TERMINAL_PHASES and _is_true(previous, "Complete"):
        # Final: workers were scaled to 0 in the reconcile that reached this phase (and the
        # phase was only stored after that succeeded). A finished batch is not restarted;
        # one that failed validation is retried once its spec is fixed.
        return Outcome(previous)
    plan: Plan = plan_from_experiments(spec.experiments)

    api_url = api_url_of(batch, settings)
    if not api_url:
        return _blocked(
            status,
            now,
            "PoolReady",
            "NoPrefectApiUrl",
            "no Prefect API: set spec.prefect.apiUrl, or SIERRA_OPERATOR_PREFECT_API_URL "
            "(or PREFECT_API_URL) on the operator",
            BatchPhase.PENDING,
            summary="waiting for a Prefect API URL",
        )

    ref = BatchRef(batch.metadata.name, namespace, uid)
    prefect = batch_prefect(batch, namespace, uid, api_url)
    if cache is not None:
        prefect = cache.setdefault((uid, api_url, prefect.pool), prefect)
    image = f"{spec.image.repository}:{spec.image.tag}"
    worker = names.worker_name(ref.name)

    events: list[tuple[str, str, str]] = []
    if previous.phase is BatchPhase.PENDING:
        status = status.model_copy(
            update={"phase": BatchPhase.PROVISIONING, "work_pool": prefect.pool}
        )
    # Children are checked (GET each) when the spec is new or changed, not on every tick:
    # the tick rate then costs Prefect reads only.
    if previous.observed_generation != meta.get("generation") or not _is_true(
        previous, "StorageReady"
    ):
        worker_config = WorkerConfig(prefect.pool, prefect.queue, api_url, settings.worker_image)
        created = [
            f"{manifest['kind']}/{manifest['metadata']['name']}"
            for manifest in render_children(ref, spec, worker_config)
            if await kube.ensure(kube_api, manifest)
        ]
        if created:
            events.append(("Normal", "Created", "created " + ", ".join(created)))
    claim = claim_name(ref, spec)
    adopted = spec.sierra_root.claim_name is not None
    status = _condition(
        status,
        now,
        "StorageReady",
        True,
        "Adopted" if adopted else "Created",
        f"sierra-root is PVC {claim} mounted at {spec.sierra_root.mount_path}",
    )

    if not _is_true(previous, "PoolReady"):
        template = render_base_job_template(
            default_kubernetes_template(),
            spec,
            image=image,
            namespace=namespace,
            service_account=worker,
            claim_name=claim,
        )
        try:
            await prefect.ensure_pool(template)
        except PoolConflict as exc:
            # Not fatal: fixing spec.prefect.workPool (or deleting the stale pool) recovers.
            return _blocked(status, now, "PoolReady", "PoolNameTaken", str(exc), BatchPhase.PENDING)
        await prefect.ensure_deployment(spec.sierra_root.mount_path)
        events.append(("Normal", "PoolReady", f"work pool {prefect.pool} on {api_url}"))
    status = _condition(status, now, "PoolReady", True, "Created", f"work pool {prefect.pool}")
    status = status.model_copy(update={"work_pool": prefect.pool, "image": ImageStatus(ref=image)})

    observed = await prefect.observe()
    decision = decide(
        spec.execution,
        plan,
        observed,
        status,
        now,
        suspend=spec.suspend,
        generation=meta.get("generation"),
    )
    batch_root = f"{spec.sierra_root.mount_path.rstrip('/')}/{ref.name}"
    for action in decision.actions:
        await prefect.submit_each(
            action,
            {
                "batch_id": uid,
                "batch_root": batch_root,
                "workdir": spec.sierra_root.mount_path,
                "timeout_seconds": spec.execution.run_timeout_seconds,
            },
        )
        events.append(
            (
                "Normal",
                "ExperimentStarted",
                f"{action.experiment}: submitted {len(action.runs)} run(s)",
            )
        )
    status = decision.status
    if status.phase in TERMINAL_PHASES:
        await kube.scale_workers(kube_api, namespace, worker, 0)
        kind = "Normal" if status.phase is BatchPhase.SUCCEEDED else "Warning"
        events.append((kind, status.phase.value, status.message))
    return Outcome(status, events)


async def finalize(
    body: Mapping[str, Any], settings: OperatorSettings
) -> list[tuple[str, str, str]]:
    """On delete: cancel live runs, delete pool and deployment. Never blocks deletion."""
    meta = body.get("metadata", {})
    try:
        batch = parse_batch(dict(body))
    except SpecError:
        return []  # it never started anything
    api_url = api_url_of(batch, settings)
    if not api_url:
        return []
    prefect = batch_prefect(batch, meta["namespace"], meta["uid"], api_url)
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

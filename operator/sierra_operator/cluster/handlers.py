"""kopf handlers: thin wiring from the Kubernetes watch to :mod:`.reconciler`.

Run with ``sierra-operator run`` (or ``kopf run -m sierra_operator.cluster.handlers``).
Progress and diff-base live in annotations, so the status subresource holds only the batch's status.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes_asyncio import client, config

from sierra_operator.cluster.crd import PLURAL
from sierra_operator.cluster.image_stage import ImageStage
from sierra_operator.cluster.reconciler import finalize, reconcile, status_patch
from sierra_operator.cluster.settings import OperatorSettings
from sierra_operator.core.idle import FinalWrites, is_final, needs_reconcile
from sierra_operator.core.model import GROUP, VERSION
from sierra_operator.runs.clients import PrefectClients

SETTINGS = OperatorSettings.from_env()
ANNOTATION_PREFIX = GROUP
FINALIZER = f"{GROUP}/finalizer"
WATCH_SECONDS = 300


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf storage in annotations, our finalizer, and one Kubernetes client for all batches."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.posting.level = logging.WARNING
    # A watch stream that a load balancer silently drops would otherwise hang forever (kopf's
    # default): end each stream server-side, and give up on a silent one a bit later.
    settings.watching.server_timeout = WATCH_SECONDS
    settings.watching.client_timeout = WATCH_SECONDS + 30
    settings.watching.connect_timeout = 60
    logging.getLogger().setLevel(SETTINGS.log_level)
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config()
    memo.kube_api = client.ApiClient()
    memo.prefect_batches = {}
    # One submit gate per shared client, across batches (see PrefectClients.submit_gate).
    memo.prefect_clients = PrefectClients(SETTINGS.submit_concurrency)
    memo.images = ImageStage(SETTINGS.docker_host)
    memo.final_writes = FinalWrites()


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Close the Kubernetes client and the Prefect clients."""
    if getattr(memo, "kube_api", None) is not None:
        await memo.kube_api.close()
    if getattr(memo, "prefect_clients", None) is not None:
        await memo.prefect_clients.close()


def _post(body: kopf.Body, events: list[tuple[str, str, str]]) -> None:
    for type_, reason, message in events:
        kopf.event(body, type=type_, reason=reason, message=message)


def _needs_reconcile(body: kopf.Body, **_: Any) -> bool:
    """kopf's ``when=`` filter: a finished or idle suspended batch gets no timer at all."""
    return needs_reconcile(body)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=SETTINGS.reconcile_seconds,
    # On a fixed grid, not interval after the last reconcile ended: a reconcile that waits
    # on a busy Prefect server (reads, a release) would otherwise stretch the period, and
    # with it the time until a run's end is seen (advance latency).
    sharp=True,
    initial_delay=0.1,
    when=_needs_reconcile,
)
async def tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile one batch; a status patch only when the stored status would change."""
    if memo.final_writes.pending(body, time.monotonic()):
        return  # its final status is written; this copy of the batch is older than that
    try:
        outcome = await reconcile(
            body,
            SETTINGS,
            memo.kube_api,
            datetime.now(UTC),
            memo.prefect_batches,
            memo.images,
            memo.prefect_clients,
        )
    except (OSError, client.exceptions.ApiException) as exc:
        raise kopf.TemporaryError(f"retrying: {exc}", delay=5) from exc
    change = status_patch(body.get("status"), outcome.status)
    if change:
        patch.status.update(change)
        if is_final(outcome.status.model_dump(mode="json", by_alias=True)):
            memo.final_writes.wrote(body, time.monotonic())
    _post(body, outcome.events)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Cancel runs and remove the Prefect pool; children go by ownerReference."""
    _post(body, await finalize(body, SETTINGS, memo.kube_api))
    uid = body.get("metadata", {}).get("uid")
    memo.images.forget(uid)
    memo.final_writes.forget(str(uid))
    for key in [k for k in memo.prefect_batches if k[0] == uid]:
        del memo.prefect_batches[key]

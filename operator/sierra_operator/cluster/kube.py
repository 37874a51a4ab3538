"""Kubernetes adapter: create what is missing, scale workers; no decisions.

Every call here is one the chart's ClusterRole must allow (listed in
:data:`sierra_operator.cluster.rbac.OPERATOR_CALLS`): get + create for each child kind, patch on the
worker Deployment, get on Secrets the batch names.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable
from typing import Any, TypeVar

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from sierra_operator.cluster.manifests import Manifest
from sierra_operator.core import names

T = TypeVar("T")


def _api_for(api: client.ApiClient, kind: str) -> tuple[Any, str]:
    core, rbac, apps = (
        client.CoreV1Api(api),
        client.RbacAuthorizationV1Api(api),
        client.AppsV1Api(api),
    )
    return {
        "PersistentVolumeClaim": (core, "persistent_volume_claim"),
        "ServiceAccount": (core, "service_account"),
        "Role": (rbac, "role"),
        "RoleBinding": (rbac, "role_binding"),
        "Deployment": (apps, "deployment"),
    }[kind]


async def ensure(api: client.ApiClient, manifest: Manifest, update: bool = False) -> bool:
    """Create ``manifest`` unless an object of that name exists; True if it was created.

    ``update``: an existing object is patched to the manifest (the worker Deployment after a
    spec change: its Prefect URL, image or replicas may have changed).
    """
    target, suffix = _api_for(api, manifest["kind"])
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        await getattr(target, f"read_namespaced_{suffix}")(name, namespace)
        if update:
            await getattr(target, f"patch_namespaced_{suffix}")(name, namespace, manifest)
        return False
    except ApiException as exc:
        if exc.status != 404:
            raise
    try:
        await getattr(target, f"create_namespaced_{suffix}")(namespace, manifest)
    except ApiException as exc:
        if exc.status != 409:  # created meanwhile: fine
            raise
        return False
    return True


async def _found(read: Awaitable[T]) -> T | None:
    """What ``read`` returns, or None when the API server answers 404 (no such object)."""
    try:
        return await read
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def read_secret(api: client.ApiClient, namespace: str, name: str) -> dict[str, bytes] | None:
    """A Secret's decoded data, or None if there is no such Secret. Never logged."""
    secret = await _found(client.CoreV1Api(api).read_namespaced_secret(name, namespace))
    if secret is None:
        return None
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


async def workers_poll_every_queue(api: client.ApiClient, namespace: str, name: str) -> bool:
    """Whether the worker Deployment ``name`` polls every queue of its pool (rendered by this
    version), so a wave held in a queue of its own is seen once released (runs/held.py).
    False for a Deployment of an older version (started for one queue) or none at all."""
    found = await _found(client.AppsV1Api(api).read_namespaced_deployment(name, namespace))
    if found is None:
        return False
    containers = found.spec.template.spec.containers or []
    return bool(containers) and not any(
        arg == "-q" or arg.startswith(names.WORKER_QUEUE_FLAG)  # also --work-queue=NAME
        for c in containers
        for arg in (c.command or []) + (c.args or [])
    )


async def scale_workers(api: client.ApiClient, namespace: str, name: str, replicas: int) -> None:
    """Set the worker Deployment's replicas (0 when the batch is over)."""
    await client.AppsV1Api(api).patch_namespaced_deployment(
        name, namespace, {"spec": {"replicas": replicas}}
    )


FLOW_RUN_LABEL = "prefect.io/flow-run-id"  # set by Prefect's worker on every Job it creates


async def delete_flow_run_jobs(api: client.ApiClient, namespace: str, flow_run_id: str) -> bool:
    """Delete the Jobs of one flow run, pods first (Foreground); True once none is left.

    Before a run's next attempt is submitted, the previous attempt's Job must be gone, so the
    two never overlap (a Job whose pod was deleted may otherwise start a replacement pod).
    """
    jobs = client.BatchV1Api(api)
    found = await jobs.list_namespaced_job(
        namespace, label_selector=f"{FLOW_RUN_LABEL}={flow_run_id}"
    )
    left = [j for j in found.items if (j.metadata.labels or {}).get(FLOW_RUN_LABEL) == flow_run_id]
    for job in left:
        if job.metadata.deletion_timestamp is not None:
            continue  # being deleted: its pods go first
        try:
            await jobs.delete_namespaced_job(
                job.metadata.name, namespace, propagation_policy="Foreground"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
    return not left

"""Kubernetes adapter: create what is missing, scale workers; no decisions.

Every call here is one the chart's ClusterRole must allow (listed in
:data:`sierra_operator.rbac.OPERATOR_CALLS`): get + create for each child kind, patch on the
worker Deployment, get on Secrets the batch names.
"""

from __future__ import annotations

import base64
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from sierra_operator.manifests import Manifest


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


async def read_secret(api: client.ApiClient, namespace: str, name: str) -> dict[str, bytes] | None:
    """A Secret's decoded data, or None if there is no such Secret. Never logged."""
    try:
        secret = await client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


async def scale_workers(api: client.ApiClient, namespace: str, name: str, replicas: int) -> None:
    """Set the worker Deployment's replicas (0 when the batch is over)."""
    await client.AppsV1Api(api).patch_namespaced_deployment(
        name, namespace, {"spec": {"replicas": replicas}}
    )

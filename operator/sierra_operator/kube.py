"""Kubernetes adapter: create what is missing, scale workers; no decisions.

Every call here is one the chart's ClusterRole must allow (tested against
:data:`API_CALLS`): get + create for each child kind, patch on the worker Deployment.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from sierra_operator.manifests import Manifest

# (apiGroup, resource, verb) the operator's own code calls (kopf's own needs come on top).
API_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("", "persistentvolumeclaims", "get"),
        ("", "persistentvolumeclaims", "create"),
        ("", "serviceaccounts", "get"),
        ("", "serviceaccounts", "create"),
        ("rbac.authorization.k8s.io", "roles", "get"),
        ("rbac.authorization.k8s.io", "roles", "create"),
        ("rbac.authorization.k8s.io", "rolebindings", "get"),
        ("rbac.authorization.k8s.io", "rolebindings", "create"),
        ("apps", "deployments", "get"),
        ("apps", "deployments", "create"),
        ("apps", "deployments", "patch"),
    }
)


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


async def ensure(api: client.ApiClient, manifest: Manifest) -> bool:
    """Create ``manifest`` unless an object of that name exists; True if it was created."""
    target, suffix = _api_for(api, manifest["kind"])
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        await getattr(target, f"read_namespaced_{suffix}")(name, namespace)
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


async def scale_workers(api: client.ApiClient, namespace: str, name: str, replicas: int) -> None:
    """Set the worker Deployment's replicas (0 when the batch is over)."""
    await client.AppsV1Api(api).patch_namespaced_deployment(
        name, namespace, {"spec": {"replicas": replicas}}
    )

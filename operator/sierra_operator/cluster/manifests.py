"""Kubernetes objects the operator creates for one batch, as plain dicts (pure rendering).

Applying them is :mod:`sierra_operator.cluster.kube`'s business; rendering is here so every field is
unit-tested and the RBAC granted to workers is visible in one place.

Ownership: everything but the PVC is owned by the SierraBatch (ownerReferences), so
Kubernetes garbage-collects it with the batch. The PVC is owned only when
``sierraRoot.deleteWithBatch`` is true: by default the data outlives the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sierra_operator.cluster.rbac import WORKER_RULES
from sierra_operator.core import names
from sierra_operator.core.model import API_VERSION, KIND, SierraBatchSpec

Manifest = dict[str, Any]

WORKER_HEALTH_PORT = 8080
# The image's own non-root user (Dockerfile): its HOME and PREFECT_HOME are writable by it.
RUN_AS_USER = 10001


@dataclass(frozen=True)
class BatchRef:
    """The SierraBatch that owns what is rendered."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        """An ownerReference making Kubernetes delete the object with the batch."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
        }

    def labels(self) -> dict[str, str]:
        """Labels on every object of this batch."""
        return {
            "app.kubernetes.io/managed-by": names.MANAGED_BY,
            "app.kubernetes.io/component": "sierra-batch",
            names.BATCH_LABEL: self.name,
        }

    def metadata(self, name: str, owned: bool = True) -> dict[str, Any]:
        """Metadata of a child object."""
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": self.labels()}
        if owned:
            meta["ownerReferences"] = [self.owner_reference()]
        return meta


@dataclass(frozen=True)
class WorkerConfig:
    """Where a batch's Prefect workers connect and which image they run."""

    pool: str  # every queue of it: the batch's and its held waves'
    api_url: str
    image: str


def claim_name(batch: BatchRef, spec: SierraBatchSpec) -> str:
    """The PVC runs mount: the user's, or the one the operator creates."""
    return spec.sierra_root.claim_name or names.sierra_root_claim(batch.name)


def render_pvc(batch: BatchRef, spec: SierraBatchSpec) -> Manifest | None:
    """The sierra-root PVC to create, or None when the user names an existing claim."""
    root = spec.sierra_root
    if root.claim_name:
        return None
    pvc_spec: dict[str, Any] = {
        "accessModes": list(root.access_modes),
        "resources": {"requests": {"storage": root.size}},
    }
    if root.storage_class_name:
        pvc_spec["storageClassName"] = root.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": batch.metadata(claim_name(batch, spec), owned=root.delete_with_batch),
        "spec": pvc_spec,
    }


def render_service_account(batch: BatchRef) -> Manifest:
    """Identity of the worker pods and of the run pods they create."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": batch.metadata(names.worker_name(batch.name)),
    }


def render_role(batch: BatchRef) -> Manifest:
    """Exactly what the worker and its observer call, in the batch's namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": batch.metadata(names.worker_name(batch.name)),
        "rules": [dict(rule) for rule in WORKER_RULES],
    }


def render_role_binding(batch: BatchRef) -> Manifest:
    """Grant the Role to the worker ServiceAccount."""
    name = names.worker_name(batch.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": batch.metadata(name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": batch.namespace}],
    }


def render_worker_deployment(
    batch: BatchRef, spec: SierraBatchSpec, worker: WorkerConfig
) -> Manifest:
    """Prefect Kubernetes workers for the batch's pool, with health probes."""
    name = names.worker_name(batch.name)
    env: list[dict[str, Any]] = [
        {"name": "PREFECT_API_URL", "value": worker.api_url},
        {"name": "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES", "value": batch.namespace},
        {"name": "PREFECT_WORKER_WEBSERVER_HOST", "value": "0.0.0.0"},
        {"name": "PREFECT_WORKER_WEBSERVER_PORT", "value": str(WORKER_HEALTH_PORT)},
        {"name": "PREFECT_SERVER_ANALYTICS_ENABLED", "value": "false"},
    ]
    key = spec.prefect.api_key_secret
    if key is not None:
        env.append(
            {
                "name": "PREFECT_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": key.name, "key": key.key}},
            }
        )
    probe = {
        "httpGet": {"path": "/health", "port": WORKER_HEALTH_PORT},
        "periodSeconds": 30,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    selector = {names.BATCH_LABEL: batch.name, "app.kubernetes.io/component": "sierra-worker"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": batch.metadata(name),
        "spec": {
            "replicas": spec.execution.workers,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**batch.labels(), **selector}},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_USER},
                    "containers": [
                        {
                            "name": "worker",
                            "image": worker.image,
                            "command": [
                                "prefect",
                                *names.worker_start_args(worker.pool, "kubernetes"),
                                "--with-healthcheck",
                            ],
                            "env": env,
                            "ports": [{"name": "health", "containerPort": WORKER_HEALTH_PORT}],
                            "livenessProbe": {**probe, "initialDelaySeconds": 60},
                            "readinessProbe": {**probe, "initialDelaySeconds": 10},
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "256Mi"},
                                "limits": {"memory": "1Gi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


def render_children(batch: BatchRef, spec: SierraBatchSpec, worker: WorkerConfig) -> list[Manifest]:
    """Everything a batch needs in its namespace, in the order to create it."""
    pvc = render_pvc(batch, spec)
    return [
        *([pvc] if pvc else []),
        render_service_account(batch),
        render_role(batch),
        render_role_binding(batch),
        render_worker_deployment(batch, spec, worker),
    ]

"""Base job template of a batch's Kubernetes work pool (pure: template in, template out).

prefect-kubernetes turns each flow run into a Job from the pool's base job template. There is
no volumes variable, so the sierra-root PVC volume and mount go into ``job_manifest``
itself; the rest (image, namespace, service account, resources, TTL) is set as the
defaults of prefect-kubernetes' variables. The pool gets it with every variable written into
the job configuration (:func:`sierra_operator.runs.pool_template.fixed`: no variables left
for the server to validate per flow run).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from sierra_operator.core.model import SierraBatchSpec

SIERRA_ROOT_VOLUME = "sierra-root"
FINISHED_JOB_TTL_SECONDS = 3600
SIGTERM_BEHAVIOR = "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"


def default_kubernetes_template() -> dict[str, Any]:
    """prefect-kubernetes' default base job template (pinned copy, checked by a test).

    A copy, because importing ``prefect_kubernetes.worker`` registers its kopf observer in
    kopf's global registry, which would then run inside our operator process.
    """
    text = resources.files("sierra_operator").joinpath("data/kubernetes_base_job_template.json")
    template: dict[str, Any] = json.loads(text.read_text())
    return template


def _set_default(variables: dict[str, Any], name: str, value: Any) -> None:
    variables["properties"].setdefault(name, {})["default"] = value


def render_base_job_template(
    default_template: dict[str, Any],
    spec: SierraBatchSpec,
    *,
    image: str,
    namespace: str,
    service_account: str,
    claim_name: str,
) -> dict[str, Any]:
    """The pool template: run pods mount sierra-root at the same path as SIERRA used."""
    template = copy.deepcopy(default_template)
    variables = template["variables"]
    _set_default(variables, "image", image)
    _set_default(variables, "namespace", namespace)
    _set_default(variables, "service_account_name", service_account)
    _set_default(variables, "image_pull_policy", "IfNotPresent")
    _set_default(variables, "finished_job_ttl", FINISHED_JOB_TTL_SECONDS)
    _set_default(variables, "backoff_limit", 0)  # retries are the batch's, not the Job's
    _set_default(variables, "stream_output", False)
    # A SIGTERMed run pod (eviction, drain, `kubectl delete pod`) must not send its flow run
    # back to the queue (the worker's default with backoffLimit 0: "reschedule"), which would
    # execute the same attempt again; it crashes, and the operator retries it as a new attempt.
    _set_default(variables, "env", {SIGTERM_BEHAVIOR: "none"})
    resources = spec.execution.resources
    for kind, values in (("request", resources.requests), ("limit", resources.limits)):
        for resource in ("cpu", "memory"):
            if resource in values:
                _set_default(variables, f"{resource}_{kind}", values[resource])

    job = template["job_configuration"]["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    pod["volumes"] = [
        {
            "name": SIERRA_ROOT_VOLUME,
            "persistentVolumeClaim": {"claimName": claim_name},
        }
    ]
    container = pod["containers"][0]
    container["volumeMounts"] = [
        {"name": SIERRA_ROOT_VOLUME, "mountPath": spec.sierra_root.mount_path}
    ]
    if spec.image is not None and spec.image.push_secret:
        pod["imagePullSecrets"] = [{"name": spec.image.push_secret}]
    # Each attempt executes at most once: the Job never replaces its pod. By default a deleted
    # pod is replaced even with backoffLimit 0 (deleted pods are not failures); with
    # podReplacementPolicy Failed the Job waits for the pod to end and then fails. The
    # podFailurePolicy also fails it on a disruption (eviction, preemption). Kubernetes >= 1.29.
    job["spec"]["podReplacementPolicy"] = "Failed"
    job["spec"]["podFailurePolicy"] = {
        "rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    }
    if spec.execution.run_timeout_seconds is not None:
        # Kubernetes ends a run pod that outlives the timeout even if the flow hangs.
        job["spec"]["activeDeadlineSeconds"] = spec.execution.run_timeout_seconds + 300
    return template

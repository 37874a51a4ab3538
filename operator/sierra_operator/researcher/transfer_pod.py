"""The short-lived pod through which a researcher's machine reads and writes a batch's PVC.

It mounts the batch's sierra-root claim at the batch's ``mountPath`` (the same absolute path
as ``--sierra-root`` on the researcher's machine, so SIERRA's absolute paths hold on both
sides), runs the batch's image idle, and is used only through ``pods/exec``. It is deleted
when the transfer ends, also after an error, Ctrl-C or SIGTERM; if the machine itself dies first,
``activeDeadlineSeconds`` ends it within a day and ``kubectl delete pod -l
app.kubernetes.io/component=transfer`` removes it at once.

Why the batch's image: it is the one image known to be pullable in the batch's namespace
(with the batch's pull secret), and it has ``sh``, GNU ``tar`` and ``cp`` (images build
``FROM`` the sierra-operator image, a Debian base). It gets no ServiceAccount token: it
needs no API access.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sierra_operator.core import names
from sierra_operator.researcher.kubeconfig import ClusterError, forbidden, one_line
from sierra_operator.researcher.pod_exec import ExecOutcome, run_in_pod

log = logging.getLogger("sierra_operator.transfer")

CONTAINER = "transfer"
VOLUME = "sierra-root"
COMPONENT = "transfer"
IDLE_SECONDS = 86400
IDLE = f"trap 'exit 0' TERM; sleep {IDLE_SECONDS} & wait"
"""The container's main process: idle until deleted (a shell as PID 1 needs the trap to
stop at once on SIGTERM) or a day has passed."""
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
"""What the API server's ``generateName`` uses (no vowels: no words)."""
_BROKEN_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass(frozen=True)
class Target:
    """A batch's PVC as a transfer pod sees it."""

    namespace: str
    batch: str
    claim: str
    mount_path: str
    image: str
    pull_secret: str | None = None


def pod_name(target: Target) -> str:
    """``<batch>-transfer-<5 random chars>``, chosen here rather than by ``generateName``:
    a create whose answer never arrives (Ctrl-C, a timeout) may still have made the pod, and
    only a name known beforehand lets it be deleted."""
    suffix = "".join(secrets.choice(_NAME_CHARS) for _ in range(5))
    return f"{target.batch[:40]}-transfer-{suffix}"


def render_pod(target: Target, name: str) -> dict[str, Any]:
    """The transfer pod (pure): PVC at ``mount_path``, the batch image idle, no token."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 2,
        "activeDeadlineSeconds": IDLE_SECONDS,
        "containers": [
            {
                "name": CONTAINER,
                "image": target.image,
                "command": ["sh", "-c", IDLE],
                "volumeMounts": [{"name": VOLUME, "mountPath": target.mount_path}],
            }
        ],
        "volumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": target.claim}}],
    }
    if target.pull_secret:
        spec["imagePullSecrets"] = [{"name": target.pull_secret}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": names.MANAGED_BY,
                "app.kubernetes.io/component": COMPONENT,
                "sierra.research.io/batch": target.batch[:63],
            },
        },
        "spec": spec,
    }


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why a pod will never become usable, or None while it still may: it ended, or its
    container cannot start (image pull, bad config)."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase in ("Succeeded", "Failed"):
        message = one_line(status.get("message"))
        return f"the pod ended ({phase}{': ' + message if message else ''})"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _BROKEN_WAITING:
            return f"{waiting['reason']}: {one_line(waiting.get('message'))}"
    return None


def is_running(pod: dict[str, Any]) -> bool:
    """The container runs, so commands can be exec'd in it."""
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        "running" in (c.get("state") or {}) for c in status.get("containerStatuses") or []
    )


def pending_reason(pod: dict[str, Any]) -> str:
    """What a pending pod waits for, from its conditions (e.g. an unbound claim)."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "False" and cond.get("message"):
            return f"{cond.get('reason') or cond.get('type')}: {one_line(cond['message'])}"
    return f"phase {(pod.get('status') or {}).get('phase') or 'Pending'}"


async def _check_claim(core: Any, target: Target) -> None:
    """A missing PVC is named before a pod waits for it forever. Reading it needs ``get`` on
    persistentvolumeclaims, which a researcher may lack: then the pod's status tells."""
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await core.read_namespaced_persistent_volume_claim(
            target.claim, target.namespace, _request_timeout=15
        )
    except ApiException as exc:
        if exc.status == 404:
            raise ClusterError(
                f"PersistentVolumeClaim {target.claim} not found in namespace "
                f"{target.namespace}: it holds batch {target.batch}'s sierra-root (the operator "
                "creates it once the batch is reconciled; spec.sierraRoot.claimName names one "
                "that must exist)",
                2,
            ) from None
        if exc.status != 403:
            raise


@asynccontextmanager
async def transfer_pod(api: Any, target: Target, timeout: float = 300.0) -> AsyncIterator[str]:
    """Create the transfer pod, wait until it runs, yield its name; delete it on the way
    out, whatever happened (error, cancellation, Ctrl-C, also while the create was under
    way). A failed delete is an error only when nothing else failed: otherwise it is a
    warning naming the pod, and the first error is the one reported."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    core: Any = client.CoreV1Api(api)  # takes a plain manifest (typed as V1Pod only)
    await _check_claim(core, target)
    name = pod_name(target)
    may_exist = True
    try:
        try:
            await core.create_namespaced_pod(
                target.namespace, render_pod(target, name), _request_timeout=30
            )
        except ApiException as exc:
            may_exist = False  # the API server answered: it made nothing
            if exc.status == 403:
                raise forbidden("create", "pods", target.namespace, "the transfer pod") from None
            raise ClusterError(
                f"creating the transfer pod in namespace {target.namespace} failed: "
                f"{exc.status} {one_line(exc.reason)} {one_line(exc.body)[:300]}"
            ) from None
        await _wait_running(core, api, name, target, timeout)
        yield name
    except BaseException:
        if may_exist:
            try:
                await asyncio.shield(_delete(core, name, target.namespace))
            except Exception as exc:  # the error in flight says what went wrong first
                log.warning("%s", _not_deleted(name, target.namespace, exc))
        raise
    await asyncio.shield(_delete(core, name, target.namespace))


async def _wait_running(core: Any, api: Any, name: str, target: Target, timeout: float) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while True:
        try:
            raw = await core.read_namespaced_pod(name, target.namespace, _request_timeout=15)
        except ApiException as exc:
            if exc.status == 403:
                raise forbidden(
                    "get", "pods", target.namespace, "wait for the transfer pod"
                ) from None
            raise
        pod = api.sanitize_for_serialization(raw)
        if is_running(pod):
            return
        problem = pod_problem(pod)
        if problem is not None:
            raise ClusterError(
                f"transfer pod {target.namespace}/{name} (image {target.image}) cannot run: "
                f"{problem}"
            )
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"transfer pod {target.namespace}/{name} not running after {timeout:.0f}s "
                f"({pending_reason(pod)}); is PVC {target.claim} bound and image "
                f"{target.image} pullable?"
            )
        await asyncio.sleep(0.5)


async def _delete(core: Any, name: str, namespace: str) -> None:
    """Delete the pod now (nothing in it needs a clean shutdown); gone already is fine."""
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await core.delete_namespaced_pod(
            name, namespace, grace_period_seconds=0, _request_timeout=15
        )
    except ApiException as exc:
        if exc.status != 404:
            raise ClusterError(
                _not_deleted(name, namespace, f"{exc.status} {exc.reason}")
            ) from None


def _not_deleted(name: str, namespace: str, why: object) -> str:
    return (
        f"could not delete transfer pod {namespace}/{name} ({one_line(why)[:200]}); delete it "
        f"with kubectl delete pod -n {namespace} {name}"
    )


async def run_script(
    ws_api: Any,
    target: Target,
    pod: str,
    script: str,
    args: list[str],
    *,
    stdout: Callable[[bytes], Awaitable[None]],
    stdin: AsyncIterator[bytes] | None = None,
    stderr: Callable[[bytes], Awaitable[None]] | None = None,
) -> ExecOutcome:
    """Run one of our shell scripts (push, fetch, logs) with ``args`` in the transfer pod's
    container (:func:`~sierra_operator.researcher.pod_exec.run_in_pod` streams it)."""
    return await run_in_pod(
        ws_api,
        target.namespace,
        pod,
        CONTAINER,
        ["sh", "-c", script, "sh", *args],
        stdout=stdout,
        stdin=stdin,
        stderr=stderr,
    )

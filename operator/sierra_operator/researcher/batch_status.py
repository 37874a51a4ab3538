"""`sierra-operator status BATCH`: a researcher's view of one SierraBatch in the cluster.

Split in two so the printing is tested without a cluster: :func:`render` turns the stored
object into plain text lines (never Rich markup: names, reasons and paths are user text), and
:func:`fetch` reads it through the Kubernetes API as kubectl would (the kubeconfig's current
context and namespace, ``KUBECONFIG`` honoured), with the user's own permissions. Every way
the read can fail becomes a :class:`StatusError` whose message says what to do, and whose exit
code tells a script whether the batch is missing (2) or the cluster is not usable (3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sierra_operator.researcher.kubeconfig import (
    EXIT_CLUSTER,
    EXIT_NOT_FOUND,
    ClusterError,
    Connection,
    connect,
    network_errors,
    one_line,
    unreachable,
)

GROUP, VERSION, PLURAL = "sierra.research.io", "v1alpha1", "sierrabatches"

EXIT_SUCCEEDED_OR_ACTIVE = 0
EXIT_FAILED = 1
_COLUMNS = ("EXPERIMENT", "PHASE", "TOTAL", "SUCCEEDED", "FAILED", "RUNNING", "PENDING")
_COUNTS = ("total", "succeeded", "failed", "running", "pending")


StatusError = ClusterError
"""The batch could not be read; ``exit_code`` is 2 (no such batch) or 3 (cluster)."""


@dataclass(frozen=True)
class Fetched:
    """The batch object as the API server stores it, and where it was found."""

    obj: dict[str, Any]
    namespace: str


def _int(value: Any) -> int:
    """A count from status; a missing or odd value shows as 0 rather than crashing a report."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_text = one_line  # one line of user text: a reason may hold stderr's line breaks


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def phase_of(obj: dict[str, Any]) -> str:
    """The batch phase; a batch the operator has not seen yet has no status: Pending."""
    return _text(_status(obj).get("phase")) or "Pending"


def runs_done(obj: dict[str, Any]) -> str:
    """Final runs / total, computed from the counts (runsDone may lag a hand-made status)."""
    runs = _status(obj).get("runs") or {}
    done = _int(runs.get("succeeded")) + _int(runs.get("failed"))
    return f"{done}/{_int(runs.get('total'))}"


def exit_code(obj: dict[str, Any]) -> int:
    """1 only when the batch Failed, so ``status`` can gate a script like ``local`` does;
    a batch still on its way is not an error (0), as is one that Succeeded."""
    return EXIT_FAILED if phase_of(obj) == "Failed" else EXIT_SUCCEEDED_OR_ACTIVE


def progress_line(obj: dict[str, Any]) -> str:
    """One line for ``--watch``: enough to follow a batch without the tables."""
    status = _status(obj)
    runs = status.get("runs") or {}
    line = f"{phase_of(obj)}  runs {runs_done(obj)}"
    if _int(runs.get("failed")):
        line += f" ({_int(runs.get('failed'))} failed)"
    current = _text(status.get("currentExperimentName"))
    if current and phase_of(obj) not in ("Succeeded", "Failed"):
        line += f"  experiment {current}"
    return line


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(obj: dict[str, Any]) -> list[str]:
    """The report as plain lines: phase and message, runs done, one row per experiment, the
    failed runs listed in status with reason and stderr path, and how many more failed than
    are listed (status keeps only the first few)."""
    meta = obj.get("metadata") or {}
    status = _status(obj)
    lines = [f"SierraBatch {_text(meta.get('namespace'))}/{_text(meta.get('name'))}"]
    lines.append(f"phase: {phase_of(obj)}")
    if _text(status.get("message")):
        lines.append(f"message: {_text(status.get('message'))}")
    lines.append(f"runs done: {runs_done(obj)}")
    experiments = [e for e in status.get("experiments") or [] if isinstance(e, dict)]
    if experiments:
        rows = [_COLUMNS] + [
            (_text(e.get("name")), _text(e.get("phase")), *(str(_int(e.get(k))) for k in _COUNTS))
            for e in experiments
        ]
        lines.append("")
        lines.extend(_table(rows))
    failed = [f for f in status.get("failedRuns") or [] if isinstance(f, dict)]
    failed_count = max(_int((status.get("runs") or {}).get("failed")), len(failed))
    if failed:
        lines.append("")
        lines.append(f"failed runs ({failed_count}):")
        for f in failed:
            lines.append(
                f"  {_text(f.get('experiment'))}/run{_int(f.get('run'))} "
                f"(attempt {_int(f.get('attempt')) or 1}): {_text(f.get('reason')) or 'failed'}"
            )
            if _text(f.get("log")):
                lines.append(f"    stderr: {_text(f.get('log'))}")
    if failed_count > len(failed):
        if not failed:
            lines.append("")
            lines.append(f"failed runs ({failed_count}):")
        lines.append(f"  ... and {failed_count - len(failed)} more")
    return lines


def _status_body(body: Any) -> dict[str, Any]:
    """The API server's Status object, if its answer was one (a missing route is plain text)."""
    try:
        doc = json.loads(body) if isinstance(body, str | bytes) else body
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) and doc.get("kind") == "Status" else {}


def api_error(
    status: int, body: Any, name: str, namespace: str, type_served: bool = True
) -> StatusError:
    """Map an API answer to what the user must do. A 404 means a missing batch only if the
    server serves the SierraBatch type (``type_served``, from discovery: the 404 bodies of a
    missing object and of a missing route differ between servers); otherwise the CRD is not
    installed, which no retry or other name fixes."""
    doc = _status_body(body)
    if status == 404:
        if type_served:
            return StatusError(
                f"SierraBatch {name} not found in namespace {namespace} "
                "(kubectl get sierrabatches -n NAMESPACE lists them; -n picks the namespace)",
                EXIT_NOT_FOUND,
            )
        return StatusError(
            "the SierraBatch CRD is not installed in this cluster (no "
            f"{PLURAL}.{GROUP}/{VERSION}): helm install sierra-operator charts/sierra-operator "
            "--namespace sierra-system --create-namespace (see docs/admin.md)",
            EXIT_CLUSTER,
        )
    if status == 403:
        return StatusError(
            f"forbidden: your user cannot get {PLURAL} in namespace {namespace}; ask for get "
            f"on {PLURAL}.{GROUP} there (a Role or ClusterRole bound to you)",
            EXIT_CLUSTER,
        )
    if status == 401:
        return StatusError(
            "unauthorized: the API server refused your kubeconfig's credentials; log in again "
            "or renew them (kubectl get sierrabatches shows the same)",
            EXIT_CLUSTER,
        )
    message = _text(doc.get("message")) or _text(body)[:200]
    return StatusError(
        f"the Kubernetes API server answered {status} reading SierraBatch {name} in "
        f"namespace {namespace}: {message}",
        EXIT_CLUSTER,
        transient=status >= 500 or status == 429,
    )


async def _serves_batches(objects: Any) -> bool:
    """Whether discovery lists sierrabatches in sierra.research.io/v1alpha1 (the CRD is
    installed). Only a 404 of the group version says no: discovery is open to every
    authenticated user, and anything else is no reason to blame the CRD."""
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        found = await objects.get_api_resources(GROUP, VERSION, _request_timeout=15)
    except ApiException as exc:
        return exc.status != 404
    return any(r.name == PLURAL for r in found.resources or [])


async def read_batch(api: Any, name: str, namespace: str) -> dict[str, Any]:
    """The SierraBatch as stored, read with ``api`` (a kubernetes_asyncio ``ApiClient``);
    a refusal becomes a :class:`StatusError` saying what to install or ask for."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    objects = client.CustomObjectsApi(api)
    try:
        obj = await objects.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=15
        )
    except ApiException as exc:
        served = True
        if exc.status == 404:
            served = await _serves_batches(objects)
        raise api_error(int(exc.status or 0), exc.body, name, namespace, served) from None
    return dict(obj)


async def read_with(conn: Connection, name: str) -> dict[str, Any]:
    """:func:`read_batch` over a new client for ``conn`` (an unreachable server named)."""
    from kubernetes_asyncio import client

    async with client.ApiClient(configuration=conn.config) as api:
        try:
            return await read_batch(api, name, conn.namespace)
        except network_errors() as exc:
            raise unreachable(conn, exc) from None


async def fetch(name: str, namespace: str | None, context: str | None) -> Fetched:
    """Read the batch with the kubeconfig's credentials (``context`` or its current one),
    in ``namespace`` or else the context's namespace, else ``default``, as kubectl does."""
    conn = await connect(namespace, context)
    return Fetched(await read_with(conn, name), conn.namespace)

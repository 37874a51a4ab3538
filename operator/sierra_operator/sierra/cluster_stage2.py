"""SIERRA's stage 2 in the cluster: what the ``sierraop.cluster`` execenv plugin does.

Stage 1 ran on the researcher's machine; stage 3 and 4 run there after this returns. In
between, for SIERRA's batch (its batch root under ``--sierra-root``):

1. **push** ``exp-inputs/`` and ``commands.txt`` to the PVC the researcher names
   (``--claim``), where pods mount it at the same absolute path as ``--sierra-root``, so the
   absolute paths in ``commands.txt`` hold in every pod
   (:mod:`sierra_operator.researcher.transfer`);
2. **create** a SierraBatch with ``commandsFile`` (image, namespace, parallelism, retries,
   failure policy from SIERRA's options) that the operator runs;
3. **follow** it, logging each change of its progress, until it Succeeded or Failed;
4. **fetch** ``exp-outputs/`` back under the local batch root, put in place only when
   complete; a Failed batch fails stage 2 instead, naming the failed runs.

A batch of the same name that already exists is followed, not created again (stage 2 run
again after an interruption re-attaches), and a Succeeded one only has its outputs fetched
(with ``--exec-resume``). Everything goes through the Kubernetes API with the researcher's
kubeconfig, like kubectl; no Prefect is imported here (an import-linter contract says so).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sierra_operator.core.model import read_status
from sierra_operator.researcher.batch_status import (
    GROUP,
    PLURAL,
    VERSION,
    phase_of,
    progress_line,
    read_with,
)
from sierra_operator.researcher.interrupts import sigterm_as_ctrl_c
from sierra_operator.researcher.kubeconfig import (
    EXIT_NOT_FOUND,
    ClusterError,
    Connection,
    connect,
    forbidden,
    network_errors,
    one_line,
    unreachable,
)
from sierra_operator.researcher.transfer import fetch, push
from sierra_operator.researcher.transfer_pod import Target
from sierra_operator.sierra.execenv import (
    EXIT_INTERRUPTED,
    EXIT_RUNS_FAILED,
    Stage2Failed,
    Stage2Options,
    batch_document,
    batch_name,
    commands_file_of,
    failure_summary,
)

log = logging.getLogger("sierraop.cluster")

DEFAULT_CLAIM = "sierra-root"
CREATED_BY = "sierraop.cluster"
_first_retry_delay = 1.0
"""Seconds before the first retry of a failed read while following (doubling, at most 15)."""


@dataclass(frozen=True)
class ClusterOptions:
    """``sierraop.cluster``'s options: SIERRA's stage-2 ones plus where to run."""

    stage2: Stage2Options
    image: str
    claim: str = DEFAULT_CLAIM
    namespace: str | None = None
    context: str | None = None
    prefect_api_url: str | None = None
    runs_per_pod: int = 1
    """``execution.runsPerPod``: short runs share pods instead of paying a pod start each."""
    pod_timeout: float = 300.0
    operator_timeout: float = 120.0
    poll_seconds: float = 2.0
    read_retry_seconds: float = 120.0
    """How long following rides out failed reads (network, 5xx, 429) before giving up."""

    @classmethod
    def from_cmdopts(cls, cmdopts: Mapping[str, Any]) -> ClusterOptions:
        """From SIERRA's ``cmdopts`` (keys from the plugin's ``to_cmdopts``)."""
        return cls(
            stage2=Stage2Options.from_cmdopts(cmdopts),
            image=str(cmdopts.get("sierraop_image") or ""),
            claim=str(cmdopts.get("sierraop_claim") or DEFAULT_CLAIM),
            namespace=cmdopts.get("sierraop_namespace"),
            context=cmdopts.get("sierraop_kube_context"),
            prefect_api_url=cmdopts.get("sierraop_prefect_api_url"),
            runs_per_pod=int(cmdopts.get("sierraop_runs_per_pod") or 1),
            pod_timeout=float(cmdopts.get("sierraop_pod_timeout") or 300.0),
            operator_timeout=float(cmdopts.get("sierraop_operator_timeout") or 120.0),
        )


def image_spec(image: str) -> dict[str, str]:
    """``repository:tag`` as ``spec.image`` (the tag is what follows the last ``:`` after
    the last ``/``: ``localhost:5001/sim`` has none)."""
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag or not repository:
        raise Stage2Failed(
            f"--image {image!r}: give repository:tag (the image every run pod uses; it needs "
            "the engine, SIERRA's project and sh/tar: build it FROM the sierra-operator image)",
            2,
        )
    return {"repository": repository, "tag": tag}


def cluster_document(
    name: str, commands_file: str, sierra_root: Path, opts: ClusterOptions
) -> dict[str, Any]:
    """The SierraBatch for SIERRA's batch: local mode's document (the same options mean the
    same), plus the image and the PVC mounted at the local ``--sierra-root``."""
    doc = batch_document(name, commands_file, opts.stage2)
    doc["metadata"]["labels"] = {"app.kubernetes.io/created-by": CREATED_BY}
    doc["spec"]["image"] = image_spec(opts.image)
    doc["spec"]["sierraRoot"] = {"claimName": opts.claim, "mountPath": str(sierra_root)}
    if opts.prefect_api_url:
        doc["spec"].setdefault("prefect", {})["apiUrl"] = opts.prefect_api_url
    if opts.runs_per_pod != 1:
        doc["spec"]["execution"]["runsPerPod"] = opts.runs_per_pod
    return doc


def failed_batch_message(obj: dict[str, Any], name: str, namespace: str) -> str:
    """Stage 2's error for a Failed batch: its failed runs with reasons, or its message."""
    status = read_status(obj.get("status"))
    detail = failure_summary(status) or one_line(status.message) or "the batch Failed"
    return (
        f"stage 2 failed: SierraBatch {namespace}/{name} {detail}\n"
        f"`sierra-operator logs {name} EXPERIMENT RUN -n {namespace}` prints a run's whole "
        f"output; `kubectl delete sierrabatch {name} -n {namespace}` and stage 2 again runs "
        "the batch again."
    )


def other_batch(obj: dict[str, Any], doc: dict[str, Any]) -> str | None:
    """Why an existing SierraBatch of our name is not SIERRA's batch, or None if it is: the
    name comes from the batch root's last directory only, so another project or scenario
    with the same batch criteria has the same name; following it would fetch its outputs."""
    mine, theirs = doc["spec"], obj.get("spec") or {}
    # Field by field: the API server may have added CRD defaults next to them.
    for field, key in (
        ("commandsFile", None),
        ("sierraRoot", "mountPath"),
        ("sierraRoot", "claimName"),
    ):
        want, have = mine.get(field), theirs.get(field)
        if key is not None:
            want, have = (want or {}).get(key), (have or {}).get(key)
        if have != want:
            return (
                f"SierraBatch {(obj.get('metadata') or {}).get('name')} exists for another "
                f"batch ({field}{'.' + key if key else ''} {have!r}, not {want!r}): delete "
                "it (kubectl delete sierrabatch NAME) or use another --namespace"
            )
    return None


async def _existing(conn: Connection, name: str) -> dict[str, Any] | None:
    """The batch if it exists; None if not. A missing CRD or permission is an error."""
    try:
        return await read_with(conn, name)
    except ClusterError as exc:
        if exc.exit_code == EXIT_NOT_FOUND:
            return None
        raise


async def _create(conn: Connection, doc: dict[str, Any]) -> bool:
    """Create the batch; False if one of its name appeared since we looked (another stage 2
    racing us): the caller then follows that one, as when it existed before."""
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    async with client.ApiClient(configuration=conn.config) as api:
        try:
            await client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, conn.namespace, PLURAL, doc, _request_timeout=30
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            if exc.status == 403:
                raise forbidden("create", f"{PLURAL}.{GROUP}", conn.namespace) from None
            raise ClusterError(
                f"the API server refused SierraBatch {doc['metadata']['name']}: {exc.status} "
                f"{one_line(exc.body)[:400]}"
            ) from None
        except network_errors() as exc:
            raise unreachable(conn, exc) from None
    return True


def check_existing(obj: dict[str, Any], doc: dict[str, Any], namespace: str, resume: bool) -> str:
    """The existing batch of our name may be followed: it is SIERRA's batch, and not one
    that Succeeded already unless ``resume``; returns its phase, or raises Stage2Failed."""
    name = doc["metadata"]["name"]
    problem = other_batch(obj, doc)
    if problem:
        raise Stage2Failed(f"stage 2 failed: {problem}", 2)
    phase = phase_of(obj)
    if phase == "Succeeded" and not resume:
        raise Stage2Failed(
            f"SierraBatch {namespace}/{name} already Succeeded: pass --exec-resume to "
            f"fetch its outputs, or `kubectl delete sierrabatch {name} -n "
            f"{namespace}` to run it again",
            2,
        )
    return phase


async def follow(
    conn: Connection, name: str, opts: ClusterOptions, note: Callable[[str], None]
) -> dict[str, Any]:
    """Poll the batch until it Succeeded or Failed; ``note`` each new progress line. No
    status at all after ``operator_timeout`` means no operator reconciles it."""
    started = time.monotonic()
    last = ""
    while True:
        obj = await _read_retrying(conn, name, opts, note)
        status = obj.get("status") or {}
        if not status and time.monotonic() - started > opts.operator_timeout:
            raise ClusterError(
                f"no operator picked up SierraBatch {conn.namespace}/{name} in "
                f"{opts.operator_timeout:.0f}s: is sierra-operator installed and watching "
                "this namespace? (helm install sierra-operator charts/sierra-operator -n "
                "sierra-system --create-namespace; see the README)"
            )
        line = progress_line(obj)
        message = one_line(status.get("message"))
        shown = line + (f" ({message})" if message else "")
        if shown != last:
            note(shown)
            last = shown
        if phase_of(obj) in ("Succeeded", "Failed"):
            return obj
        await asyncio.sleep(opts.poll_seconds)


async def _read_retrying(
    conn: Connection, name: str, opts: ClusterOptions, note: Callable[[str], None]
) -> dict[str, Any]:
    """Read the batch; a transient failure (no answer, 5xx, 429) is retried with backoff
    for up to ``read_retry_seconds``: one blip must not fail stage 2 while the batch runs
    on. Then the error says that it does, and how to re-attach."""
    failing_since: float | None = None
    delay = _first_retry_delay
    while True:
        try:
            return await read_with(conn, name)
        except ClusterError as exc:
            if not exc.transient:
                raise
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
                note(f"reading SierraBatch {conn.namespace}/{name} failed ({exc}); retrying")
            if now - failing_since >= opts.read_retry_seconds:
                raise ClusterError(
                    f"following SierraBatch {conn.namespace}/{name}: reads failed for "
                    f"{now - failing_since:.0f}s ({exc}); the batch keeps running in the "
                    "cluster: run stage 2 again to re-attach and fetch its outputs",
                    exc.exit_code,
                ) from None
            await asyncio.sleep(min(delay, max(opts.read_retry_seconds - (now - failing_since), 0)))
            delay = min(delay * 2, 15.0)


async def run_cluster_stage2_async(
    sierra_root: Path,
    batch_root: Path,
    cmdfile: Path,
    opts: ClusterOptions,
    note: Callable[[str], None] = log.info,
) -> None:
    """Stage 2 in the cluster (module docstring); raises :class:`Stage2Failed`."""
    sierra_root = sierra_root.resolve()
    commands = commands_file_of(sierra_root, batch_root, cmdfile)
    batch_rel = PurePosixPath(batch_root.resolve().relative_to(sierra_root).as_posix())
    name = batch_name(batch_root)
    doc = cluster_document(name, str(commands), sierra_root, opts)  # bad options: now
    conn = await connect(opts.namespace, opts.context)
    target = Target(conn.namespace, name, opts.claim, str(sierra_root), opts.image)
    obj = await _existing(conn, name)
    if obj is None:
        inputs = [batch_rel / "exp-inputs"]
        if (sierra_root / commands).is_file():
            inputs.append(PurePosixPath(commands.as_posix()))
        note(f"pushing the batch's inputs to PVC {opts.claim} in namespace {conn.namespace}")
        done = await push(conn, target, sierra_root, inputs, opts.pod_timeout)
        note(f"pushed {done.files} files ({done.bytes / 2**20:.1f} MiB); creating SierraBatch")
        if not await _create(conn, doc):  # another stage 2 created it meanwhile
            obj = await read_with(conn, name)
    if obj is not None:
        phase = check_existing(obj, doc, conn.namespace, opts.stage2.resume)
        note(f"SierraBatch {conn.namespace}/{name} exists ({phase}): following it")
    obj = await follow(conn, name, opts, note)
    if phase_of(obj) == "Failed":
        raise Stage2Failed(failed_batch_message(obj, name, conn.namespace), EXIT_RUNS_FAILED)
    outputs = batch_rel / "exp-outputs"
    note(f"fetching {outputs}")
    done = await fetch(conn, target, sierra_root, outputs, opts.pod_timeout)
    note(f"fetched {done.files} files ({done.bytes / 2**20:.1f} MiB) into {sierra_root / outputs}")


def run_cluster_stage2(
    sierra_root: Path, batch_root: Path, cmdfile: Path, opts: ClusterOptions
) -> None:
    """:func:`run_cluster_stage2_async` for SIERRA's synchronous plugin call. Cluster errors
    fail stage 2 with their exit code; Ctrl-C stops following (the transfer pod is deleted)
    while the batch goes on in the cluster, and says how to re-attach or stop it."""
    try:
        with sigterm_as_ctrl_c():  # SIGTERM too deletes the transfer pod on the way out
            asyncio.run(run_cluster_stage2_async(sierra_root, batch_root, cmdfile, opts))
    except ClusterError as exc:
        raise Stage2Failed(f"stage 2 failed: {exc}", exc.exit_code) from None
    except KeyboardInterrupt:
        name = batch_name(batch_root)
        raise Stage2Failed(
            f"stage 2 interrupted; SierraBatch {name} (if created) goes on in the cluster: "
            "run stage 2 again to follow it and fetch its outputs, or "
            f"`kubectl delete sierrabatch {name}` to stop it",
            EXIT_INTERRUPTED,
        ) from None

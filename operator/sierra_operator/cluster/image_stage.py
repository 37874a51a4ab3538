"""The image step of a reconcile: which image run pods use, building it first if asked.

Builds take minutes, a reconcile must not: a build runs in a thread per batch (kept in the
operator's memory between reconciles) while reconciles report phase ``Building``. What must
survive a restart is in the batch's status: the pushed digest with the hash of the build
inputs (same hash: no rebuild), and the ``ImageReady`` condition (a build that failed for
this generation is not retried until the spec changes; a refused push is retried).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from kubernetes_asyncio import client

from sierra_operator.cluster import kube
from sierra_operator.core.model import BatchPhase, BatchStatus, Condition, ImageSpec, ImageStatus
from sierra_operator.images.builder import ImageError, Pushed, build_and_push
from sierra_operator.images.registry import ImageNotFound, RegistryUnreachable, resolve_digest
from sierra_operator.images.spec import (
    RegistryAuth,
    build_hash,
    pinned,
    registry_auth,
    registry_of,
    tagged,
)

RETRY_SECONDS = 30.0
DOCKERCONFIG_KEY = ".dockerconfigjson"


@dataclass
class ImageOutcome:
    """Either ``image`` (what run pods use) is set, or why not: the condition to show."""

    image: str | None
    status: ImageStatus | None
    reason: str
    message: str
    phase: BatchPhase = BatchPhase.BUILDING
    events: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ImageRequest:
    """One batch's image as this reconcile sees it."""

    uid: str
    namespace: str
    image: ImageSpec
    previous: BatchStatus
    generation: int | None
    kube_api: client.ApiClient


@dataclass
class _Job:
    key: str
    task: asyncio.Task[Pushed]
    milestones: list[str] = field(default_factory=list)


@dataclass
class ImageStage:
    """Per-operator state: builds in flight and when a failed lookup may be retried."""

    docker_host: str | None = None
    jobs: dict[str, _Job] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    # Build inputs (hashes) whose build failed: not built again until they change.
    failed_builds: dict[str, str] = field(default_factory=dict)
    # The last push per batch, until status has it (a lost status patch must not rebuild).
    pushed: dict[str, tuple[str, ImageStatus]] = field(default_factory=dict)

    async def ensure(self, req: ImageRequest) -> ImageOutcome:
        """One step towards a usable image; never blocks for the length of a build."""
        if req.image.build is not None:
            return await self._built(req)
        return await self._existing(req)

    def forget(self, uid: str) -> None:
        """Drop what is kept for a deleted batch (a running build finishes unobserved)."""
        self.jobs.pop(uid, None)
        self.retry_at.pop(uid, None)
        self.failed_builds.pop(uid, None)
        self.pushed.pop(uid, None)

    async def _built(self, req: ImageRequest) -> ImageOutcome:
        uid, image, previous = req.uid, req.image, req.previous
        key = build_hash(image)
        recorded = previous.image
        if recorded and recorded.build_hash == key and recorded.digest:
            self.pushed.pop(uid, None)
            return _ready(image, recorded, "Pushed")
        done = self.pushed.get(uid)
        if done is not None and done[0] == key:
            return _ready(image, done[1], "Pushed")
        job = self.jobs.get(uid)
        if job is not None and job.key != key:
            job = None  # inputs changed: that build's result is for the old spec
        if job is None:
            failed = _condition(previous, "ImageReady")
            build_failed = failed is not None and failed.reason == "BuildFailed"
            if self.failed_builds.get(uid) == key or (
                # after an operator restart: the condition says so for this generation
                build_failed and failed is not None and failed.observed_generation == req.generation
            ):
                message = failed.message if failed is not None else ""
                return ImageOutcome(None, recorded, "BuildFailed", message, BatchPhase.FAILED)
            if failed is not None and time.monotonic() < self.retry_at.get(uid, 0.0):
                return ImageOutcome(
                    None, recorded, failed.reason, failed.message, _phase_of(failed.reason)
                )
            try:
                auth = await _auth(req.kube_api, req.namespace, image)
            except ImageError as exc:
                self.retry_at[uid] = time.monotonic() + RETRY_SECONDS
                return ImageOutcome(None, recorded, exc.reason, str(exc), _phase_of(exc.reason))
            job = self._start(uid, key, image, auth)
        events = [("Normal", "Building", m) for m in job.milestones]
        job.milestones.clear()
        if not job.task.done():
            return ImageOutcome(
                None, recorded, "Building", f"building and pushing {tagged(image)}", events=events
            )
        del self.jobs[uid]
        error = job.task.exception()
        if isinstance(error, ImageError):
            self.retry_at[uid] = time.monotonic() + RETRY_SECONDS
            if error.reason == "BuildFailed":
                self.failed_builds[uid] = key
            phase = _phase_of(error.reason)
            return ImageOutcome(None, recorded, error.reason, str(error), phase, events)
        if error is not None:
            raise error
        pushed = job.task.result()
        status = ImageStatus(ref=pushed.ref, digest=pushed.digest, build_hash=key)
        self.pushed[uid] = (key, status)
        events.append(
            (
                "Normal",
                "Pushed",
                f"{pushed.ref} pushed as {pushed.digest} (build {pushed.build_seconds:.0f}s, "
                f"push {pushed.push_seconds:.0f}s)",
            )
        )
        outcome = _ready(image, status, "Pushed")
        outcome.events = events
        return outcome

    def _start(self, uid: str, key: str, image: ImageSpec, auth: RegistryAuth | None) -> _Job:
        milestones: list[str] = []
        task = asyncio.create_task(
            asyncio.to_thread(
                build_and_push, image, self.docker_host, auth, image.push_secret, milestones.append
            )
        )
        job = _Job(key, task, milestones)
        self.jobs[uid] = job
        return job

    async def _existing(self, req: ImageRequest) -> ImageOutcome:
        uid, image, previous = req.uid, req.image, req.previous
        recorded = previous.image
        ready = _condition(previous, "ImageReady")
        if recorded and recorded.ref == tagged(image) and ready and ready.status == "True":
            return _ready(image, recorded, ready.reason, ready.message)
        if time.monotonic() < self.retry_at.get(uid, 0.0) and ready is not None:
            return ImageOutcome(None, recorded, ready.reason, ready.message, BatchPhase.PENDING)
        try:
            auth = await _auth(req.kube_api, req.namespace, image)
            digest = await asyncio.to_thread(resolve_digest, image.repository, image.tag, auth)
        except ImageError as exc:
            self.retry_at[uid] = time.monotonic() + RETRY_SECONDS
            return ImageOutcome(None, recorded, exc.reason, str(exc), BatchPhase.PENDING)
        except ImageNotFound as exc:
            self.retry_at[uid] = time.monotonic() + RETRY_SECONDS
            message = (
                f"{exc}; push it, or add spec.image.build so the operator builds it "
                f"(checked again every {RETRY_SECONDS:.0f}s)"
            )
            return ImageOutcome(None, recorded, "ImageNotFound", message, BatchPhase.PENDING)
        except RegistryUnreachable as exc:
            # Node and operator may see registries differently (kind's localhost:5001): run
            # by tag rather than refuse, and say so.
            status = ImageStatus(ref=tagged(image))
            message = (
                f"could not reach the registry to pin {tagged(image)} to a digest ({exc}); "
                "run pods pull it by tag"
            )
            return _ready(image, status, "Unverified", message)
        return _ready(image, ImageStatus(ref=tagged(image), digest=digest), "Resolved")


def _phase_of(reason: str) -> BatchPhase:
    """Failed for a broken build (the spec must change); Pending while a Secret is missing or
    wrong (fixing it is enough); Building otherwise (retried)."""
    if reason == "BuildFailed":
        return BatchPhase.FAILED
    if reason.startswith("PushSecret"):
        return BatchPhase.PENDING
    return BatchPhase.BUILDING


def _ready(image: ImageSpec, status: ImageStatus, reason: str, message: str = "") -> ImageOutcome:
    ref = pinned(image.repository, status.digest) if status.digest else tagged(image)
    return ImageOutcome(ref, status, reason, message or f"run pods use {ref}")


def _condition(status: BatchStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


async def _auth(
    kube_api: client.ApiClient, namespace: str, image: ImageSpec
) -> RegistryAuth | None:
    """The push/pull credentials for the image's registry from ``spec.image.pushSecret``."""
    secret_name = image.push_secret
    if not secret_name:
        return None
    registry = registry_of(image.repository)
    secret = await kube.read_secret(kube_api, namespace, secret_name)
    if secret is None:
        raise ImageError(
            "PushSecretMissing",
            f"spec.image.pushSecret: Secret {secret_name!r} not found in namespace "
            f"{namespace}; create it with `kubectl create secret docker-registry "
            f"{secret_name} --docker-server={registry} ...`",
        )
    data = secret.get(DOCKERCONFIG_KEY)
    try:
        if data is None:
            raise ValueError(f"it has no {DOCKERCONFIG_KEY} key")
        auth = registry_auth(data, registry)
    except ValueError as exc:
        raise ImageError(
            "PushSecretInvalid",
            f"spec.image.pushSecret: Secret {secret_name!r} is not a "
            f"kubernetes.io/dockerconfigjson Secret ({exc})",
        ) from None
    if auth is None:
        raise ImageError(
            "PushSecretInvalid",
            f"spec.image.pushSecret: Secret {secret_name!r} has no credentials for registry "
            f"{registry}; recreate it with --docker-server={registry}",
        )
    return auth

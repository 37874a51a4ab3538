"""Build and push an experiment image with the docker SDK (adapter; blocking, run in a thread).

The engine is whatever ``DOCKER_HOST`` names (a dind sidecar, a remote engine, podman's
Docker-compatible service). Contexts:

- git URLs go to the engine as the build's ``remote`` (the engine clones them);
- http(s) tarball URLs are fetched here and streamed to the engine, so they work with any
  engine and a bad URL is reported as such;
- anything else is a directory on this machine (local mode).

Progress goes to ``progress`` as a few milestones (build started, built, pushed: they become
Events), each build step to the log, never one message per layer. Credentials are only ever
handed to the SDK, never logged or put in an error message.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
from docker.errors import APIError, DockerException

from sierra_operator.core.model import ImageSpec
from sierra_operator.images.spec import (
    RegistryAuth,
    digest_in,
    failing_step,
    is_git_context,
    registry_of,
    tagged,
    tail,
)

Progress = Callable[[str], None]
_GZIP_MAGIC = b"\x1f\x8b"
logger = logging.getLogger(__name__)


def log_step(line: str) -> None:
    """Every build step to the operator log (Events only get the milestones)."""
    if failing_step([line]):
        logger.info("build: %s", line.strip())


class ImageError(Exception):
    """A build or push that did not work; ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Pushed:
    """What was pushed: the registry's digest for ``ref`` and how long each part took."""

    ref: str
    digest: str
    build_seconds: float
    push_seconds: float


def _client(docker_host: str | None) -> docker.APIClient:
    try:
        if docker_host:
            return docker.APIClient(base_url=docker_host, version="auto", timeout=600)
        return docker.APIClient(**docker.utils.kwargs_from_env(), version="auto", timeout=600)
    except DockerException as exc:
        where = docker_host or "DOCKER_HOST (unset: the local socket)"
        raise ImageError(
            "EngineUnavailable",
            f"no Docker engine at {where}: {exc}; set DOCKER_HOST on the operator "
            "(chart: docker.host, or docker.dind.enabled=true)",
        ) from None


def _context_args(context: str) -> dict[str, Any]:
    if is_git_context(context):
        return {"path": context}  # the SDK sends a URL path as `remote`
    if context.startswith(("http://", "https://")):
        try:
            resp = httpx.get(context, follow_redirects=True, timeout=120)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise ImageError(
                "ContextUnavailable",
                f"spec.image.build.context: could not fetch {context}: {exc}",
            ) from None
        body = resp.content
        encoding = "gzip" if body[:2] == _GZIP_MAGIC else None
        return {"fileobj": io.BytesIO(body), "custom_context": True, "encoding": encoding}
    if not Path(context).is_dir():
        raise ImageError(
            "ContextUnavailable",
            f"spec.image.build.context: {context!r} is neither a git or tarball URL nor a "
            "directory here; give a URL the operator can fetch",
        )
    return {"path": context}


def _stream(chunks: Iterator[dict[str, Any]], log: list[str]) -> Iterator[tuple[str, str]]:
    """(kind, text) pairs from the engine's JSON stream: kind is 'line', 'error' or 'aux'."""
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            message = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error", "")
            yield "error", str(message).strip()
            return
        if "aux" in chunk:
            yield "aux", str(chunk["aux"].get("Digest") or "")
        text = chunk.get("stream") or chunk.get("status") or ""
        for line in str(text).splitlines():
            if line.strip():
                log.append(line)
                yield "line", line


def build(
    image: ImageSpec, docker_host: str | None, progress: Progress, api: Any = None
) -> tuple[Any, float]:
    """Build and tag ``repository:tag``; returns the client and the build's duration."""
    assert image.build is not None
    spec = image.build
    api = api or _client(docker_host)
    ref = tagged(image)
    log: list[str] = []
    started = time.monotonic()
    progress(f"building {ref} from {spec.context}")
    try:
        chunks = api.build(
            tag=ref,
            dockerfile=spec.dockerfile,
            buildargs=dict(spec.build_args),
            target=spec.target,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
            **_context_args(spec.context),
        )
        for kind, text in _stream(chunks, log):
            if kind == "error":
                step = failing_step(log) or "before the first step"
                raise ImageError(
                    "BuildFailed",
                    f"build of {ref} failed at {step}: {text}\nlast lines:\n{tail(log)}",
                )
            if kind == "line":
                log_step(text)
    except APIError as exc:
        raise ImageError("BuildFailed", f"build of {ref} refused by the engine: {exc}") from None
    except (DockerException, OSError) as exc:
        raise ImageError("EngineUnavailable", f"build of {ref}: engine error: {exc}") from None
    return api, time.monotonic() - started


def push(
    api: Any, image: ImageSpec, auth: RegistryAuth | None, secret: str | None, progress: Progress
) -> tuple[str, float]:
    """Push ``repository:tag``; returns the registry's digest and the push duration."""
    ref = tagged(image)
    registry = registry_of(image.repository)
    started = time.monotonic()
    log: list[str] = []
    digest: str | None = None
    kwargs: dict[str, Any] = {"stream": True, "decode": True}
    if auth is not None:
        kwargs["auth_config"] = auth.as_docker_auth_config()
    try:
        for kind, text in _stream(api.push(image.repository, tag=image.tag, **kwargs), log):
            if kind == "error":
                raise ImageError("PushFailed", _push_error(ref, registry, secret, text))
            digest = digest_in(text) or digest
    except APIError as exc:
        raise ImageError("PushFailed", _push_error(ref, registry, secret, str(exc))) from None
    except (DockerException, OSError) as exc:
        raise ImageError("EngineUnavailable", f"push of {ref}: engine error: {exc}") from None
    if digest is None:
        raise ImageError(
            "PushFailed", f"push of {ref} to {registry} reported no digest:\n{tail(log)}"
        )
    progress(f"pushed {ref} ({digest})")
    return digest, time.monotonic() - started


def _push_error(ref: str, registry: str, secret: str | None, text: str) -> str:
    auth_words = ("unauthorized", "authentication required", "denied", "401", "403")
    if any(word in text.lower() for word in auth_words):
        source = (
            f"the credentials of Secret {secret!r} (spec.image.pushSecret)"
            if secret
            else "no credentials (spec.image.pushSecret is not set)"
        )
        return (
            f"registry {registry} refused the push of {ref} with {source}: {text}; "
            "fix the Secret's entry for that registry"
        )
    return f"push of {ref} to {registry} failed: {text}"


def build_and_push(
    image: ImageSpec,
    docker_host: str | None,
    auth: RegistryAuth | None,
    secret: str | None,
    progress: Progress,
) -> Pushed:
    """Build, tag and push; raises :class:`ImageError` with the condition's reason and message."""
    api, build_seconds = build(image, docker_host, progress)
    try:
        progress(f"build done in {build_seconds:.0f}s; pushing to {registry_of(image.repository)}")
        digest, push_seconds = push(api, image, auth, secret, progress)
    finally:
        api.close()
    return Pushed(tagged(image), digest, build_seconds, push_seconds)

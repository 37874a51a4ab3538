"""Image facts the operator decides on, with no engine or registry in sight (pure).

- :func:`build_hash`: what makes a build different. The digest recorded in status is reused
  while this hash is unchanged, so the same spec is never rebuilt (operator restarts
  included), and a changed buildArg, context, Dockerfile, target or tag is.
- :func:`registry_auth`: the credentials for one registry out of a
  ``kubernetes.io/dockerconfigjson`` Secret, as ``docker login`` would store them.
- :func:`failing_step` and :func:`tail`: what a failed build's condition says.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from sierra_operator.core.model import ImageSpec

DOCKER_HUB = "docker.io"
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_STEP = re.compile(r"^\s*(STEP|Step) \d+/\d+\s*:?\s*(.*)$")
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64})")


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry. ``repr`` never shows the password."""

    registry: str
    username: str
    password: str

    def __repr__(self) -> str:
        return f"RegistryAuth(registry={self.registry!r}, username={self.username!r})"

    def as_docker_auth_config(self) -> dict[str, str]:
        """The ``auth_config`` the docker SDK sends as X-Registry-Auth."""
        return {
            "username": self.username,
            "password": self.password,
            "serveraddress": self.registry,
        }


def tagged(image: ImageSpec) -> str:
    """``repository:tag``."""
    return f"{image.repository}:{image.tag}"


def pinned(repository: str, digest: str) -> str:
    """``repository@sha256:…``: what run pods use once the digest is known."""
    return f"{repository}@{digest}"


def registry_of(repository: str) -> str:
    """The registry host of a repository, as Docker reads it (no host part: Docker Hub)."""
    first, sep, _ = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return DOCKER_HUB


def path_in_registry(repository: str) -> str:
    """The repository's name inside its registry (``library/`` for official Hub images)."""
    registry = registry_of(repository)
    if registry != DOCKER_HUB:
        return repository.split("/", 1)[1]
    return repository if "/" in repository else f"library/{repository}"


def build_hash(image: ImageSpec) -> str:
    """A hash of everything that makes the built image what it is; empty without a build."""
    if image.build is None:
        return ""
    inputs = {
        "repository": image.repository,
        "tag": image.tag,
        "context": image.build.context,
        "dockerfile": image.build.dockerfile,
        "buildArgs": dict(sorted(image.build.build_args.items())),
        "target": image.build.target,
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def registry_auth(dockerconfigjson: str | bytes, registry: str) -> RegistryAuth | None:
    """Credentials for ``registry`` from a dockerconfigjson document, or None if it has none.

    Raises ValueError (without echoing the document) if it is not a docker config.
    """
    try:
        auths = json.loads(dockerconfigjson)["auths"]
        if not isinstance(auths, dict):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        raise ValueError("not a docker config JSON with an 'auths' map") from None
    keys = _HUB_KEYS if registry == DOCKER_HUB else (registry,)
    for key, entry in auths.items():
        host = key.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        if key in keys or host in keys:
            return _credentials(registry, entry)
    return None


def _credentials(registry: str, entry: dict[str, Any]) -> RegistryAuth:
    if entry.get("username") and entry.get("password") is not None:
        return RegistryAuth(registry, str(entry["username"]), str(entry["password"]))
    try:
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (KeyError, ValueError, UnicodeDecodeError):
        raise ValueError(
            f"the entry for {registry} has neither auth nor username/password"
        ) from None
    return RegistryAuth(registry, user, password)


def failing_step(log: list[str]) -> str | None:
    """The last build step the log reached (Docker's ``Step n/m :`` or podman's ``STEP n/m:``)."""
    for line in reversed(log):
        if _STEP.match(line):
            return line.strip()
    return None


def tail(log: list[str], lines: int = 5, limit: int = 800) -> str:
    """The last non-empty lines of a log, bounded for a condition message."""
    kept = [line.rstrip() for line in log if line.strip()][-lines:]
    text = "\n".join(kept)
    return text if len(text) <= limit else "…" + text[-limit:]


def digest_in(text: str) -> str | None:
    """The sha256 digest a push progress line reports, if any."""
    found = _DIGEST.search(text)
    return found.group(1) if found else None


def is_directory_context(context: str) -> bool:
    """Neither a git nor an http(s) tarball URL: a directory on this machine (local mode)."""
    return not is_git_context(context) and not context.startswith(("http://", "https://"))


def is_git_context(context: str) -> bool:
    """Contexts the engine must fetch itself (git); others (tarball URLs) the operator fetches."""
    return (
        context.startswith(("git://", "git@", "github.com/"))
        or ".git#" in context
        or context.endswith(".git")
    )

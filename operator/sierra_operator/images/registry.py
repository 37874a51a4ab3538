"""Resolve ``repository:tag`` to the registry's digest over the Registry HTTP API (adapter).

For images the batch does not build: the digest is recorded once and every run pod is pinned
to it, so a re-tag mid-batch cannot change what runs. Handles anonymous, basic and bearer-token
registries (Docker Hub, GHCR, Harbor...). Loopback registries are spoken to over plain HTTP,
as Docker does; everything else over HTTPS.
"""

from __future__ import annotations

import re

import httpx

from sierra_operator.images.spec import RegistryAuth, path_in_registry, registry_of

DOCKER_HUB_API = "registry-1.docker.io"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class ImageNotFound(Exception):
    """The registry answered and has no such tag (or refused to say)."""


class RegistryUnreachable(Exception):
    """The registry could not be asked (network, TLS, 5xx)."""


def _base_url(registry: str) -> str:
    host = DOCKER_HUB_API if registry == "docker.io" else registry
    loopback = host.split(":")[0] in {"localhost", "127.0.0.1", "::1"}
    return f"{'http' if loopback else 'https'}://{host}"


def _token(http: httpx.Client, challenge: str, auth: RegistryAuth | None, scope: str) -> str | None:
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", None)
    if realm is None:
        return None
    params.setdefault("scope", scope)
    basic = (auth.username, auth.password) if auth else None
    resp = http.get(realm, params=params, auth=basic)
    if resp.status_code != 200:
        return None
    body = resp.json()
    token = body.get("token") or body.get("access_token")
    return str(token) if token else None


def resolve_digest(
    repository: str, tag: str, auth: RegistryAuth | None, timeout: float = 10
) -> str:
    """The digest the registry serves for ``repository:tag``.

    Raises :class:`ImageNotFound` when the registry says no (404, 401/403 after auth) and
    :class:`RegistryUnreachable` when it cannot be asked.
    """
    registry = registry_of(repository)
    name = path_in_registry(repository)
    url = f"{_base_url(registry)}/v2/{name}/manifests/{tag}"
    headers = {"Accept": MANIFEST_TYPES}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as http:
            resp = http.head(url, headers=headers)
            if resp.status_code == 401:
                challenge = resp.headers.get("www-authenticate", "")
                if challenge.lower().startswith("bearer"):
                    token = _token(http, challenge, auth, f"repository:{name}:pull")
                    if token:
                        headers["Authorization"] = f"Bearer {token}"
                    resp = http.head(url, headers=headers)
                elif auth is not None:
                    resp = http.head(url, headers=headers, auth=(auth.username, auth.password))
    except httpx.HTTPError as exc:
        raise RegistryUnreachable(f"{registry}: {type(exc).__name__}: {exc}") from None
    if resp.status_code >= 500:
        raise RegistryUnreachable(f"{registry} answered {resp.status_code}")
    if resp.status_code in (401, 403, 404):
        why = (
            "no such tag"
            if resp.status_code == 404
            else f"access refused ({resp.status_code}): spec.image.pushSecret must name a "
            f"Secret with credentials for {registry}"
        )
        raise ImageNotFound(f"{repository}:{tag} on {registry}: {why}")
    digest = resp.headers.get("docker-content-digest")
    if resp.status_code != 200 or not digest:
        raise RegistryUnreachable(f"{registry} answered {resp.status_code} without a digest")
    return str(digest)

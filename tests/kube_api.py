"""A Kubernetes API for tests: kmock's emulator with the gaps that matter here filled in.

Stands in for a real kube-apiserver, which cannot be installed on these machines
(../shared/testing.md). Everything talks to it over HTTP with real clients (kopf,
kubernetes_asyncio). What is added to ``kmock.KubernetesEmulator`` and why:

* ``metadata.uid``, ``resourceVersion``, ``creationTimestamp``, ``generation`` and the
  namespace from the URL are stamped on create (kopf's finalizer JSON-patch starts with a
  ``test`` on resourceVersion; stock kmock never sets it);
* ``resourceVersion`` is bumped on every patch, ``generation`` when ``spec`` changes;
* ``generateName`` is expanded (Prefect's Job template uses it);
* ``?watch=True`` (Python clients) is a watch like ``?watch=true``;
* resources the operator uses are declared for discovery; namespaces are pre-created;
* only recent requests are kept in kmock's own request log (it is scanned per request);
* an audit log (like a real API server's): one JSON line per resource request with the
  caller's bearer token as its identity and the RBAC verb, so tests can check that the
  chart's RBAC allows every call the operator and workers really make.

Not emulated: admission (the CRD schema is not enforced here: tests/crd_validator.py checks
it), RBAC, garbage collection by ownerReferences, controllers (a Job never gets Pods).

Run as ``python -m tests.kube_api PORTFILE NAMESPACE...``: serves on a free port on
127.0.0.1, writes the URL to PORTFILE once ready and the audit log to PORTFILE's directory
(:data:`AUDIT_FILE`).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import secrets
import sys
import uuid
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import kmock
from kmock._internal import enums, rendering

RESOURCES: dict[str, dict[str, Any]] = {
    "sierra.research.io/v1alpha1/sierrabatches": {
        "kind": "SierraBatch",
        "singular": "sierrabatch",
        "namespaced": True,
        "shortnames": {"sb"},
        "subresources": {"status"},
    },
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "kind": "CustomResourceDefinition",
        "singular": "customresourcedefinition",
        "namespaced": False,
    },
    "v1/namespaces": {"kind": "Namespace", "singular": "namespace", "namespaced": False},
    "v1/events": {"kind": "Event", "singular": "event", "namespaced": True},
    "v1/persistentvolumeclaims": {
        "kind": "PersistentVolumeClaim",
        "singular": "persistentvolumeclaim",
        "namespaced": True,
    },
    "v1/serviceaccounts": {
        "kind": "ServiceAccount",
        "singular": "serviceaccount",
        "namespaced": True,
    },
    "v1/pods": {
        "kind": "Pod",
        "singular": "pod",
        "namespaced": True,
        "subresources": {"log", "status"},
    },
    "v1/secrets": {"kind": "Secret", "singular": "secret", "namespaced": True},
    "rbac.authorization.k8s.io/v1/roles": {"kind": "Role", "singular": "role", "namespaced": True},
    "rbac.authorization.k8s.io/v1/rolebindings": {
        "kind": "RoleBinding",
        "singular": "rolebinding",
        "namespaced": True,
    },
    "apps/v1/deployments": {
        "kind": "Deployment",
        "singular": "deployment",
        "namespaced": True,
        "subresources": {"status", "scale"},
    },
    "batch/v1/jobs": {
        "kind": "Job",
        "singular": "job",
        "namespaced": True,
        "subresources": {"status"},
    },
}

VERBS = {"create", "get", "list", "watch", "patch", "delete"}
AUDIT_FILE = "kube-api.audit.jsonl"
_HTTP_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def rbac_verb(method: str, name: str | None, params: dict[str, str]) -> str:
    """The RBAC verb a request needs, as kube-apiserver's authorizer derives it."""
    if method == "GET":
        if params.get("watch", "").lower() in {"true", "1"}:
            return "watch"
        return "get" if name else "list"
    return _HTTP_VERBS.get(method, method.lower())


@attrs.define(kw_only=True)
class Apiserver(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata bookkeeping a real API server does."""

    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    audit_path: Path | None = None

    def _next_version(self) -> str:
        return str(next(self._versions))

    async def _handle(self, request: rendering.Request) -> Any:
        self._audit(request)
        self._forget_old_requests()
        self._fix(request)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            # A real API server answers a failed JSON-patch `test` (stale resourceVersion)
            # with 422 Invalid, which clients treat as a conflict, not a server fault.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None

    def _forget_old_requests(self, keep: int = 64) -> None:
        """kmock keeps every request for assertions and matches each new one by scanning them
        all (O(n) per request, so a long test session slows to timeouts); nothing here asserts
        on kmock's request log (the audit log is ours), so only recent ones are kept."""
        if len(self._requests) > 2 * keep:
            del self._requests[:-keep]
            for payload in self._payloads:
                del payload._requests[:-keep]

    def _audit(self, request: rendering.Request) -> None:
        if self.audit_path is None or request.resource is None or not request.resource.plural:
            return  # discovery (/api, /apis) needs no RBAC rule
        auth = request.headers.get("Authorization") or request.headers.get("authorization") or ""
        resource = request.resource.plural
        if request.subresource:
            resource += "/" + request.subresource
        entry = {
            "user": auth.removeprefix("Bearer ").strip() or "anonymous",
            "verb": rbac_verb(str(request.method.value), request.name, dict(request.params)),
            "group": request.resource.group or "",
            "resource": resource,
            "namespace": request.namespace,
        }
        with self.audit_path.open("a") as log:
            log.write(json.dumps(entry) + "\n")

    @staticmethod
    def _set(request: rendering.Request, **changes: Any) -> None:
        # Requests are frozen and kmock's reactions match on the very object: amend in place.
        for key, value in changes.items():
            object.__setattr__(request, key, value)

    def _fix(self, request: rendering.Request) -> None:
        if (
            request.params.get("watch", "").lower() == "true"
            and request.action != enums.action.WATCH
        ):
            self._set(request, action=enums.action.WATCH)
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            data = dict(request.data)
            meta = dict(data.get("metadata") or {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = self._next_version()
            meta.setdefault("generation", 1)
            meta.setdefault(
                "creationTimestamp",
                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            data["metadata"] = meta
            self._set(request, data=data)
        elif request.action == enums.action.UPDATE:
            version = self._next_version()
            if isinstance(request.data, dict):
                data = dict(request.data)
                meta = dict(data.get("metadata") or {})
                meta["resourceVersion"] = version
                if "spec" in data and request.subresource is None:
                    current = self._current(request)
                    meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
                data["metadata"] = meta
                self._set(request, data=data)
            elif isinstance(request.data, list):
                ops = [
                    *request.data,
                    {"op": "add", "path": "/metadata/resourceVersion", "value": version},
                ]
                self._set(request, data=ops)

    def _current(self, request: rendering.Request) -> dict[str, Any]:
        for (resource, namespace, name), obj in self.objects.items():
            if (
                resource == request.resource
                and namespace == request.namespace
                and name == request.name
            ):
                return dict(obj.raw)
        return {}


async def serve(port_file: Path, namespaces: list[str]) -> None:
    """Serve until cancelled; write the URL to ``port_file`` when ready."""
    async with (
        Apiserver(audit_path=port_file.with_name(AUDIT_FILE)) as api,
        kmock.Server(api) as server,
    ):
        for key, info in RESOURCES.items():
            api.resources[key] = kmock.ResourceInfo(verbs=VERBS, **info)
        for ns in namespaces:
            api.objects["v1/namespaces", None, ns] = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "uid": str(uuid.uuid4()), "resourceVersion": "1"},
            }
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(server.url).rstrip("/"))
        tmp.replace(port_file)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), sys.argv[2:]))

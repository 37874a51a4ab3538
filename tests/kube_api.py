"""A Kubernetes API for tests: kmock's emulator with the gaps that matter here filled in.

Stands in for a real kube-apiserver, which cannot be installed on these machines
(../shared/testing.md). Everything talks to it over HTTP with real clients (kopf,
kubernetes_asyncio). What is added to ``kmock.KubernetesEmulator`` and why:

* ``metadata.uid``, ``resourceVersion``, ``creationTimestamp``, ``generation`` and the
  namespace from the URL are stamped on create (kopf's finalizer JSON-patch starts with a
  ``test`` on resourceVersion; stock kmock never sets it);
* no ``null`` is stored (see :func:`without_nulls`);
* PATCH as the API server does it: ``application/merge-patch+json`` by RFC 7386 (``null``
  deletes the key, recursively; a value of another type replaces, where kmock answers 500),
  ``application/strategic-merge-patch+json`` the same way (Kubernetes' list merge keys and
  ``$patch`` directives are not emulated: such a patch is refused, not misapplied),
  ``application/json-patch+json`` by RFC 6902, anything else 415; applied under kmock's lock;
* a PATCH that changes nothing writes nothing (same ``resourceVersion``, no watch event, as
  on a real API server); otherwise ``resourceVersion`` is bumped, and ``generation`` when
  ``spec`` changed;
* ``generateName`` is expanded (Prefect's Job template uses it);
* ``?watch=True`` (Python clients) is a watch like ``?watch=true``;
* ``labelSelector`` on list and watch, with kube's syntax and semantics
  (:func:`parse_label_selector`: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``,
  ``a``, ``!a``, ``a>1``, ``a<1``, comma = AND; ``!=``/``notin`` match objects without the
  label), and ``fieldSelector`` (``=``, ``==``, ``!=``) on ``metadata.name``,
  ``metadata.namespace`` and the few fields each built-in kind serves (:data:`FIELD_LABELS`).
  A malformed selector or an unsupported field is a 400 BadRequest, as on a real API server.
  A watch delivers what kube-apiserver's watch cache does: ADDED when an object starts
  matching (created, or changed to match), MODIFIED while it matches, DELETED when it stops
  (deleted, or changed to no longer match: then its last matching state with the new
  ``resourceVersion``), nothing for objects that never match (Prefect's observer lists
  Jobs and Pods by label, has kopf watch them by label, and trusts what it is told);
* ``pods/log`` is the container's log as text/plain, not the pod: the file the job runner
  names in the pod annotation :data:`LOG_PATH_ANNOTATION` (empty without one, or for a
  container other than the first: the runner runs only that), cut by ``tailLines`` then
  ``limitBytes``; 404 for no such pod; as kube answers: 422 for a negative ``tailLines``
  or ``limitBytes`` < 1, 400 for a non-integer one, for an unknown ``container`` or none
  named in a pod with several, and for ``previous=true`` (no container is ever restarted
  in place, so none has a previous log);
* ``pods/exec`` over a websocket, as kube-apiserver + kubelet serve ``kubectl exec`` (see
  :meth:`Apiserver._serve_exec`): subprotocol ``v4.channel.k8s.io`` (every message binary,
  first byte the channel: 0 stdin, 1 stdout, 2 stderr, 3 the exit status as a
  ``metav1.Status``), the command run in the running container (the job runner's process,
  found by its ``containerID``) with ``nsenter --mount``, so it sees the pod's volumes, and
  with the container's environment and working directory. The client closing the websocket
  closes the command's stdin; the status is sent after all of its output. For fault tests,
  a JSON file :data:`EXEC_FAULTS_FILE` next to the audit log makes the next exec drop its
  connection after so many stdin or stdout bytes (a network cut) or send its stdout slowly,
  then is removed;
* resources the operator uses are declared for discovery; namespaces are pre-created;
* only recent requests are kept in kmock's own request log (it is scanned per request);
* an audit log (like a real API server's): one JSON line per resource request with the
  caller's bearer token as its identity, the RBAC verb and the object's name (for an Event,
  the object it is about), so tests can check that the chart's RBAC allows every call the
  operator and workers really make, and count the requests one batch costs.

Not emulated for exec: ``tty``/resize (channel 4), the SPDY protocol (POST), ``v5`` (stdin
close signal), and a container's own PID namespace (an exec'd process is a child of the
emulator, killed with the container by the job runner, which finds it by its environment).

Not emulated: admission (the CRD schema is not enforced here: tests/crd_validator.py checks
it), RBAC, garbage collection by ownerReferences, controllers (a Job never gets Pods), the
status subresource's split (a PATCH of ``/status`` may change more than ``.status``), list
paging (``limit``/``continue``: every list is one complete page) and ``resourceVersion`` on
list and watch (a watch always starts with every matching object as ADDED), CRD
``selectableFields``; for ``pods/log``: ``follow`` (the log so far is answered and the
response ends), ``timestamps``, ``sinceSeconds``/``sinceTime`` (ignored), and a container
that has not started (an empty log, where kube answers 400 "waiting to start").

Run as ``python -m tests.kube_api PORTFILE NAMESPACE...``: serves on a free port on
127.0.0.1, writes the URL to PORTFILE once ready and the audit log to PORTFILE's directory
(:data:`AUDIT_FILE`).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import random
import re
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import enums, rendering

from sierra_operator.core import merge_patch
from tests.job_runner import LOG_PATH_ANNOTATION  # the file holding a pod's output

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
EXEC_FAULTS_FILE = "kube-api.exec-faults.json"
EXEC_PROTOCOL = "v4.channel.k8s.io"
_CONNECT_SUBRESOURCES = {"exec", "attach", "portforward"}
_HTTP_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def content_type(headers: dict[str, str]) -> str:
    """The request's media type, lower case, without parameters (``; charset=...``)."""
    value = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return value.split(";")[0].strip().lower()


def _directives(value: Any) -> list[str]:
    """Strategic-merge-patch directives (``$patch``, ``$retainKeys``...) anywhere in a patch."""
    if isinstance(value, dict):
        own = [k for k in value if k.startswith("$")]
        return own + [d for v in value.values() for d in _directives(v)]
    if isinstance(value, list):
        return [d for v in value for d in _directives(v)]
    return []


def patched(current: dict[str, Any], patch: Any, media_type: str) -> dict[str, Any]:
    """What the API server stores after PATCH ``patch`` of ``current`` (neither is modified).

    Raises :class:`kmock.KubernetesError` with the status a real API server answers: 415 for
    a media type it does not take, 422 for a JSON patch that does not apply (a failed
    ``test`` on resourceVersion is how kopf's patches detect a conflict).
    """
    if media_type == JSON_PATCH and isinstance(patch, list):
        try:
            result = jsonpatch.apply_patch(current, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
    elif media_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH) and isinstance(patch, dict):
        found = _directives(patch) if media_type == STRATEGIC_MERGE_PATCH else []
        if found:
            raise kmock.KubernetesError(
                status=415,
                reason="UnsupportedMediaType",
                message=f"strategic-merge-patch directives {found} are not emulated",
            )
        result = merge_patch.apply(current, patch)
    else:
        raise kmock.KubernetesError(
            status=415,
            reason="UnsupportedMediaType",
            message=f"PATCH with {media_type or 'no content type'} and a "
            f"{type(patch).__name__} body is not accepted",
        )
    if not isinstance(result, dict):
        raise kmock.KubernetesError(status=422, reason="Invalid", message="not an object")
    return without_nulls(result)


def without_nulls(value: Any) -> Any:
    """``value`` with every ``null`` map value dropped, in list items too: what the API server
    stores. A custom resource's fields are pruned of nulls unless the schema says
    ``nullable: true`` (none of ours does); built-in kinds decode a null as the field's zero
    value, which is not serialized either."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def rbac_verb(
    method: str, name: str | None, params: dict[str, str], subresource: str | None = None
) -> str:
    """The RBAC verb a request needs, as kube-apiserver's authorizer derives it. A WebSocket
    ``pods/exec`` (a GET) needs ``create`` since Kubernetes 1.35, as a POST always did."""
    if subresource in _CONNECT_SUBRESOURCES:
        return "create"
    if method == "GET":
        if params.get("watch", "").lower() in {"true", "1"}:
            return "watch"
        return "get" if name else "list"
    return _HTTP_VERBS.get(method, method.lower())


# ------------------------------------------------------------------ label and field selectors


def _watch_timeout(params: Mapping[str, str]) -> float:
    """How long kube-apiserver keeps a watch open: ``timeoutSeconds``, else a random 30-60
    minutes (its default ``--min-request-timeout`` of 1800 s times a factor in [1, 2))."""
    raw = params.get("timeoutSeconds")
    if raw is not None and raw.strip().isdigit() and int(raw) > 0:
        return float(int(raw))
    return 1800.0 * (1.0 + random.random())


class SelectorError(ValueError):
    """A ``labelSelector`` or ``fieldSelector`` the API server refuses (400 BadRequest)."""


_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_SELECTOR_SYMBOLS = set("=!(),<>")
_SELECTOR_SPACE = set(" \t\r\n")


def _check_label_key(key: str) -> None:
    """A qualified name, ``[prefix/]name``, as ``validation.IsQualifiedName`` checks it."""
    parts = key.split("/")
    if len(parts) > 2:
        raise SelectorError(f"invalid label key {key!r}: at most one '/' is allowed")
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            raise SelectorError(f"invalid label key {key!r}: prefix part must be non-empty")
        if len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix):
            raise SelectorError(
                f"invalid label key {key!r}: prefix part must be a lowercase RFC 1123 subdomain"
            )
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must be 1-63 characters, alphanumeric, "
            "'-', '_' or '.', starting and ending with an alphanumeric character"
        )


def _check_label_value(key: str, value: str) -> None:
    if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
        raise SelectorError(
            f"invalid label value {value!r} for {key!r}: must be at most 63 characters, "
            "empty or alphanumeric, '-', '_' or '.', starting and ending with an alphanumeric"
        )


@attrs.frozen
class Requirement:
    """One term of a label selector: ``op`` is ``in``, ``notin``, ``=``, ``==``, ``!=``,
    ``exists``, ``!`` (does not exist), ``>`` or ``<``."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        """``labels.Requirement.Matches``: ``!=`` and ``notin`` match an absent label."""
        present = self.key in labels
        if self.op in ("in", "=", "=="):
            return present and labels[self.key] in self.values
        if self.op in ("notin", "!="):
            return not present or labels[self.key] not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if not present or not _INTEGER.fullmatch(labels[self.key]):
            return False  # > and <: a label that is not an integer never matches
        bound = int(next(iter(self.values)))
        value = int(labels[self.key])
        return value > bound if self.op == ">" else value < bound


def _lex_selector(text: str) -> list[str]:
    """Tokens as kube's label selector lexer cuts them: identifiers, ``in``/``notin``, the
    operators ``!= == = ! ( ) , > <``; whitespace separates. Ends with ``""`` (end)."""
    tokens, i = [], 0
    while i < len(text):
        if text[i] in _SELECTOR_SPACE:
            i += 1
        elif text[i] in _SELECTOR_SYMBOLS:
            width = 2 if text[i : i + 2] in ("!=", "==") else 1
            tokens.append(text[i : i + width])
            i += width
        else:
            start = i
            while i < len(text) and text[i] not in _SELECTOR_SYMBOLS | _SELECTOR_SPACE:
                i += 1
            tokens.append(text[start:i])
    return [*tokens, ""]


_OPERATORS = {"in", "notin", "=", "==", "!=", ">", "<"}


def _is_identifier(token: str) -> bool:
    """In value and key positions the lexer's ``in``/``notin`` are plain identifiers."""
    return bool(token) and token[0] not in _SELECTOR_SYMBOLS


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    """A label selector as ``labels.Parse`` reads it (k8s.io/apimachinery): comma-separated
    requirements, all of which must match: ``key``, ``!key``, ``key=v``, ``key==v``,
    ``key!=v``, ``key in (v1,v2)``, ``key notin (v1)``, ``key>1``, ``key<1``. ``""`` selects
    everything. Raises :class:`SelectorError` where the API server answers 400."""
    tokens = _lex_selector(text)
    pos = 0

    def take() -> str:
        nonlocal pos
        token = tokens[min(pos, len(tokens) - 1)]
        pos += 1
        return token

    def peek() -> str:
        return tokens[min(pos, len(tokens) - 1)]

    def found(token: str, expected: str) -> SelectorError:
        return SelectorError(f"unable to parse requirement: found '{token}', expected: {expected}")

    requirements: list[Requirement] = []
    while peek():
        token = take()
        negated = token == "!"
        if negated:
            token = take()
        if not _is_identifier(token):
            raise found(token, "!, identifier, or 'end of string'" if not negated else "identifier")
        key = token
        _check_label_key(key)
        if negated or peek() in ("", ","):
            requirements.append(Requirement(key, "!" if negated else "exists"))
        else:
            op = take()
            if op not in _OPERATORS:
                raise found(op, ", ".join(sorted(_OPERATORS)))
            values: list[str] = []
            if op in ("in", "notin"):
                opening = take()
                if opening != "(":
                    raise found(opening, "'('")
                if peek() == ")":
                    values.append("")  # "in ()" is the set {""}, as kube's parser reads it
                while peek() != ")":
                    values.append(take() if _is_identifier(peek()) else "")
                    if peek() == ",":
                        take()
                        if peek() == ")":
                            values.append("")
                    elif peek() != ")":
                        raise found(peek(), "',' or ')'")
                take()
            elif peek() in ("", ","):
                values.append("")  # "key=" compares with the empty value
            elif _is_identifier(peek()):
                values.append(take())
            else:
                raise found(peek(), "identifier")
            for value in values:
                _check_label_value(key, value)
            if op in (">", "<") and not _INTEGER.fullmatch(values[0]):
                raise SelectorError(
                    f"invalid value {values[0]!r} for {key!r}: for 'Gt', 'Lt' operators, "
                    "the value must be an integer"
                )
            requirements.append(Requirement(key, op, frozenset(values)))
        after = take()
        if after == ",":
            if not (_is_identifier(peek()) or peek() == "!"):
                raise found(peek(), "identifier after ','")
        elif after != "":
            raise found(after, "',' or 'end of string'")
    return tuple(requirements)


def field_value(obj: dict[str, Any], path: str, default: str = "") -> str:
    """The value at dotted ``path`` as a field selector compares it (a string; booleans as
    ``true``/``false``), ``default`` where it is absent (the Go zero value)."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return default
    return str(value).lower() if isinstance(value, bool) else str(value)


_EVENT_FIELDS = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")

# Field labels beyond metadata.name and metadata.namespace, as each kind's registry serves
# them (kubernetes/pkg/registry/*/*/strategy.go, ...ToSelectableFields), keyed by
# (group, plural): field label -> (path in the object, value where absent). Custom resources
# have only the two metadata fields (CRD selectableFields are not emulated).
FIELD_LABELS: dict[tuple[str, str], dict[str, tuple[str, str]]] = {
    ("", "pods"): {
        "spec.nodeName": ("spec.nodeName", ""),
        "spec.restartPolicy": ("spec.restartPolicy", ""),
        "spec.schedulerName": ("spec.schedulerName", ""),
        "spec.serviceAccountName": ("spec.serviceAccountName", ""),
        "spec.hostNetwork": ("spec.hostNetwork", "false"),
        "status.phase": ("status.phase", ""),
        "status.podIP": ("status.podIP", ""),
        "status.nominatedNodeName": ("status.nominatedNodeName", ""),
    },
    ("", "events"): {
        **{f"involvedObject.{f}": (f"involvedObject.{f}", "") for f in _EVENT_FIELDS},
        "reason": ("reason", ""),
        "reportingComponent": ("reportingComponent", ""),
        "source": ("source.component", ""),
        "type": ("type", ""),
    },
    ("", "secrets"): {"type": ("type", "")},
    ("", "namespaces"): {"status.phase": ("status.phase", "")},
    ("batch", "jobs"): {"status.successful": ("status.succeeded", "0")},
}


def _unescape_field_value(value: str) -> str:
    """``fields.UnescapeValue``: ``\\\\``, ``\\,`` and ``\\=`` are escapes; a bare ``,`` or
    ``=`` or any other escape is an error."""
    out, escaped = [], False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence '\\{char}'")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise SelectorError(f"invalid field selector: unescaped {char!r} in value")
        else:
            out.append(char)
    if escaped:
        raise SelectorError("invalid field selector: invalid escape sequence '\\'")
    return "".join(out)


def parse_field_selector(
    text: str, group: str = "", plural: str = ""
) -> tuple[tuple[str, bool, str], ...]:
    """A field selector as ``fields.ParseSelector`` reads it: comma-separated ``field=value``,
    ``field==value`` or ``field!=value`` terms (``(field, negated, value)``), all of which
    must match. A field the kind does not serve (``metadata.name``, ``metadata.namespace``
    and :data:`FIELD_LABELS`) is refused as the API server refuses it."""
    terms, start, escaped = [], 0, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    known = {"metadata.name", "metadata.namespace", *FIELD_LABELS.get((group, plural), {})}
    parsed = []
    for term in sorted(t for t in terms if t):
        match = re.search("!=|==|=", term)
        if match is None:
            raise SelectorError(f"invalid selector: {text!r}; can't understand {term!r}")
        field, value = term[: match.start()], _unescape_field_value(term[match.end() :])
        if field not in known:
            raise SelectorError(f"field label not supported: {field}")
        parsed.append((field, match.group() == "!=", value))
    return tuple(parsed)


@attrs.frozen
class Selector:
    """A list's or watch's ``labelSelector`` and ``fieldSelector`` together."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[tuple[str, bool, str], ...] = ()
    group: str = ""
    plural: str = ""

    @classmethod
    def of(cls, request: rendering.Request) -> Selector:
        """The request's selectors; :class:`kmock.KubernetesError` 400 if malformed."""
        resource = request.resource
        group = (resource.group or "") if resource is not None else ""
        plural = (resource.plural or "") if resource is not None else ""
        try:
            labels = parse_label_selector(request.params.get("labelSelector", ""))
            fields = parse_field_selector(request.params.get("fieldSelector", ""), group, plural)
        except SelectorError as exc:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=str(exc)) from None
        return cls(labels=labels, fields=fields, group=group, plural=plural)

    def matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if not all(req.matches(labels) for req in self.labels):
            return False
        extra = FIELD_LABELS.get((self.group, self.plural), {})
        for field, negated, value in self.fields:
            if field == "metadata.name":
                actual = meta.get("name") or ""
            elif field == "metadata.namespace":
                actual = meta.get("namespace") or ""
            else:
                actual = field_value(obj, *extra[field])
            if (actual == value) == negated:
                return False
        return True


def _bad_request(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=400, reason="BadRequest", message=message)


def _int_param(params: Any, name: str) -> int | None:
    """An integer query parameter, or None if absent; 400 if it is not an integer (the
    parameter codec's answer)."""
    value = params.get(name)
    if value is None:
        return None
    if not _INTEGER.fullmatch(value):
        raise _bad_request(f"{name}: {value!r} is not an integer")
    return int(value)


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
        if request.resource is not None and request.action in (
            enums.action.LIST,
            enums.action.WATCH,
        ):
            Selector.of(request)  # a malformed selector is a 400 before anything is served
        if (
            request.method == enums.method.GET
            and request.resource is not None
            and request.resource.group == ""
            and request.resource.plural == "pods"
            and request.name is not None
        ):
            if request.subresource == "log":
                return await self._serve_log(request)
            if request.subresource == "exec":
                return await self._serve_exec(request)
        if (
            request.action == enums.action.UPDATE
            and request.resource is not None
            and request.name is not None
        ):
            return await self._patch(request)
        return await super()._handle(request)

    async def _patch(self, request: rendering.Request) -> Any:
        """PATCH of one object, instead of kmock's (which merges every body as a dict merge
        and writes even when nothing changes): see :func:`patched`. Done under kmock's lock,
        so two patches of one object never lose either's change."""
        key = (request.resource, request.namespace, request.name)
        released = None
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            obj = self._objects[key]
            current = copy.deepcopy(obj.raw)
            new = patched(current, request.data, content_type(request.headers))
            if new != current:
                meta = dict(new.get("metadata") or {})
                meta["resourceVersion"] = self._next_version()
                if request.subresource is None and new.get("spec") != current.get("spec"):
                    meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
                new["metadata"] = meta
                obj.patch([{"op": "replace", "path": "", "value": new}])
                await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
                if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                    released = obj  # its last finalizer is gone: deleted after the response
        try:
            # kmock's own handler minus its object update: reactions, then the stored object.
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        finally:
            if released is not None:
                async with self._lock:
                    raw = released.raw
                    released.delete()
                    await self._buses[request.resource].put({"type": "DELETED", "object": raw})

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        """kmock's list, of the objects the request's selectors match."""
        selector = Selector.of(request)
        listing = await super()._serve_list(request)
        assert isinstance(listing, dict)
        listing["items"] = [obj for obj in listing["items"] if selector.matches(obj)]
        return listing

    def _in_scope(self, request: rendering.Request, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` is in the watched URL's namespace and (a watch of one object) name."""
        meta = obj.get("metadata") or {}
        return (request.namespace is None or meta.get("namespace") == request.namespace) and (
            request.name is None or meta.get("name") == request.name
        )

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """A watch of the objects the request's selectors match, as kube-apiserver's watch
        cache serves one: what an event's object looked like before and after decides the
        event a watcher gets: ADDED when the object starts matching (created, or changed to
        match), MODIFIED while it matches, DELETED when it stops matching (deleted, or
        changed to not match: then the object as it last matched, with the new
        ``resourceVersion``), nothing while it does not match.

        Unlike kmock's, the bus is marked under the lock the initial objects are read under,
        so no event falls between them and the stream."""
        selector = Selector.of(request)
        assert request.resource is not None  # WATCH is a resource action
        yield b""  # the headers go out now: a watch is a stream even while nothing happens
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            visible: dict[tuple[str | None, str | None], dict[str, Any]] = {}
            for (resource, _, _), obj in self._objects.items():
                if resource != request.resource or obj.deleted:
                    continue
                raw = obj.raw
                if self._in_scope(request, raw) and selector.matches(raw):
                    meta = raw.get("metadata") or {}
                    visible[meta.get("namespace"), meta.get("name")] = raw
        # kube-apiserver ends a watch after its ``timeoutSeconds`` (kopf asks for 300 s and
        # then watches again); without it after 30-60 min (--min-request-timeout 1800 s).
        deadline = asyncio.get_running_loop().time() + _watch_timeout(request.params)
        stream = bus.stream(since=marker)
        try:
            for raw in list(visible.values()):
                yield {"type": "ADDED", "object": raw}
            while True:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    event = await asyncio.wait_for(anext(stream), max(left, 0.0))
                except (TimeoutError, StopAsyncIteration):
                    return  # the server ends the stream; the client watches again
                raw = event.get("object") or {}
                if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
                    yield event
                    continue
                meta = raw.get("metadata") or {}
                key = (meta.get("namespace"), meta.get("name"))
                before = visible.pop(key, None)
                if (
                    event["type"] != "DELETED"
                    and self._in_scope(request, raw)
                    and selector.matches(raw)
                ):
                    visible[key] = raw
                    yield {"type": "MODIFIED" if before else "ADDED", "object": raw}
                elif before is not None and event["type"] == "DELETED":
                    yield event
                elif before is not None:
                    gone = copy.deepcopy(before)
                    gone["metadata"]["resourceVersion"] = meta.get("resourceVersion")
                    yield {"type": "DELETED", "object": gone}
        finally:
            await stream.aclose()
            await bus.unmark(marker)

    async def _serve_log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """``pods/log`` as text/plain: the file the job runner names in the pod annotation
        :data:`LOG_PATH_ANNOTATION` (the first container's output), empty without it.

        Checked in kube's order: the query (400 for a non-integer), ``PodLogOptions``
        validation (422), the pod (404), the container (400), then the kubelet's answer
        (``previous``: 400, as no container here is ever restarted in place)."""
        assert request.resource is not None and request.name is not None  # see _handle
        params = request.params
        tail_lines = _int_param(params, "tailLines")
        limit_bytes = _int_param(params, "limitBytes")
        invalid = []
        if tail_lines is not None and tail_lines < 0:
            invalid.append(
                f"tailLines: Invalid value: {tail_lines}: must be greater than or equal to 0"
            )
        if limit_bytes is not None and limit_bytes < 1:
            invalid.append(f"limitBytes: Invalid value: {limit_bytes}: must be greater than 0")
        if invalid:
            raise kmock.KubernetesError(
                status=422,
                reason="Invalid",
                message=f'PodLogOptions "{request.name}" is invalid: {", ".join(invalid)}',
            )
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            found = key in self._objects and not self._objects[key].deleted
            pod = self._objects[key].raw if found else None
        if pod is None:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message=f'pods "{request.name}" not found'
            )
        spec = pod.get("spec") or {}
        containers = [c.get("name") for c in spec.get("containers") or []]
        every = [c.get("name") for c in spec.get("initContainers") or []] + containers
        every += [c.get("name") for c in spec.get("ephemeralContainers") or []]
        container = params.get("container") or ""
        if not container and len(containers) == 1:
            container = containers[0]
        elif not container:
            raise _bad_request(
                f"a container name must be specified for pod {request.name}, "
                f"choose one of: [{' '.join(map(str, every))}]"
            )
        elif container not in every:
            raise _bad_request(f"container {container} is not valid for pod {request.name}")
        if params.get("previous", "").lower() in ("true", "1"):
            raise _bad_request(
                f'previous terminated container "{container}" in pod "{request.name}" not found'
            )
        text = b""
        path = ((pod.get("metadata") or {}).get("annotations") or {}).get(LOG_PATH_ANNOTATION)
        if path and containers and container == containers[0]:
            try:
                text = await asyncio.to_thread(Path(path).read_bytes)
            except FileNotFoundError:
                text = b""  # the container has not started writing yet
        if tail_lines is not None:
            lines = re.findall(rb"[^\n]*\n|[^\n]+$", text)
            text = b"".join(lines[-tail_lines:]) if tail_lines else b""
        if limit_bytes is not None:
            text = text[:limit_bytes]
        return aiohttp.web.Response(body=text, content_type="text/plain")

    async def _running_container(self, request: rendering.Request) -> tuple[str, int]:
        """(container name, pid) of the running container an exec targets; the API
        server's 404 (no pod) and 400 (bad or not running container) otherwise."""
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            found = key in self._objects and not self._objects[key].deleted
            pod = copy.deepcopy(self._objects[key].raw) if found else None
        if pod is None:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message=f'pods "{request.name}" not found'
            )
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.params.get("container") or ""
        if not container and len(containers) == 1:
            container = containers[0]
        elif container not in containers:
            raise _bad_request(f"container {container} is not valid for pod {request.name}")
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            cid = str(status.get("containerID") or "")
            if status.get("name") == container and "running" in (status.get("state") or {}):
                if cid.startswith("emulated://"):
                    return container, int(cid.removeprefix("emulated://"))
        raise _bad_request(
            f"unable to upgrade connection: container {container} in pod {request.name} is "
            "not running"
        )

    def _exec_faults(self) -> dict[str, int]:
        """The test's faults for this exec (then forgotten): ``cut_stdin_after`` /
        ``cut_stdout_after`` bytes, ``stdout_delay_ms`` per stdout message (a slow link)."""
        if self.audit_path is None:
            return {}
        path = self.audit_path.with_name(EXEC_FAULTS_FILE)
        try:
            faults = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        path.unlink(missing_ok=True)
        return {k: int(v) for k, v in faults.items()}

    async def _serve_exec(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """``pods/exec`` as kube-apiserver proxies it to the kubelet (module docstring):
        the command runs in the container's mount namespace with its environment and
        working directory; stdin, stdout and stderr are streamed on channels 0, 1 and 2 as
        they come (never buffered whole), and the exit status follows on channel 3."""
        raw = request._raw_request
        assert raw is not None
        command = raw.query.getall("command", [])
        if not command:
            raise _bad_request("you must specify at least 1 command")
        _, pid = await self._running_container(request)
        ws = aiohttp.web.WebSocketResponse(protocols=(EXEC_PROTOCOL,), max_msg_size=0)
        if not ws.can_prepare(raw).ok:
            raise _bad_request("pods/exec needs a websocket upgrade (SPDY is not emulated)")
        await ws.prepare(raw)
        faults = self._exec_faults()
        want_stdin = raw.query.get("stdin", "").lower() in ("true", "1")
        try:
            env = dict(
                item.split("=", 1)
                for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
                if "=" in item
            )
        except OSError:  # the container ended in between
            env = {}
        proc = await asyncio.create_subprocess_exec(
            "nsenter",
            "-t",
            str(pid),
            "--mount",
            "--wd",
            "--",
            *command,
            stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        cut = asyncio.Event()

        def drop_connection() -> None:
            cut.set()
            if raw.transport is not None:
                raw.transport.abort()  # no close frame: what a lost connection looks like

        async def pump_stdin() -> None:
            assert proc.stdin is not None
            received = 0
            limit = faults.get("cut_stdin_after")
            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                        continue
                    if msg.data[0] != 0:
                        continue  # resize (4) and others: ignored
                    data = msg.data[1:]
                    if limit is not None and received + len(data) > limit:
                        proc.stdin.write(data[: limit - received])
                        drop_connection()
                        break
                    received += len(data)
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (ConnectionError, RuntimeError):
                pass
            finally:
                proc.stdin.close()  # the client is gone or done: the command's stdin ends

        async def pump(stream: asyncio.StreamReader | None, channel: int) -> None:
            assert stream is not None
            sent = 0
            limit = faults.get("cut_stdout_after") if channel == 1 else None
            delay = faults.get("stdout_delay_ms", 0) / 1000 if channel == 1 else 0
            while chunk := await stream.read(32 * 1024):
                await asyncio.sleep(delay)
                if cut.is_set():
                    continue  # nobody listens: output is dropped until the command ends
                if limit is not None and sent + len(chunk) > limit:
                    await ws.send_bytes(bytes([channel]) + chunk[: limit - sent])
                    drop_connection()
                    proc.kill()  # its output has nowhere to go (as SIGPIPE would end it)
                    continue
                sent += len(chunk)
                try:
                    await ws.send_bytes(bytes([channel]) + chunk)
                except (ConnectionError, RuntimeError):
                    cut.set()

        stdin_task = asyncio.ensure_future(pump_stdin()) if want_stdin else None
        await asyncio.gather(pump(proc.stdout, 1), pump(proc.stderr, 2))
        code = await proc.wait()
        if not cut.is_set():
            status: dict[str, Any] = {"metadata": {}, "status": "Success"}
            if code != 0:
                status = {
                    "metadata": {},
                    "status": "Failure",
                    "message": f"command terminated with non-zero exit code: error executing "
                    f"command {command}, exit code {code}",
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
                }
            try:
                await ws.send_bytes(bytes([3]) + json.dumps(status).encode())
                await ws.close()
            except (ConnectionError, RuntimeError):
                pass
        if stdin_task is not None:
            stdin_task.cancel()
            await asyncio.gather(stdin_task, return_exceptions=True)
        return ws

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
            "verb": rbac_verb(
                str(request.method.value),
                request.name,
                dict(request.params),
                request.subresource,
            ),
            "group": request.resource.group or "",
            "resource": resource,
            "namespace": request.namespace,
            "name": request.name,
        }
        data = request.data if isinstance(request.data, dict) else {}
        if request.name is None and request.method.value == "POST":
            entry["name"] = (data.get("metadata") or {}).get("name")
            if isinstance(data.get("involvedObject"), dict):
                entry["involvedObject"] = data["involvedObject"].get("name")
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
            self._set(request, data=without_nulls(data))


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

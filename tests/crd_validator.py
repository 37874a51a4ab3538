"""Validate a document against the generated CRD the way the API server would (test helper).

Stands in for a real kube-apiserver, which cannot run here: OpenAPI v3 checks through
``jsonschema``, kubectl's strict field validation (unknown fields rejected), uniqueness of
``x-kubernetes-list-type: map`` keys and the CEL ``x-kubernetes-validations`` rules through
``cel-python``. Nulls are pruned and schema defaults applied first, as the API server does:
a rule that a default makes fail (``claimName`` with a defaulted ``size``) fails here too.

Also what the API server checks before the schema: ``apiVersion`` and ``kind`` name the
resource, ``metadata`` is an ObjectMeta with a name (a DNS-1123 subdomain), and ``status``
is dropped from what a user creates (the status subresource is enabled). Patterns are
matched as Go's regexp does: ``$`` is the end of the text, not also before a final newline
as in Python's ``re``.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

import celpy
import jsonschema

from sierra_operator.cluster.crd import render_crd
from sierra_operator.core.model import API_VERSION, KIND

INT64 = (-(2**63), 2**63 - 1)
SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# ObjectMeta's fields and the JSON type the API server decodes each into.
OBJECT_META: dict[str, type | tuple[type, ...] | None] = {
    "name": str,
    "generateName": str,
    "namespace": str,
    "selfLink": str,
    "uid": str,
    "resourceVersion": str,
    "generation": int,
    "creationTimestamp": None,
    "deletionTimestamp": None,
    "deletionGracePeriodSeconds": None,
    "labels": dict,
    "annotations": dict,
    "ownerReferences": None,
    "finalizers": None,
    "managedFields": None,
}


@functools.cache
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def spec_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the served version (a copy: rendering it takes milliseconds,
    so :func:`crd_errors` keeps one)."""
    return copy.deepcopy(_schema())


def _strict(node: Any) -> Any:
    """Reject unknown properties, as `kubectl apply` (strict field validation) does."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _defaulted(schema: dict[str, Any], value: Any) -> Any:
    """``value`` as the API server validates it: null properties pruned (none is nullable),
    then the schema's defaults filled in where a property is absent, recursively."""
    if isinstance(value, dict):
        out = {k: v for k, v in value.items() if v is not None}
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = _defaulted(sub, out[key])
        if isinstance(schema.get("additionalProperties"), dict):
            for key in set(out) - set(schema.get("properties", {})):
                out[key] = _defaulted(schema["additionalProperties"], out[key])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_defaulted(schema["items"], item) for item in value]
    return value


# celpy raises Python's recursion limit when an Environment is made: once, at import, rather
# than in the middle of a test (hypothesis warns when the limit changes under it).
celpy.Environment()


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


_ABSENT = object()
"""No old value: a create, or a field the old object did not have."""


def _extensions(
    schema: dict[str, Any], value: Any, path: str, errors: list[str], old: Any = _ABSENT
) -> None:
    """CEL rules of ``schema`` and below. A transition rule (one that names ``oldSelf``) is
    checked only on an update where the old object had the field, as the API server does."""
    for rule in schema.get("x-kubernetes-validations", []):
        bindings = {"self": celpy.json_to_cel(value)}
        if "oldSelf" in rule["rule"]:
            if old is _ABSENT:
                continue
            bindings["oldSelf"] = celpy.json_to_cel(old)
        try:
            ok = bool(_program(rule["rule"]).evaluate(bindings))
        except Exception:  # a rule that cannot be evaluated fails, as in the API server
            ok = False
        if not ok:
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        olds = old if isinstance(old, dict) else {}
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _extensions(sub, value[key], f"{path}.{key}", errors, olds.get(key, _ABSENT))
    elif isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
            if len(seen) != len(set(seen)):
                errors.append(f"{path}: Duplicate value")
        for i, item in enumerate(value):
            _extensions(schema.get("items", {}), item, f"{path}[{i}]", errors)


def _go_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """JSON Schema's ``pattern`` with Go's meaning of a final ``$``: the end of the text."""
    if not isinstance(instance, str):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if not re.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _go_pattern})


@functools.cache
def _validator() -> Any:
    return _Validator(_strict(_schema()))


def _envelope_errors(document: Any) -> list[str]:
    """What the API server refuses before it looks at the CRD's schema."""
    if not isinstance(document, dict):
        return ["(document): not an object"]
    errors = []
    if document.get("apiVersion") != API_VERSION:
        errors.append(f"apiVersion: must be {API_VERSION}")
    if document.get("kind") != KIND:
        errors.append(f"kind: must be {KIND}")
    meta = document.get("metadata")
    if not isinstance(meta, dict):
        return [*errors, "metadata: must be an object with a name"]
    for key, value in meta.items():
        if key not in OBJECT_META:
            errors.append(f"metadata.{key}: unknown field")
            continue
        wanted = OBJECT_META[key]
        if value is None or wanted is None:
            continue
        if wanted is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                errors.append(f"metadata.{key}: must be an integer")
            elif not INT64[0] <= value <= INT64[1]:
                errors.append(f"metadata.{key}: out of int64 range")
        elif wanted is dict:
            if not isinstance(value, dict) or not all(
                isinstance(v, str) for v in value.values() if v is not None
            ):
                errors.append(f"metadata.{key}: must be a map of strings")
        elif not isinstance(value, wanted):
            errors.append(f"metadata.{key}: must be a string")
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not SUBDOMAIN.fullmatch(name):
        errors.append("metadata.name: required, a DNS-1123 subdomain")
    return errors


def _as_validated(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """``document`` as the API server validates it: without status (a subresource), with
    nulls pruned and defaults applied. The same for the new object and the stored one."""
    return _defaulted(schema, {k: v for k, v in document.items() if k != "status"})


def crd_errors(document: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every reason the API server would refuse ``document`` (empty: accepted): as a
    create, or with ``old`` (the stored object, already accepted) as an update of it."""
    errors = _envelope_errors(document)
    if errors:
        return errors
    schema = _schema()
    document = _as_validated(schema, document)
    errors = [
        ".".join(str(p) for p in e.absolute_path) + ": " + e.message
        for e in _validator().iter_errors(document)
    ]
    if not errors:
        stored: Any = _ABSENT
        if old is not None:
            stored = _as_validated(schema, old)
        _extensions(schema, document, "", errors, stored)
    return errors

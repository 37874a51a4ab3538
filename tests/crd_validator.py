"""Validate a document against the generated CRD the way the API server would (test helper).

Stands in for a real kube-apiserver, which cannot run here: OpenAPI v3 checks through
``jsonschema``, kubectl's strict field validation (unknown fields rejected), uniqueness of
``x-kubernetes-list-type: map`` keys and the CEL ``x-kubernetes-validations`` rules through
``cel-python``. Nulls are pruned and schema defaults applied first, as the API server does:
a rule that a default makes fail (``claimName`` with a defaulted ``size``) fails here too.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from sierra_operator.crd import render_crd


def spec_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the served version."""
    return render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


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


def _extensions(schema: dict[str, Any], value: Any, path: str, errors: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        env = celpy.Environment()
        prog = env.program(env.compile(rule["rule"]))
        if not prog.evaluate({"self": celpy.json_to_cel(value)}):
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _extensions(sub, value[key], f"{path}.{key}", errors)
    elif isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
            if len(seen) != len(set(seen)):
                errors.append(f"{path}: Duplicate value")
        for i, item in enumerate(value):
            _extensions(schema.get("items", {}), item, f"{path}[{i}]", errors)


def crd_errors(document: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse ``document`` (empty: accepted)."""
    schema = spec_schema()
    document = _defaulted(schema, document)
    validator = jsonschema.Draft7Validator(_strict(schema))
    errors = [
        ".".join(str(p) for p in e.absolute_path) + ": " + e.message
        for e in validator.iter_errors(document)
    ]
    if not errors:
        _extensions(schema, document, "", errors)
    return errors

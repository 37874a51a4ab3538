"""The SierraBatch CRD, generated from :mod:`sierra_operator.core.model` (its one source of truth).

``sierra-operator crd > crds/sierrabatch.yaml`` writes the file; a test fails when the two
differ. Pydantic's JSON schema is turned into a Kubernetes structural schema: references
inlined, ``X | None`` made optional, titles dropped, CEL rules kept as
``x-kubernetes-validations``.
"""

from __future__ import annotations

from typing import Any

import yaml

from sierra_operator.core.model import (
    GROUP,
    KIND,
    NAME_MESSAGE,
    NAME_RULE,
    VERSION,
    BatchStatus,
    SierraBatchSpec,
)

PLURAL = "sierrabatches"
SINGULAR = "sierrabatch"
SHORT_NAMES = ["sb"]

_DROP = {"title"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and rewrite pydantic-isms into what the API server accepts."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                rest.pop("default")
            merged = {**_structural(options[0], defs), **_structural(rest, defs)}
            return merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
            continue
        out[key] = _structural(value, defs)
    if "properties" in out and out.get("additionalProperties") is False:
        # Structural schemas forbid both; the API server prunes/rejects unknown fields itself.
        del out["additionalProperties"]
    if out.get("format") == "date-time":
        out["type"] = "string"
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _schema_of(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    result: dict[str, Any] = _structural(raw, defs)
    return result


def _without_defaults(node: Any) -> Any:
    """Status is written by the operator, never defaulted by the API server."""
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def open_api_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the served version."""
    spec = _schema_of(SierraBatchSpec)
    status = _without_defaults(_schema_of(BatchStatus))
    return {
        "type": "object",
        "description": "A SIERRA batch experiment run on Prefect: experiments one after "
        "another, the runs of each in parallel.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "sierra.research.io/v1alpha1"},
            "kind": {"type": "string", "description": "SierraBatch"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        # The batch name becomes the names of its claim, workers and labels: a name the API
        # server takes but those cannot (dots, 64+ characters) is refused at apply time.
        "x-kubernetes-validations": [
            {"rule": NAME_RULE, "message": f"metadata.name: {NAME_MESSAGE}"},
        ],
    }


def render_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Experiment",
                            "type": "string",
                            "jsonPath": ".status.currentExperimentName",
                        },
                        {"name": "Runs", "type": "string", "jsonPath": ".status.runsDone"},
                        {
                            "name": "Age",
                            "type": "date",
                            "jsonPath": ".metadata.creationTimestamp",
                        },
                    ],
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """The CRD as the YAML committed in crds/sierrabatch.yaml."""
    header = (
        "# Generated from operator/sierra_operator/core/model.py by `sierra-operator crd`.\n"
        "# Do not edit: change the model and regenerate (a test checks they agree).\n"
    )
    return header + yaml.safe_dump(render_crd(), sort_keys=False, width=100)

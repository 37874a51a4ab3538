"""The CRD is generated from the model, is structural, and agrees with the model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sierra_operator.cluster.crd import render_crd, render_crd_yaml
from sierra_operator.core.model import SpecError, parse_batch
from tests.crd_validator import crd_errors, spec_schema

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "apiVersion": "sierra.research.io/v1alpha1",
    "kind": "SierraBatch",
    "metadata": {"name": "demo"},
    "spec": {"experiments": [{"name": "c1-exp0", "runs": [{"command": "true"}]}]},
}


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = doc["spec"]
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


DELETE = object()

VALID = {
    "inline": with_spec(),
    "commands file": with_spec(experiments=DELETE, commandsFile="p/c/s/b/commands.txt"),
    "sierra": with_spec(experiments=DELETE, sierra={"args": ["--project=x"], "postStages": [3, 4]}),
    "full execution": with_spec(
        execution={
            "workers": 3,
            "parallelism": 8,
            "retries": 2,
            "failurePolicy": "Continue",
            "runTimeoutSeconds": 60,
            "resources": {"requests": {"cpu": "1"}},
        }
    ),
    "image with build": with_spec(
        image={
            "repository": "localhost:5001/x",
            "tag": "v1",
            "build": {"context": "https://g/x.git#main", "buildArgs": {"A": "1"}},
            "pushSecret": "regcred",
        }
    ),
    "storage": with_spec(
        sierraRoot={
            "mountPath": "/data",
            "size": "20Gi",
            "storageClassName": "nfs",
            "accessModes": ["ReadWriteOnce"],
            "deleteWithBatch": True,
        }
    ),
    "adopted claim": with_spec(
        sierraRoot={"mountPath": "/data", "claimName": "shared", "deleteWithBatch": True}
    ),
    "adopted claim, null storage class": with_spec(
        sierraRoot={"claimName": "shared", "storageClassName": None}
    ),
    "quantities": with_spec(
        sierraRoot={"size": "1.5Gi"},
        execution={
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
                "limits": {"cpu": "2", "memory": "1.5G", "ephemeral-storage": "1e9"},
            }
        },
    ),
    "commands file with dots": with_spec(
        experiments=DELETE, commandsFile="./proj/v1..2/..hidden/batch/commands.txt"
    ),
    "commands file is sierra-root": with_spec(experiments=DELETE, commandsFile="."),
    "prefect": with_spec(
        prefect={
            "apiUrl": "http://prefect:4200/api",
            "apiKeySecret": {"name": "prefect", "key": "api-key"},
            "workPool": "p1",
            "workQueue": "q1",
        }
    ),
}

INVALID = {
    "unknown field": (with_spec(execution={"paralelism": 2}), "spec.execution.paralelism"),
    "negative parallelism": (
        with_spec(execution={"parallelism": -1}),
        "spec.execution.parallelism",
    ),
    "zero workers": (with_spec(execution={"workers": 0}), "spec.execution.workers"),
    "bad policy": (
        with_spec(execution={"failurePolicy": "Ignore"}),
        "spec.execution.failurePolicy",
    ),
    "empty experiment": (
        with_spec(experiments=[{"name": "e", "runs": []}]),
        "spec.experiments[0].runs",
    ),
    "no experiments": (with_spec(experiments=[]), "spec.experiments"),
    "bad experiment name": (
        with_spec(experiments=[{"name": "a b", "runs": [{"command": "x"}]}]),
        "spec.experiments[0].name",
    ),
    "duplicate names": (
        with_spec(
            experiments=[
                {"name": "e", "runs": [{"command": "x"}]},
                {"name": "e", "runs": [{"command": "y"}]},
            ]
        ),
        "unique",
    ),
    "no source": (with_spec(experiments=DELETE), "exactly one source"),
    "two sources": (with_spec(commandsFile="x.txt"), "exactly one source"),
    "relative mount": (with_spec(sierraRoot={"mountPath": "data"}), "spec.sierraRoot.mountPath"),
    "bad stage": (
        with_spec(experiments=DELETE, sierra={"args": ["x"], "postStages": [2]}),
        "spec.sierra.postStages[0]",
    ),
    "bad api url": (with_spec(prefect={"apiUrl": "prefect:4200"}), "spec.prefect.apiUrl"),
    "empty command": (
        with_spec(experiments=[{"name": "e", "runs": [{"command": ""}]}]),
        "spec.experiments[0].runs[0].command",
    ),
    "string for int": (with_spec(execution={"retries": "two"}), "spec.execution.retries"),
    "cpu not a quantity": (
        with_spec(execution={"resources": {"requests": {"cpu": "banana"}}}),
        "spec.execution.resources.requests.cpu: 'banana' is not a Kubernetes quantity; "
        'use e.g. "500m" or "2" for cpu, "1Gi" for memory',
    ),
    "memory limit with a space": (
        with_spec(execution={"resources": {"limits": {"memory": "1 Gi"}}}),
        "spec.execution.resources.limits.memory: '1 Gi' is not a Kubernetes quantity",
    ),
    "memory limit in GB": (
        with_spec(execution={"resources": {"limits": {"memory": "2GB"}}}),
        "spec.execution.resources.limits.memory: '2GB' is not a Kubernetes quantity",
    ),
    "size not a quantity": (
        with_spec(sierraRoot={"size": "ten gigs"}),
        "spec.sierraRoot.size: 'ten gigs' is not a Kubernetes quantity; use e.g. \"10Gi\"",
    ),
    "claim with size": (
        with_spec(sierraRoot={"claimName": "shared", "size": "10Gi"}),
        "spec.sierraRoot.size: not allowed with spec.sierraRoot.claimName (an existing PVC is "
        "adopted as it is); remove one of them",
    ),
    "claim with storage class": (
        with_spec(sierraRoot={"claimName": "shared", "storageClassName": "nfs"}),
        "spec.sierraRoot.storageClassName: not allowed with spec.sierraRoot.claimName",
    ),
    "claim with access modes": (
        with_spec(sierraRoot={"claimName": "shared", "accessModes": ["ReadWriteMany"]}),
        "spec.sierraRoot.accessModes: not allowed with spec.sierraRoot.claimName",
    ),
    "commands file climbs out": (
        with_spec(experiments=DELETE, commandsFile="../../etc/passwd"),
        "spec.commandsFile: '../../etc/passwd' leaves sierra-root; give a path relative to "
        "spec.sierraRoot.mountPath, e.g. proj/ctrl/scn/batch/commands.txt",
    ),
    "commands file climbs out midway": (
        with_spec(experiments=DELETE, commandsFile="proj/../../etc/passwd"),
        "spec.commandsFile: 'proj/../../etc/passwd' leaves sierra-root",
    ),
    "commands file with a '..' that stays": (
        with_spec(experiments=DELETE, commandsFile="proj/../proj/batch/commands.txt"),
        "spec.commandsFile: 'proj/../proj/batch/commands.txt' has a '..' segment",
    ),
    "absolute commands file": (
        with_spec(experiments=DELETE, commandsFile="/etc/passwd"),
        "spec.commandsFile: '/etc/passwd' is absolute; give a path relative to "
        "spec.sierraRoot.mountPath",
    ),
    # Issue 13: what the model took and the API server refuses.
    "true for an integer": (with_spec(execution={"workers": True}), "spec.execution.workers"),
    "beyond int64": (
        with_spec(execution={"runTimeoutSeconds": 2**63}),
        "spec.execution.runTimeoutSeconds",
    ),
    "a string for a boolean": (with_spec(suspend="yes"), "spec.suspend"),
    "python field name": (with_spec(sierra_root={}), "spec.sierra_root: unknown field"),
    "blank command": (
        with_spec(experiments=[{"name": "e", "runs": [{"command": " \t"}]}]),
        "spec.experiments[0].runs[0].command: the command is blank",
    ),
    "NUL in a command": (
        with_spec(experiments=[{"name": "e", "runs": [{"command": "a\x00"}]}]),
        "spec.experiments[0].runs[0].command: the command holds the control character U+0000",
    ),
    "name with a dot": (
        {**BASE, "metadata": {"name": "a.b"}},
        "metadata.name: 'a.b' must be a DNS-1123 label",
    ),
    "no kind": ({k: v for k, v in BASE.items() if k != "kind"}, "kind: required field"),
    "absolute commands file under the mount": (
        with_spec(experiments=DELETE, commandsFile="/sierra-root/proj/batch/commands.txt"),
        "spec.commandsFile: '/sierra-root/proj/batch/commands.txt' is absolute; give it "
        "relative to spec.sierraRoot.mountPath (/sierra-root): proj/batch/commands.txt",
    ),
}


def test_committed_crd_is_the_generated_one():
    committed = (REPO / "crds" / "sierrabatch.yaml").read_text()
    assert committed == render_crd_yaml(), "run: sierra-operator crd > crds/sierrabatch.yaml"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in node.get("properties", {}).items():
            out += _walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural_and_documented():
    """The API server refuses non-structural schemas; kubectl explain needs descriptions."""
    for path, node in _walk(spec_schema()):
        assert "type" in node, f"{path}: no type"
        assert not ({"anyOf", "oneOf", "allOf", "$ref"} & node.keys()), f"{path}: {node.keys()}"
        assert not ("properties" in node and "additionalProperties" in node), path
        if path.startswith((".spec.", ".status.")) and not path.endswith(("{}", "[]")):
            assert node.get("description"), f"{path}: no description"


def test_crd_has_status_subresource_printer_columns_and_short_name():
    crd = render_crd()
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Experiment",
        "Runs",
        "Age",
    ]
    assert crd["spec"]["names"]["shortNames"] == ["sb"]
    status_props = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"][:3]:
        assert column["jsonPath"].split(".")[-1] in status_props


@pytest.mark.parametrize("name", sorted(VALID))
def test_model_and_crd_accept_the_same_valid_documents(name: str):
    doc = VALID[name]
    assert crd_errors(doc) == []
    parse_batch(doc)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_model_and_crd_reject_the_same_invalid_documents(name: str):
    doc, expected = INVALID[name]
    assert crd_errors(doc), "the CRD accepted it"
    with pytest.raises(SpecError) as err:
        parse_batch(doc)
    assert expected in str(err.value)


# Rules both sides word themselves (issue 9): the API server's error names the same field.
FIELD_NAMED_BY_BOTH = [
    "cpu not a quantity",
    "memory limit with a space",
    "memory limit in GB",
    "size not a quantity",
    "claim with size",
    "claim with storage class",
    "claim with access modes",
    "commands file climbs out",
    "commands file climbs out midway",
    "commands file with a '..' that stays",
    "absolute commands file",
    "absolute commands file under the mount",
]


@pytest.mark.parametrize("name", FIELD_NAMED_BY_BOTH)
def test_crd_error_names_the_same_field(name: str):
    doc, expected = INVALID[name]
    field = expected.split(":")[0]
    assert any(field in error for error in crd_errors(doc)), crd_errors(doc)


def test_claim_settings_have_no_default_in_the_crd():
    """The API server defaults before it runs CEL rules: a default here would make every
    adopted claim conflict with it."""
    root = spec_schema()["properties"]["spec"]["properties"]["sierraRoot"]["properties"]
    for field in ("size", "storageClassName", "accessModes"):
        assert "default" not in root[field], field


def test_created_claim_still_gets_the_model_defaults():
    spec = parse_batch(with_spec(sierraRoot={})).spec.sierra_root
    assert (spec.size, spec.access_modes) == ("10Gi", ["ReadWriteMany"])


def test_every_conflicting_claim_setting_is_named():
    doc = with_spec(
        sierraRoot={"claimName": "shared", "size": "1Gi", "accessModes": ["ReadWriteOnce"]}
    )
    assert len(crd_errors(doc)) == 2
    with pytest.raises(SpecError) as err:
        parse_batch(doc)
    assert "spec.sierraRoot.size: not allowed" in str(err.value)
    assert "spec.sierraRoot.accessModes: not allowed" in str(err.value)


def test_examples_are_valid_for_both(tmp_path: Path):
    for path in sorted((REPO / "examples").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert crd_errors(doc) == [], path
        parse_batch(doc)


# spec.prefect.workQueue / workPool are fixed for a batch's life (issue 22 item 4): the
# API server refuses the change on update, with a message naming the field and the fix.
@pytest.mark.parametrize(
    ("field", "before", "after"),
    [
        ("workQueue", None, "other-queue"),
        ("workQueue", "queue-a", "queue-b"),
        ("workQueue", "queue-a", DELETE),
        ("workPool", None, "my-pool"),
        ("workPool", "pool-a", "pool-b"),
        ("workPool", "pool-a", DELETE),
    ],
)
def test_changing_a_prefect_name_is_refused_on_update(field: str, before: Any, after: Any):
    old = with_spec(**({f"prefect__{field}": before} if before else {}))
    new = with_spec(**{f"prefect__{field}": after})
    assert crd_errors(old) == [] and crd_errors(new) == []  # each is fine as a create
    errors = crd_errors(new, old=old)
    assert len(errors) == 1, errors
    assert f"spec.prefect.{field} cannot change once the batch exists" in errors[0]
    assert "kubectl delete sierrabatch" in errors[0] and "data on sierra-root stays" in errors[0]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (with_spec(), with_spec(prefect__workQueue="sierra-queue")),  # unset == the default
        (with_spec(prefect__workQueue="sierra-queue"), with_spec()),
        (
            with_spec(prefect__workQueue="q", prefect__workPool="p"),
            with_spec(prefect__workQueue="q", prefect__workPool="p", suspend=True),
        ),
        (with_spec(), with_spec(prefect={"apiUrl": "http://prefect:4200/api"})),
    ],
)
def test_other_updates_keep_passing(old: dict[str, Any], new: dict[str, Any]):
    """The rule refuses only a change of the name: suspending, the default spelled out, or
    a prefect section added with other fields are updates like any other."""
    assert crd_errors(new, old=old) == []

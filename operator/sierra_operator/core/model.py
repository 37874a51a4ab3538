"""The SierraBatch resource as typed models: the one source of truth for its shape.

The CRD in ``crds/sierrabatch.yaml`` is generated from these classes by
:mod:`sierra_operator.cluster.crd` (field descriptions become ``kubectl explain``), and a
test proves the two accept and reject the same documents. Field names are the
Kubernetes camelCase names; Python code uses snake_case attributes.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError

from sierra_operator.core.names import DEFAULT_QUEUE

GROUP = "sierra.research.io"
VERSION = "v1alpha1"
KIND = "SierraBatch"
API_VERSION = f"{GROUP}/{VERSION}"

# Names SIERRA gives experiments: c1-exp0, c1-exp3+c2-exp1, or any name a user picks
# that is safe as a directory name and a Prefect tag.
EXPERIMENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$"
DNS1123_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# The API server's own syntax for resource.Quantity (apimachinery's quantity.go), so what
# the CRD admits a Pod or PVC accepts too: 500m, 2, 1.5Gi, 1e3.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN)]
# A shell command: not blank, and no control character but tab and newline (a NUL cannot even
# be passed to exec; the others are invisible in an editor and change what the shell runs).
# Only \xNN escapes: Go's regexp (the API server), Rust's (pydantic) and Python's all read them.
COMMAND_PATTERN = r"^[\t\n ]*[^\x00-\x20\x7F-\x9F][^\x00-\x08\x0B-\x1F\x7F-\x9F]*$"

INT64_MAX = 2**63 - 1
MAX_EXPERIMENTS = 1000
"""Experiments in one batch: its status lists each (the CRD's maxItems for both)."""
MAX_DEPTH = 64
"""Nesting of a document: a batch needs 7 levels; deeper is a mistake or an attack."""
MAX_VALUES = 100_000
"""Values in a document, every use of a YAML alias counted: a realistic batch within etcd's
1.5 MiB holds fewer (17,000 runs are about 53,000 values), an alias bomb billions; each
value costs time in every reconcile, so a document of junk values is refused early."""
MAX_PROBLEMS = 40
"""Problems listed in one message (the rest are counted): enough to fix, bounded in size."""

NAME_MESSAGE = (
    "must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and "
    "ending with a letter or digit (it names the batch's claim, workers and labels)"
)
# Checked at the root: the only place a CRD's rule can see metadata.name. Size first, so
# the regular expression only ever runs on a short string.
NAME_RULE = f"size(self.metadata.name) <= 63 && self.metadata.name.matches('{DNS1123_PATTERN}')"

ONE_SOURCE_RULE = (
    "[has(self.experiments), has(self.commandsFile), has(self.sierra)].filter(x, x).size() == 1"
)
ONE_SOURCE_MESSAGE = (
    "set exactly one source of experiments: spec.experiments (inline), "
    "spec.commandsFile (a SIERRA commands file) or spec.sierra (run SIERRA stage 1)"
)
UNIQUE_NAMES_MESSAGE = "experiment names must be unique"


def _prefect_name(side: str, field: str, default: str) -> str:
    """CEL for ``spec.prefect.<field>`` of ``self`` or ``oldSelf``, with its default."""
    value = f"{side}.prefect.{field}"
    return f"(has({side}.prefect) && has({value}) ? {value} : '{default}')"


def _immutable_name_rule(field: str, default: str, what: str) -> JsonDict:
    """A transition rule (checked on update only) refusing a change of a Prefect name.

    Why refuse rather than follow the change: the batch's attempt ledger, its idempotency keys
    and its workers all name the pool and queue its runs were created in; moving mid-batch
    would leave running flow runs in a queue no worker of the batch serves, or re-create runs
    under new keys (a second execution). Unset and the default are the same name."""
    return {
        "rule": f"{_prefect_name('oldSelf', field, default)} == "
        f"{_prefect_name('self', field, default)}",
        "message": f"spec.prefect.{field} cannot change once the batch exists ({what}); "
        "keep the old value, or delete the batch (kubectl delete sierrabatch NAME: its data "
        f"on sierra-root stays) and apply it again with the new {field}",
    }


IMMUTABLE_PREFECT_RULES: list[JsonValue] = [
    _immutable_name_rule("workQueue", DEFAULT_QUEUE, "its runs and workers are bound to the queue"),
    _immutable_name_rule("workPool", "", "its runs and workers are bound to the pool"),
]
"""spec.prefect.workQueue / workPool are fixed for a batch's life (issue 22 item 4)."""

COMMANDS_FILE_EXAMPLE = "proj/ctrl/scn/batch/commands.txt"
COMMANDS_FILE_FIX = (
    "give a path relative to spec.sierraRoot.mountPath, e.g. " + COMMANDS_FILE_EXAMPLE
)
# A CEL rule cannot normalise a path, and the CRD and the model must agree: so every '..'
# segment is refused (SIERRA never writes one), not only those that climb out. String
# functions, not a regular expression: '$' means different things to different engines.
COMMANDS_FILE_RULE = (
    "!self.startsWith('/') && self != '..' && !self.startsWith('../') "
    "&& !self.endsWith('/..') && !self.contains('/../')"
)
COMMANDS_FILE_MESSAGE = (
    "spec.commandsFile: must stay under sierra-root (no leading '/', no '..' segments); "
    + COMMANDS_FILE_FIX
)
# Settings of the claim the operator creates: meaningless for a claim it adopts.
CLAIM_SETTINGS = ("size", "storageClassName", "accessModes")
CLAIM_CONFLICT = (
    "not allowed with spec.sierraRoot.claimName (an existing PVC is adopted as it is); "
    "remove one of them"
)


def _no_crd_default(schema: dict[str, Any]) -> None:
    """Drop a field's default from the CRD: the API server applies schema defaults before
    it evaluates CEL rules, so a defaulted ``size`` would always conflict with
    ``claimName``. The model still applies the default (see its description)."""
    schema.pop("default", None)


def _json_integer(value: Any) -> Any:
    """JSON has one number type: to the API server (and JSON Schema) 3.0 is the integer 3, so
    the model takes it too. Anything else goes to the strict integer check as it is: True,
    "3" and 3.5 are not integers there, nor here."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_JSON_INTEGER = BeforeValidator(_json_integer)
JsonInt = Annotated[int, _JSON_INTEGER]
"""An integer field of the CRD: ints and integral floats, never a bool or a string. Bounds
of an optional or list item go inside, before it (``Annotated[int, Field(ge=1),
_JSON_INTEGER]``): outside, pydantic cannot put them into the JSON schema."""
Lax = Strict(False)
"""For enums in strict models: their values come as strings, as in JSON."""


def _spec_rule_error(message: str) -> PydanticCustomError:
    """An error whose message says it all: printed after the field path as is, without the
    value and field description :func:`format_validation_error` adds to pydantic's own."""
    return PydanticCustomError("spec_rule", "{message}", {"message": message})


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected (kubectl's strict validation)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=False,
    )


class _SpecModel(_Model):
    """What users write: types as strict as the CRD's, so a value the API server refuses
    (True for an integer, "yes" or 1 for a boolean) is refused here too, not converted."""

    model_config = ConfigDict(strict=True)


class BuildSpec(_SpecModel):
    """How to build the experiment image before any experiment runs."""

    context: str = Field(
        min_length=1,
        description="Build context: a git URL the Docker engine clones "
        "(https://github.com/acme/foraging.git#main), a tarball URL the operator fetches "
        "(.tar or .tar.gz), or in local mode a directory.",
    )
    dockerfile: str = Field(
        default="Dockerfile", min_length=1, description="Dockerfile path inside the context."
    )
    build_args: dict[str, str] = Field(
        default_factory=dict, description="Build arguments (--build-arg NAME=VALUE)."
    )
    target: str | None = Field(default=None, description="Multi-stage build target, if any.")


class ImageSpec(_SpecModel):
    """The image every run pod uses; local mode ignores it."""

    repository: str = Field(
        min_length=1,
        description="Repository the image is pushed to and pulled from, "
        "e.g. localhost:5001/foraging.",
    )
    tag: str = Field(
        default="latest",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        description="Image tag.",
    )
    build: BuildSpec | None = Field(
        default=None, description="Build and push the image first; omit if the image exists."
    )
    push_secret: str | None = Field(
        default=None,
        description="Name of a kubernetes.io/dockerconfigjson Secret used to push, "
        "and as the run pods' imagePullSecret.",
    )


AccessMode = Literal["ReadWriteMany", "ReadWriteOnce", "ReadOnlyMany", "ReadWriteOncePod"]


class SierraRootSpec(_SpecModel):
    """The shared filesystem holding --sierra-root, mounted at the same path everywhere."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.claimName) || !has(self.{field})",
                    "message": f"spec.sierraRoot.{field}: {CLAIM_CONFLICT}",
                }
                for field in CLAIM_SETTINGS
            ]
        }
    )

    mount_path: str = Field(
        default="/sierra-root",
        pattern=r"^/.*",
        description="Absolute path where sierra-root is mounted in every pod; SIERRA's "
        "commands files name files under it, so it must match the path used in stage 1.",
    )
    claim_name: str | None = Field(
        default=None,
        pattern=DNS1123_PATTERN,
        max_length=253,
        description="Existing PersistentVolumeClaim to use; omit to let the operator create one.",
    )
    size: Quantity = Field(
        default="10Gi",
        json_schema_extra=_no_crd_default,
        description="Size of the PersistentVolumeClaim the operator creates (default 10Gi); "
        "not allowed with claimName.",
    )
    storage_class_name: str | None = Field(
        default=None,
        description="StorageClass of the created claim; omit for the default. "
        "Not allowed with claimName.",
    )
    access_modes: list[AccessMode] = Field(
        default_factory=lambda: list[AccessMode](["ReadWriteMany"]),
        min_length=1,
        description="Access modes of the created claim (default [ReadWriteMany]: runs on many "
        "nodes need it); not allowed with claimName.",
    )
    delete_with_batch: bool = Field(
        default=False,
        description="Delete the created claim (and its data) with the batch. Default: keep it.",
    )

    @field_validator("size", "storage_class_name", "access_modes")
    @classmethod
    def _not_with_claim(cls, value: Any, info: ValidationInfo) -> Any:
        """Settings of a claim to create, given with one to adopt: one of them is a mistake
        (the size would be silently ignored). Runs only for fields the user set, so the
        model's defaults never conflict; mirrors the CRD's CEL rules."""
        if value is not None and info.data.get("claim_name") is not None:
            raise _spec_rule_error(CLAIM_CONFLICT)
        return value


class RunSpec(_SpecModel):
    """One experimental run: a shell command."""

    command: str = Field(
        pattern=COMMAND_PATTERN,
        description="Shell command of this experimental run (not blank; no control "
        "characters but tabs and line breaks).",
    )


class ExperimentSpec(_SpecModel):
    """One experiment: runs that execute in parallel, after the previous experiment."""

    name: str = Field(
        pattern=EXPERIMENT_NAME_PATTERN,
        description="Experiment name (SIERRA style: c1-exp0); letters, digits, '.', '_', '+', '-'.",
    )
    runs: list[RunSpec] = Field(
        min_length=1, description="Experimental runs of this experiment (at least one)."
    )


class SierraSpec(_SpecModel):
    """Run SIERRA itself in the image to generate the experiments (stage 1)."""

    args: list[str] = Field(
        min_length=1,
        description="SIERRA command-line arguments for stage 1 "
        "(--project, --engine, --n-runs, --bc, ...).",
    )
    post_stages: list[Annotated[int, Field(ge=3, le=5), _JSON_INTEGER]] = Field(
        default_factory=list,
        description="SIERRA stages (3, 4, 5) to run after the last experiment.",
    )


class ResourceRequirements(_SpecModel):
    """Kubernetes resources of each run pod."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Resource requests (Kubernetes quantities), e.g. {cpu: 500m, memory: 1Gi}.",
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Resource limits (Kubernetes quantities)."
    )


class FailurePolicy(StrEnum):
    """What a run that failed after all its retries does to the batch."""

    STOP_BATCH = "StopBatch"
    CONTINUE = "Continue"


class ExecutionSpec(_SpecModel):
    """How the experiments execute."""

    workers: JsonInt = Field(
        default=1,
        ge=1,
        le=100,
        description="Prefect worker pods in the cluster (local mode runs one executor process).",
    )
    parallelism: JsonInt = Field(
        default=4,
        ge=1,
        le=10000,
        description="At most this many runs of one experiment execute at the same time.",
    )
    runs_per_pod: JsonInt = Field(
        default=1,
        ge=1,
        le=100,
        description="Cluster: up to this many runs of one experiment execute in one pod (one "
        "Job), sharing it within parallelism, each still its own task, record and status "
        "entry: short runs do not pay a pod start each. 1: a pod per run. Local mode executes "
        "a whole wave in one process already.",
    )
    retries: JsonInt = Field(
        default=0,
        ge=0,
        le=20,
        description="Times a failed run is retried before it counts as failed.",
    )
    failure_policy: Annotated[FailurePolicy, Lax] = Field(
        default=FailurePolicy.STOP_BATCH,
        description="StopBatch: after a run fails (retries used up) start nothing new and end "
        "Failed. Continue: run the remaining experiments, then end Failed.",
    )
    run_timeout_seconds: Annotated[int, Field(ge=1, le=2**31 - 1), _JSON_INTEGER] | None = Field(
        default=None,
        description="A run still executing after this many seconds is failed (at most 2147483647).",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Resources of each run pod."
    )


class SecretKeyRef(_SpecModel):
    """A key of a Secret in the batch's namespace."""

    name: str = Field(pattern=DNS1123_PATTERN, description="Secret name.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class PrefectSpec(_SpecModel):
    """Which Prefect server runs the batch, and the names used on it."""

    api_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Prefect API URL (http://host:4200/api). Default: the operator's "
        "PREFECT_API_URL, or in local mode a server of its own.",
    )
    api_key_secret: SecretKeyRef | None = Field(
        default=None, description="Secret holding a Prefect Cloud API key."
    )
    work_pool: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="Work pool name. Default: sierra-pool in local mode, unique per batch "
        "in the cluster. Fixed once the batch exists: a change is refused at apply time.",
    )
    work_queue: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="Work queue name. Default: sierra-queue. Fixed once the batch exists: "
        "a change is refused at apply time (running flow runs stay in the old queue).",
    )


class SierraBatchSpec(_SpecModel):
    """A SIERRA batch experiment: where its data lives, its experiments and how they run."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": ONE_SOURCE_RULE, "message": ONE_SOURCE_MESSAGE},
                *IMMUTABLE_PREFECT_RULES,
            ]
        }
    )

    image: ImageSpec | None = Field(
        default=None, description="Image of the run pods (required in the cluster)."
    )
    sierra_root: SierraRootSpec = Field(
        default_factory=SierraRootSpec, description="Shared storage for --sierra-root."
    )
    experiments: list[ExperimentSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EXPERIMENTS,
        description="Inline experiments, run in this order; names are unique.",
        json_schema_extra={
            # The API server rejects duplicate names itself (cheaper than a CEL rule).
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    commands_file: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,  # PATH_MAX; also bounds the CEL rule's cost for the API server
        description="A SIERRA commands file, relative to sierra-root (no leading '/', no "
        "'..'): the per-batch <batch-root>/commands.txt, or a batch root whose "
        "exp-inputs/<exp>/commands.txt hold each experiment.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": COMMANDS_FILE_RULE, "message": COMMANDS_FILE_MESSAGE}
            ]
        },
    )
    sierra: SierraSpec | None = Field(
        default=None, description="Run SIERRA stage 1 in the image to make the experiments."
    )
    execution: ExecutionSpec = Field(
        default_factory=ExecutionSpec, description="How experiments and runs execute."
    )
    prefect: PrefectSpec = Field(default_factory=PrefectSpec, description="Prefect server.")
    suspend: bool = Field(
        default=False, description="Start no new runs while true; running ones finish."
    )

    @field_validator("commands_file")
    @classmethod
    def _under_sierra_root(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The planning pod opens this path under the mount: an absolute path or a '..'
        could read any file of the pod (/sierra-root/../../etc/passwd exists there), so
        both are refused here, on the path string alone, as the CRD's CEL rule does."""
        if value is None:
            return value
        if value.startswith("/"):
            root = info.data.get("sierra_root")
            mount = root.mount_path if isinstance(root, SierraRootSpec) else "/sierra-root"
            inside = posixpath.relpath(posixpath.normpath(value), posixpath.normpath(mount))
            fix = COMMANDS_FILE_FIX
            if not inside.startswith(".."):
                fix = f"give it relative to spec.sierraRoot.mountPath ({mount}): {inside}"
            raise _spec_rule_error(f"{shown(value)} is absolute; {fix}")
        if ".." in value.split("/"):
            if posixpath.normpath(value).split("/")[0] == "..":
                problem = "leaves sierra-root"
            else:
                problem = "has a '..' segment (not allowed: paths must stay under sierra-root)"
            raise _spec_rule_error(f"{shown(value)} {problem}; {COMMANDS_FILE_FIX}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SierraBatchSpec:
        """Mirror of the CRD's CEL rules, so local mode rejects what the API server would."""
        sources = [self.experiments, self.commands_file, self.sierra]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(ONE_SOURCE_MESSAGE)
        if self.experiments is not None:
            names = [e.name for e in self.experiments]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{UNIQUE_NAMES_MESSAGE}: {', '.join(dupes)} repeated")
        return self


class ObjectMeta(_SpecModel):
    """Kubernetes metadata: the fields the batch uses typed, the rest of the API server's
    ObjectMeta kept as is, anything else refused (kubectl's strict validation refuses it)."""

    name: str = Field(description="Batch name.")
    generate_name: str | None = None
    namespace: str | None = None
    self_link: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX), _JSON_INTEGER] | None = None
    creation_timestamp: Any = None
    deletion_timestamp: Any = None
    deletion_grace_period_seconds: Any = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    owner_references: Any = None
    finalizers: Any = None
    managed_fields: Any = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        """The CRD's root rule (NAME_RULE), worded the same."""
        if len(value) > 63 or not re.fullmatch(DNS1123_PATTERN, value):
            raise _spec_rule_error(f"{shown(value)} {NAME_MESSAGE}")
        return value


class SierraBatch(_SpecModel):
    """The whole resource as a user writes it."""

    api_version: Literal["sierra.research.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["SierraBatch"]
    metadata: ObjectMeta
    spec: SierraBatchSpec
    status: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- status


class BatchPhase(StrEnum):
    """Where a batch is; also the first printer column."""

    PENDING = "Pending"
    BUILDING = "Building"
    PROVISIONING = "Provisioning"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    INTERRUPTED = "Interrupted"


TERMINAL_PHASES = frozenset({BatchPhase.SUCCEEDED, BatchPhase.FAILED})


class ExperimentPhase(StrEnum):
    """Where one experiment is."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: str = Field(
        description="Condition type: Valid, ImageReady, StorageReady, PoolReady, Complete."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word for machines.")
    message: str = Field(default="", description="What happened and what to do, for people.")
    last_transition_time: datetime | None = Field(
        default=None, description="When status last changed."
    )
    observed_generation: int | None = Field(
        default=None, description="spec generation this condition was computed from."
    )


class RunCounts(_Model):
    """Counts of experimental runs by state."""

    total: int = Field(default=0, ge=0, description="Runs planned.")
    succeeded: int = Field(default=0, ge=0, description="Runs that succeeded.")
    failed: int = Field(default=0, ge=0, description="Runs that failed after all retries.")
    running: int = Field(default=0, ge=0, description="Runs executing now.")
    pending: int = Field(
        default=0,
        ge=0,
        description="Runs not executing yet: not submitted, queued, or waiting for a retry.",
    )


class ExperimentStatus(RunCounts):
    """Progress of one experiment (counts only: per-run detail lives in Prefect)."""

    name: str = Field(description="Experiment name.")
    phase: ExperimentPhase = Field(description="Pending, Running, Succeeded or Failed.")


class ImageStatus(_Model):
    """The image runs use."""

    ref: str = Field(description="repository:tag")
    digest: str | None = Field(
        default=None,
        description="The registry's digest for ref (sha256:...); run pods use repository@digest.",
    )
    build_hash: str | None = Field(
        default=None,
        description="Hash of the build inputs the digest was built from: unchanged, no rebuild.",
    )


MAX_FAILED_RUNS_LISTED = 20
"""Failed runs named one by one in status (etcd objects stay small; the rest are counted)."""


class FailedRun(_Model):
    """One experimental run that failed for good, and why: what `kubectl describe` shows."""

    experiment: str = Field(description="Experiment name.")
    run: int = Field(ge=0, description="Run index inside the experiment.")
    attempt: int = Field(default=1, ge=1, description="The attempt that failed last (1-based).")
    reason: str = Field(
        default="",
        description="Exit code and last stderr lines, or Prefect's crash message (short).",
    )
    log: str | None = Field(
        default=None, description="Full stderr of the attempt under sierra-root, if it ran."
    )


class BatchStatus(_Model):
    """What the operator observed; every decision can be re-made from it."""

    phase: BatchPhase = Field(default=BatchPhase.PENDING, description="Batch phase.")
    observed_generation: int | None = Field(default=None, description="Last spec generation seen.")
    message: str = Field(default="", description="Short human summary.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    image: ImageStatus | None = Field(default=None, description="Image in use.")
    work_pool: str | None = Field(default=None, description="Prefect work pool of this batch.")
    plan_key: str | None = Field(
        default=None,
        description="The planning flow run whose plan the batch runs (spec.commandsFile).",
    )
    current_experiment: int | None = Field(
        default=None, description="Index of the experiment now executing (0-based)."
    )
    current_experiment_name: str | None = Field(
        default=None, description="Name of the experiment now executing."
    )
    experiments: list[ExperimentStatus] = Field(
        default_factory=list, max_length=MAX_EXPERIMENTS, description="Per-experiment counts."
    )
    runs: RunCounts = Field(default_factory=RunCounts, description="Run counts over the batch.")
    runs_done: str = Field(default="0/0", description="Final runs / total, for printing.")
    failed_runs: list[FailedRun] = Field(
        default_factory=list,
        max_length=MAX_FAILED_RUNS_LISTED,
        description=f"The first {MAX_FAILED_RUNS_LISTED} failed runs, each with its reason.",
    )
    started_at: datetime | None = Field(default=None, description="When the first run started.")
    finished_at: datetime | None = Field(default=None, description="When the batch ended.")


# ------------------------------------------------------------------------ validation


class SpecError(ValueError):
    """A batch the user must fix; the message names every bad field and how to fix it."""


def shown(value: Any, quote: bool = True) -> str:
    """``value`` as a message quotes it: short (a 4,302-digit integer or a megabyte of text is
    described, not printed: printing could take seconds or fail), escaped (a line break or a
    control character cannot split or garble the message) and never raising."""
    try:
        if isinstance(value, bool) or value is None or isinstance(value, float):
            return repr(value)
        if isinstance(value, int):
            if value.bit_length() > 200:
                return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
            return repr(value)
        if isinstance(value, str):
            text = repr(value[:60])
            text = text if quote else text[1:-1]
            return text if len(value) <= 60 else f"{text}... ({len(value)} characters)"
        if isinstance(value, Mapping):
            return f"a mapping of {len(value)} key(s)"
        if isinstance(value, list | tuple):
            return f"a list of {len(value)} item(s)"
        return f"a {type(value).__name__}"
    except Exception:  # the error path must never fail
        return "a value"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,99}")
# Steps pydantic adds to an error's location that are no field of the document.
_PYDANTIC_STEP = re.compile(r"function-(after|before|wrap|plain)\[.*\]|list\[ExperimentSpec\]")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """Dotted path with list indexes, as kubectl prints them: spec.experiments[0].runs. A key
    that is not a plain name is quoted (spec['[bold]image'], spec['']), so it can be neither
    mistaken for an index nor split the message."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i < len(loc) - 1 and _PYDANTIC_STEP.fullmatch(part):
            continue
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{shown(part)}]"
    return out


def _describe(loc: tuple[int | str, ...]) -> str | None:
    """The description of the field at ``loc``: what it means is the best hint at the fix."""
    model: type[BaseModel] | None = SierraBatch
    info = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        fields.update(model.model_fields)
        info = fields.get(part)
        if info is None:
            return None
        model = _submodel(info.annotation)
    return info.description if info is not None else None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _quantity_message(path: str, given: Any) -> str:
    """A quantity pattern error in words: the regular expression helps nobody."""
    examples = '"10Gi"' if path.endswith(".size") else '"500m" or "2" for cpu, "1Gi" for memory'
    return f"{shown(given)} is not a Kubernetes quantity; use e.g. {examples}"


def _command_message(given: Any) -> str:
    """A command pattern error in words: which character, where."""
    text = str(given)
    bad = re.search(r"[\x00-\x08\x0B-\x1F\x7F-\x9F]", text)
    if bad is None:
        return "the command is blank; give the shell command of this run"
    return (
        f"the command holds the control character U+{ord(bad.group()):04X} at position "
        f"{bad.start() + 1}; remove it (only tabs and line breaks are allowed)"
    )


def format_validation_error(error: ValidationError, source: str = "") -> str:
    """One line per problem: field path, what is wrong, the value given, what is expected.
    Never raises (a problem it cannot word is still named by its path), and lists at most
    :data:`MAX_PROBLEMS` problems."""
    try:
        errors = error.errors()
    except Exception:  # the error path must never fail
        return f"{source}(document): invalid"
    lines = [_problem_line(err, source) for err in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"{source}... and {len(errors) - MAX_PROBLEMS} more problem(s)")
    return "\n".join(lines)


def _problem_line(err: Any, source: str) -> str:
    """One problem of a ValidationError in words (see :func:`format_validation_error`)."""
    loc = tuple(err.get("loc", ()))
    path = "(document)"
    try:
        path = _field_path(loc) or "(document)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        kind = err["type"]
        pattern = err.get("ctx", {}).get("pattern")
        if kind == "spec_rule":
            return f"{source}{path}: {msg}"
        if kind == "string_pattern_mismatch" and pattern == QUANTITY_PATTERN:
            return f"{source}{path}: {_quantity_message(path, err.get('input'))}"
        if kind == "string_pattern_mismatch" and pattern == COMMAND_PATTERN:
            return f"{source}{path}: {_command_message(err.get('input'))}"
        if kind == "extra_forbidden":
            parent = _field_path(loc[:-1]) or "the document"
            msg = (
                f"unknown field; remove it or check its spelling (fields of {parent} are camelCase)"
            )
        elif kind == "missing":
            msg = "required field is missing"
        given = err.get("input")
        if kind not in {"missing", "extra_forbidden"} and not isinstance(given, dict | list):
            msg += f" (got {shown(given)})"
        hint = _describe(loc)
        if hint and kind != "extra_forbidden":
            msg += f". {path.rsplit('.', 1)[-1]}: {hint}"
        return f"{source}{path}: {msg}"
    except Exception:  # the error path must never fail
        return f"{source}{path}: invalid value"


def _plain_document(document: Any) -> dict[str, Any]:
    """``document`` as the API server stores it, or :class:`SpecError` naming the place.

    Mappings only have string keys (JSON's), and a null value in a mapping is dropped (the
    API server prunes them: null and absent mean the same). It is walked without recursion,
    and refused past :data:`MAX_DEPTH` levels or :data:`MAX_VALUES` values, counting a part
    shared through YAML aliases each time it appears: that is what validating it, or quoting
    it in a message, would cost. Text must be valid Unicode (no lone surrogates, which no
    file can be written with)."""
    if not isinstance(document, Mapping):
        raise SpecError(
            "expected a SierraBatch mapping (apiVersion, kind, metadata, spec), "
            f"got {_kind_of(document)}"
        )
    root: dict[str, Any] = {}
    # (value to copy, container of its copy, parent link for the path, depth)
    stack: list[tuple[Any, dict[str, Any] | list[Any], Any, int]] = [(document, root, None, 1)]
    count = 0
    while stack:
        value, into, link, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SpecError(f"{_link_path(link)}: nested deeper than {MAX_DEPTH} levels")
        items: Any = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            count += 1
            if count > MAX_VALUES:
                raise SpecError(
                    f"{_link_path(link) or '(document)'}: the document has more than "
                    f"{MAX_VALUES:,} values (YAML aliases expanded); write a smaller batch"
                )
            if isinstance(value, Mapping) and not isinstance(key, str):
                raise SpecError(
                    f"{_link_path(link) or '(document)'}: the key {shown(key)} is not a "
                    "string; keys are field names (quote it if it is one)"
                )
            here = (link, key)
            for text in (key, item):
                if isinstance(text, str) and not _is_unicode(text):
                    raise SpecError(
                        f"{_link_path(here)}: holds a lone surrogate ({shown(text)}), which is "
                        "not a character; write the text as UTF-8"
                    )
            copy: Any
            if item is None and isinstance(value, Mapping):
                continue
            if isinstance(item, Mapping):
                copy = {}
                stack.append((item, copy, here, depth + 1))
            elif isinstance(item, list | tuple):
                copy = []
                stack.append((item, copy, here, depth + 1))
            elif item is None or isinstance(item, str | int | float):
                copy = item
            else:
                raise SpecError(f"{_link_path(here)}: {_kind_of(item)} is not a JSON value")
            if isinstance(into, dict):
                into[key] = copy
            else:
                into.append(copy)
    return root


def _link_path(link: Any) -> str:
    """The field path of a (parent link, key) chain built by :func:`_plain_document`."""
    loc: list[int | str] = []
    while link is not None:
        link, key = link
        loc.append(key)
    return _field_path(tuple(reversed(loc)))


def _kind_of(value: Any) -> str:
    """What a value is, in JSON's words."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else f"a {type(value).__name__}"


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def stored_batch(body: Mapping[str, Any]) -> dict[str, Any]:
    """A batch as the API server sent it, ready for :func:`parse_batch`: metadata fields
    this version does not know (a newer Kubernetes may add some) are dropped, not refused
    (the API server validated them; refusing them would fail every batch), and so are
    ``status`` and ``managedFields``, which would count against the document size limit
    although the user wrote neither: a batch valid at `kubectl apply` stays valid."""
    known = {f.alias or to_camel(n) for n, f in ObjectMeta.model_fields.items()}
    known.discard("managedFields")  # the server's bookkeeping, not part of the batch
    doc = {k: v for k, v in body.items() if k != "status"}  # ours: its size is not the spec's
    meta = doc.get("metadata")
    if isinstance(meta, Mapping):
        doc["metadata"] = {k: v for k, v in meta.items() if k in known}
    return doc


def parse_batch(document: Any, source: str = "") -> SierraBatch:
    """Validate a loaded YAML/JSON document; raise :class:`SpecError` naming each bad field.

    The document is first made what the API server would store (:func:`_plain_document`),
    so the model judges the same thing the CRD does, and bounded in size and depth. Fields
    go by their wire names only: ``sierra_root`` is as unknown to the API server as any
    other misspelling (Python code still constructs models with snake_case names)."""
    try:
        plain = _plain_document(document)
    except SpecError as exc:
        raise SpecError(f"{source}{exc}") from None
    try:
        return SierraBatch.model_validate(plain, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None


def read_status(raw: Mapping[str, Any] | None) -> BatchStatus:
    """The stored status; fields this version does not know are ignored, not fatal."""
    known = {f.alias or n for n, f in BatchStatus.model_fields.items()}
    try:
        return BatchStatus.model_validate({k: v for k, v in (raw or {}).items() if k in known})
    except ValueError:
        return BatchStatus()

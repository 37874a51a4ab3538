"""Every name the project gives things on Prefect and on disk: one place, so they never drift."""

from __future__ import annotations

import hashlib
import re

DEFAULT_LOCAL_POOL = "sierra-pool"
DEFAULT_QUEUE = "sierra-queue"
DEPLOYMENT_NAME = "sierra-run"
EXPERIMENT_FLOW_NAME = "sierra-experiment"
FLOW_ENTRYPOINT = "sierra_operator.runs.flows.run_experiment"
PLAN_DEPLOYMENT_NAME = "sierra-plan"
PLAN_FLOW_NAME = "sierra-plan"
PLAN_FLOW_ENTRYPOINT = "sierra_operator.runs.flows.plan_batch"
RUN_TASK_NAME = "sierra-run"
MANAGED_BY = "sierra-operator"

# Directory under a batch root (inside SIERRA's scratch/) that holds what we write:
# per-run stdout/stderr and result records, and the batch status file.
STATE_DIR = "scratch/sierra-operator"
STATUS_FILE = "status.json"


def plan_key(commands_file: str, generation: int | None, previous: str | None = None) -> str:
    """Names one planning of ``commands_file``: ``previous`` while it is of the same file (a
    plan is kept across spec changes), else a new one for this generation."""
    prefix = hashlib.sha256(commands_file.encode()).hexdigest()[:12] + "-g"
    if previous is not None and previous.startswith(prefix):
        return previous
    return f"{prefix}{generation or 0}"


def plan_artifact_key(batch_id: str, key: str) -> str:
    """Key of the artifact the planning flow run publishes (lowercase, digits, dashes)."""
    return f"sierra-plan-{batch_id.lower()}-{key}"


def batch_tag(batch_id: str) -> str:
    """Prefect tag on every flow and task run of one batch."""
    return f"sierra-batch:{batch_id}"


def experiment_tag(experiment: str) -> str:
    """Prefect tag naming the experiment of a flow or task run."""
    return f"sierra-experiment:{experiment}"


def run_tag(index: int) -> str:
    """Prefect tag naming the run index of a flow run that executes one run (cluster)."""
    return f"sierra-run:{index}"


def run_task_run_name(experiment: str, index: int, attempt: int) -> str:
    """Task run name in Prefect's UI and logs: experiment/run index/attempt.

    The name is how observers find a task run's run: task runs carry no tags, because
    Prefect acquires a tag concurrency slot on its server for every tag of every task run
    (two API writes per tag per run, seconds apart on a loaded SQLite server)."""
    return f"{experiment}/run{index}/attempt{attempt}"


_TASK_RUN_NAME = re.compile(r"/run(\d+)/attempt\d+$")


def run_index_of_task_run(name: str) -> int | None:
    """The run index in a :func:`run_task_run_name`, or None for any other name."""
    found = _TASK_RUN_NAME.search(name)
    return int(found.group(1)) if found else None


def wave_flow_run_name(experiment: str, first_attempt: int) -> str:
    """Flow run name of one wave of an experiment."""
    return f"{experiment}-try{first_attempt}"


def pool_description(batch_id: str) -> str:
    """Description that marks a work pool as created by (and only deletable by) this batch."""
    return f"{MANAGED_BY}: created for batch {batch_id}; deleted when it ends"


# ----------------------------------------------------------------------------- Kubernetes

BATCH_LABEL = "sierra.research.io/batch"


def worker_name(batch: str) -> str:
    """ServiceAccount, Role, RoleBinding and Deployment of a batch's Prefect workers."""
    return f"{batch}-worker"


def sierra_root_claim(batch: str) -> str:
    """PVC the operator creates for a batch's sierra-root."""
    return f"{batch}-sierra-root"


def cluster_pool(namespace: str, batch: str) -> str:
    """Work pool of one batch in the cluster: unique per namespace/name (many users, one server)."""
    return f"sierra-{namespace}-{batch}"[:100]


def worker_start_args(pool: str, worker_type: str) -> list[str]:
    """`prefect worker start` arguments (after `prefect`) for one batch's pool: every queue of
    it (the batch's queue and the queues of its held waves, :func:`hold_queue`)."""
    return ["worker", "start", "--pool", pool, "--type", worker_type]


WORKER_QUEUE_FLAG = "--work-queue"
"""What a worker started for one queue only has in its command (workers of older versions):
such a worker never sees a held wave's queue, so no wave of its batch is held."""


HELD_STATE = "Held"
"""Name of the (Scheduled) state a held wave's flow runs are created in."""


def hold_queue(queue: str, experiment: str, wave_key: str) -> str:
    """Work queue, created paused, of one wave held ahead (the operator's prefetch): one per
    wave, so a queue once released or withdrawn is never used for another wave."""
    digest = hashlib.sha256(wave_key.encode()).hexdigest()[:8]
    return f"{queue}-held-{digest}-{experiment}"


def held_experiment(queue: str, name: str) -> str | None:
    """The experiment of a :func:`hold_queue` name of ``queue``, or None for any other queue."""
    found = re.fullmatch(re.escape(f"{queue}-held-") + r"[0-9a-f]{8}-(.+)", name)
    return found.group(1) if found else None

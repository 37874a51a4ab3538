"""The operator tests' no-cluster set-up, for benchmarks that run batches through the operator.

Real: Prefect server (its own, SQLite), operator process, Prefect Kubernetes worker
processes, `prefect flow-run execute` per Job. Emulated: the Kubernetes API
(tests/kube_api.py) and kubelet/Job controller (tests/job_runner.py).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.cluster import KubeAPI, Operator, Workers, start_kube_api  # noqa: E402
from tests.job_runner import JobRunner  # noqa: E402

from sierra_operator.local.server import LocalPrefectServer  # noqa: E402


@dataclass
class EmulatedCluster:
    """What a benchmark drives: the batch API, the Job runner, workers, Prefect's URL."""

    tmp: Path
    api_url: str
    kube: KubeAPI
    jobs: JobRunner
    workers: Workers


@contextmanager
def emulated_cluster(
    prefix: str, namespaces: list[str], reconcile_seconds: float = 1.0, keep: bool = False
) -> Iterator[EmulatedCluster]:
    """Start everything in a temp dir; stop it all on exit (also on SIGTERM from `timeout`:
    a benchmark must never orphan a server). ``keep``: leave the temp dir (logs)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = LocalPrefectServer(tmp / "prefect")
    server.start()
    kube = operator = workers = jobs = None
    try:
        server.wait_ready(300)
        kube = start_kube_api(tmp, namespaces)
        jobs = JobRunner(kube.url, tmp / "jobs").start()
        operator = Operator(
            kube, server.api_url, tmp / "operator.log", reconcile_seconds=reconcile_seconds
        ).start()
        workers = Workers(kube, tmp / "workers")
        yield EmulatedCluster(tmp, server.api_url, kube, jobs, workers)
    finally:
        for part in (workers, operator, jobs):
            if part is not None:
                part.stop()
        if kube is not None:
            kube.proc.kill()
        server.stop()
        if keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

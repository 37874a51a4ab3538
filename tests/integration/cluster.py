"""The no-cluster "cluster" of the operator tests: emulated API, operator and worker processes.

What is real: the kopf operator process (`kopf run`), Prefect's Kubernetes worker process
(started from the worker Deployment the operator rendered, as its pod would be), the Prefect
server, `prefect flow-run execute` in each Job and the commands of each run. What stands in
for a cluster: tests/kube_api.py (API server) and tests/job_runner.py (kubelet + Job
controller).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from sierra_operator.local.server import ManagedProcess, free_port
from tests.integration.helpers import inline_batch
from tests.kube_api import AUDIT_FILE

REPO = Path(__file__).resolve().parents[2]
BATCHES = "/apis/sierra.research.io/v1alpha1"
VENV_BIN = str(Path(sys.executable).parent)
OPERATOR_USER = "system:serviceaccount:sierra-system:sierra-operator"


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    """Poll until ``predicate`` returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class KubeAPI:
    """The emulated API server process and a client for it."""

    url: str
    kubeconfig: Path
    proc: subprocess.Popen[bytes]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def get(self, path: str) -> dict[str, Any] | None:
        with self.http() as http:
            resp = http.get(path)
        return resp.json() if resp.status_code == 200 else None

    def batch(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(f"{BATCHES}/namespaces/{namespace}/sierrabatches/{name}")

    def create_batch(self, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
        with self.http() as http:
            resp = http.post(f"{BATCHES}/namespaces/{namespace}/sierrabatches", json=doc)
        resp.raise_for_status()
        return dict(resp.json())

    def patch_batch(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        with self.http() as http:
            http.patch(
                f"{BATCHES}/namespaces/{namespace}/sierrabatches/{name}",
                json=patch,
                headers={"content-type": "application/merge-patch+json"},
            ).raise_for_status()

    def delete_batch(self, namespace: str, name: str) -> None:
        with self.http() as http:
            http.delete(f"{BATCHES}/namespaces/{namespace}/sierrabatches/{name}").raise_for_status()

    def create_secret(self, namespace: str, name: str, dockerconfigjson: str) -> None:
        """A kubernetes.io/dockerconfigjson Secret, as `kubectl create secret docker-registry`."""
        self.create_generic_secret(
            namespace,
            name,
            {".dockerconfigjson": dockerconfigjson},
            "kubernetes.io/dockerconfigjson",
        )

    def create_generic_secret(
        self, namespace: str, name: str, values: dict[str, str], type_: str = "Opaque"
    ) -> None:
        """A Secret holding ``values``, as `kubectl create secret generic --from-literal`."""
        doc = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": type_,
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        }
        with self.http() as http:
            http.post(f"/api/v1/namespaces/{namespace}/secrets", json=doc).raise_for_status()

    def create_pvc(self, namespace: str, name: str) -> None:
        """A PersistentVolumeClaim object (the job runner maps its claim to a directory)."""
        doc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}}
        with self.http() as http:
            http.post(
                f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", json=doc
            ).raise_for_status()

    def events(self, namespace: str) -> list[dict[str, Any]]:
        found = self.get(f"/api/v1/namespaces/{namespace}/events") or {}
        return list(found.get("items", []))

    def condition(self, namespace: str, name: str, type_: str) -> dict[str, Any]:
        """The batch's condition of ``type_`` (empty while it has none)."""
        obj = self.batch(namespace, name) or {}
        conditions = (obj.get("status") or {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == type_), {})

    def phase(self, namespace: str, name: str) -> str | None:
        obj = self.batch(namespace, name) or {}
        return (obj.get("status") or {}).get("phase")


def write_kubeconfig(path: Path, url: str, user: str) -> Path:
    """A kubeconfig whose bearer token names ``user``: the emulator's audit log identity."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulated", "cluster": {"server": url}}],
                "users": [{"name": user, "user": {"token": user}}],
                "contexts": [{"name": "c", "context": {"cluster": "emulated", "user": user}}],
                "current-context": "c",
            }
        )
    )
    return path


def worker_user(namespace: str, name: str) -> str:
    """The identity of a batch's worker pods: its ServiceAccount, as in a real cluster."""
    return f"system:serviceaccount:{namespace}:{name}"


def audit(tmp: Path) -> list[dict[str, Any]]:
    """The emulated API server's audit log so far (tests/kube_api.py)."""
    path = tmp / AUDIT_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_kube_api(tmp: Path, namespaces: list[str]) -> KubeAPI:
    """Start tests/kube_api.py, write a kubeconfig, register the CRD."""
    url_file = tmp / "kube-api.url"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kube_api", str(url_file), *namespaces],
        cwd=REPO,
        stdout=(tmp / "kube-api.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for(url_file.exists, 30, "the Kubernetes API emulator")
    url = url_file.read_text().strip()
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", url, OPERATOR_USER)
    api = KubeAPI(url, kubeconfig, proc)
    crd = yaml.safe_load((REPO / "crds" / "sierrabatch.yaml").read_text())
    with api.http() as http:
        http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    return api


@dataclass
class Operator:
    """The real operator process: `sierra-operator run`, or `kopf run` of the same handlers."""

    kube: KubeAPI
    prefect_api_url: str
    log: Path
    process: ManagedProcess | None = None
    liveness_port: int = field(default_factory=free_port)
    reconcile_seconds: float = 1.0
    docker_host: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # more SIERRA_OPERATOR_* settings

    def start(self, via_kopf: bool = False) -> Operator:
        """Start it (both ways of running the operator are supported and tested)."""
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kube.kubeconfig),
            SIERRA_OPERATOR_PREFECT_API_URL=self.prefect_api_url,
            SIERRA_OPERATOR_WORKER_IMAGE="sierra-operator:test",
            SIERRA_OPERATOR_RECONCILE_SECONDS=str(self.reconcile_seconds),
            PREFECT_HOME=tempfile.mkdtemp(prefix="sierra-op-home-"),
            **self.env,
        )
        env.pop("DOCKER_HOST", None)
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        if via_kopf:
            argv = [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces"]
            argv += ["-m", "sierra_operator.cluster.handlers"]
        else:
            argv = [sys.executable, "-m", "sierra_operator.cli", "run"]
            argv += ["--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz"]
        self.process = ManagedProcess("operator", argv, env, self.log)
        self.process.start()
        return self

    def kill(self) -> None:
        """SIGKILL: the harshest restart (no cleanup, no last status patch)."""
        if self.process is not None and self.process.running():
            assert self.process.proc is not None
            os.killpg(self.process.proc.pid, signal.SIGKILL)
            self.process.proc.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=20)


@dataclass
class Workers:
    """Worker pods: each is the rendered Deployment's container command run as a local process."""

    kube: KubeAPI
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    health_ports: list[int] = field(default_factory=list)

    def start_from_deployment(self, namespace: str, name: str) -> None:
        dep = wait_for(
            lambda: self.kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
            60,
            f"Deployment {namespace}/{name}",
        )
        container = dep["spec"]["template"]["spec"]["containers"][0]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = dict(os.environ)
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
        env.update(
            # In a pod: the ServiceAccount's token. Here: a kubeconfig naming that account.
            KUBECONFIG=str(
                write_kubeconfig(
                    self.log_dir / f"kubeconfig-{namespace}-{name}",
                    self.kube.url,
                    worker_user(namespace, container_sa(dep)),
                )
            ),
            PREFECT_HOME=tempfile.mkdtemp(prefix="sierra-worker-home-"),
            PREFECT_WORKER_WEBSERVER_PORT=str(port),
            PREFECT_WORKER_QUERY_SECONDS="1",
        )
        worker = ManagedProcess(
            f"{namespace}-{name}",
            container["command"],
            env,
            self.log_dir / f"{namespace}-{name}.log",
        )
        worker.start()
        self.processes.append(worker)
        self.health_ports.append(port)

    def stop(self) -> None:
        for worker in self.processes:
            worker.stop(grace=15)


def container_sa(deployment: dict[str, Any]) -> str:
    """The ServiceAccount a Deployment's pods run as."""
    return str(deployment["spec"]["template"]["spec"]["serviceAccountName"])


def batch_doc(
    name: str, mount: Path, experiments: list[list[str]], **execution: Any
) -> dict[str, Any]:
    """An inline batch with an image and sierra-root at ``mount``, as the cluster needs."""
    doc = inline_batch(name, experiments, **execution)
    doc["spec"]["image"] = {"repository": "localhost:5001/probe", "tag": "test"}
    doc["spec"]["sierraRoot"] = {"mountPath": str(mount)}
    return doc


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]

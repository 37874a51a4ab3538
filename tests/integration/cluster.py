"""The no-cluster "cluster" of the operator tests: emulated API, operator and worker processes.

What is real: the kopf operator process (`kopf run`), Prefect's Kubernetes worker process
(started from the worker Deployment the operator rendered, as its pod would be), the Prefect
server, `prefect flow-run execute` in each Job and the commands of each run. What stands in
for a cluster: tests/kube_api.py (API server) and tests/job_runner.py (kubelet + Job
controller).
"""

from __future__ import annotations

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

from sierra_operator.server import free_port

REPO = Path(__file__).resolve().parents[2]
BATCHES = "/apis/sierra.research.io/v1alpha1"
VENV_BIN = str(Path(sys.executable).parent)


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
        return httpx.Client(base_url=self.url, timeout=10)

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

    def events(self, namespace: str) -> list[dict[str, Any]]:
        found = self.get(f"/api/v1/namespaces/{namespace}/events") or {}
        return list(found.get("items", []))

    def phase(self, namespace: str, name: str) -> str | None:
        obj = self.batch(namespace, name) or {}
        return (obj.get("status") or {}).get("phase")


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
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulated", "cluster": {"server": url}}],
                "users": [{"name": "operator", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "c", "context": {"cluster": "emulated", "user": "operator"}}],
                "current-context": "c",
            }
        )
    )
    api = KubeAPI(url, kubeconfig, proc)
    crd = yaml.safe_load((REPO / "crds" / "sierrabatch.yaml").read_text())
    with api.http() as http:
        http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    return api


@dataclass
class Operator:
    """The real operator process: `kopf run` of sierra_operator.handlers."""

    kube: KubeAPI
    prefect_api_url: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    liveness_port: int = field(default_factory=free_port)
    reconcile_seconds: float = 1.0

    def start(self, via_kopf: bool = False) -> Operator:
        """`sierra-operator run`, or the same handlers through `kopf run` (both supported)."""
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kube.kubeconfig),
            SIERRA_OPERATOR_PREFECT_API_URL=self.prefect_api_url,
            SIERRA_OPERATOR_WORKER_IMAGE="sierra-operator:test",
            SIERRA_OPERATOR_RECONCILE_SECONDS=str(self.reconcile_seconds),
            PREFECT_HOME=tempfile.mkdtemp(prefix="sierra-op-home-"),
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--all-namespaces",
                "-m",
                "sierra_operator.handlers",
            ],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: the harshest restart (no cleanup, no last status patch)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Workers:
    """Worker pods: each is the rendered Deployment's container command run as a local process."""

    kube: KubeAPI
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    health_ports: list[int] = field(default_factory=list)

    def start_from_deployment(self, namespace: str, name: str) -> subprocess.Popen[bytes]:
        dep = wait_for(
            lambda: self.kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
            60,
            f"Deployment {namespace}/{name}",
        )
        container = dep["spec"]["template"]["spec"]["containers"][0]
        port = free_port()
        env = dict(os.environ)
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
        env.update(
            KUBECONFIG=str(self.kube.kubeconfig),  # in a pod: the ServiceAccount token
            PREFECT_HOME=tempfile.mkdtemp(prefix="sierra-worker-home-"),
            PREFECT_WORKER_WEBSERVER_PORT=str(port),
            PREFECT_WORKER_QUERY_SECONDS="1",
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            container["command"],
            env=env,
            stdout=(self.log_dir / f"{namespace}-{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        self.health_ports.append(port)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def batch_doc(
    name: str, mount: Path, experiments: list[list[str]], **execution: Any
) -> dict[str, Any]:
    """A SierraBatch with inline experiments c1-exp0.. and sierra-root at ``mount``."""
    return {
        "apiVersion": "sierra.research.io/v1alpha1",
        "kind": "SierraBatch",
        "metadata": {"name": name},
        "spec": {
            "image": {"repository": "localhost:5001/probe", "tag": "test"},
            "sierraRoot": {"mountPath": str(mount)},
            "execution": execution,
            "experiments": [
                {"name": f"c1-exp{i}", "runs": [{"command": c} for c in cmds]}
                for i, cmds in enumerate(experiments)
            ],
        },
    }


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]

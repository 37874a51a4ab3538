"""Runs the Jobs that Prefect's Kubernetes worker creates in the test API (test helper).

Stands in for the kubelet and the Job controller, which do not exist without a cluster:
it polls ``batch/v1`` Jobs, runs each Job's container ``command``/``args`` once as a local
process with the container's ``env`` (plus this machine's PATH, the venv first), and
writes the outcome back as the Job's status (``succeeded`` / ``failed`` and a condition),
as the Job controller would. The sierra-root PVC needs no mapping: tests use a
``mountPath`` under their temp dir, so the path is the same "inside" and outside.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

VENV_BIN = str(Path(sys.executable).parent)


class JobRunner:
    """Execute every new Job once; thread-based, stopped with :meth:`stop`."""

    def __init__(self, api_url: str, log_dir: Path, poll: float = 0.3) -> None:
        self.api_url = api_url
        self.log_dir = log_dir
        self.poll = poll
        self.started: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._main = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> JobRunner:
        """Begin polling."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._main.start()
        return self

    def stop(self) -> None:
        """Stop polling and kill Jobs still running (as deleting a namespace would)."""
        self._stop.set()
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
        self._main.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=10)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=10) as http:
            while not self._stop.wait(self.poll):
                try:
                    jobs = http.get("/apis/batch/v1/jobs").json().get("items", [])
                except httpx.HTTPError:
                    continue
                listed = {job["metadata"]["uid"] for job in jobs}
                for uid, proc in list(self._procs.items()):
                    if uid not in listed and proc.poll() is None:
                        proc.kill()  # Job deleted: Kubernetes would delete its pod
                for job in jobs:
                    uid = job["metadata"]["uid"]
                    if uid not in self.started and not job.get("status"):
                        self.started[uid] = job
                        thread = threading.Thread(target=self._run, args=(job,), daemon=True)
                        self._threads.append(thread)
                        thread.start()

    def _run(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        argv = [*container.get("command", []), *container.get("args", [])]
        for mount in container.get("volumeMounts", []):
            # The kubelet mounts the PVC; here the path is a local dir of the same name.
            Path(mount["mountPath"]).mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        log = self.log_dir / f"{meta['name']}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
            self._procs[meta["uid"]] = proc
            code = proc.wait()
        ok = code == 0
        status = {
            "status": {
                "succeeded" if ok else "failed": 1,
                "conditions": [
                    {"type": "Complete" if ok else "Failed", "status": "True"},
                ],
            }
        }
        path = f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status"
        with httpx.Client(base_url=self.api_url, timeout=10) as http:
            http.patch(path, json=status, headers={"content-type": "application/merge-patch+json"})

    def kill_pod(self, namespace: str) -> str | None:
        """SIGKILL the process of one running Job in ``namespace``, as an OOM kill or a lost
        node would end its pod; the Job then fails like any other. Returns the Job's name."""
        for uid, proc in list(self._procs.items()):
            job = self.started[uid]["metadata"]
            if job["namespace"] == namespace and proc.poll() is None:
                proc.kill()
                return str(job["name"])
        return None

    def running(self) -> int:
        """Jobs whose process is still executing."""
        return sum(proc.poll() is None for proc in self._procs.values())

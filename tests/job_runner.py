"""Runs the Jobs that Prefect's Kubernetes worker creates in the test API (test helper).

There is no cluster here, so this module stands in for the three cluster components a Job
needs, acting only through the emulated API (tests/kube_api.py), as they would:

* **the Job controller** (kube-controller-manager): for each ``batch/v1`` Job it creates a
  real Pod object (``<job>-<5 chars>``, the template's labels plus ``job-name``,
  ``controller-uid`` and their ``batch.kubernetes.io/`` forms, a controller ownerReference,
  the ``batch.kubernetes.io/job-tracking`` finalizer, the template's spec), counts the pod's
  outcome and writes the Job's status (``active``, ``ready``, ``terminating``,
  ``succeeded``, ``failed``, ``startTime``, ``completionTime``, conditions
  ``SuccessCriteriaMet``+``Complete`` or ``FailureTarget``+``Failed``), replaces pods per
  ``podReplacementPolicy``, ``backoffLimit`` and ``podFailurePolicy`` (see
  :meth:`JobRunner._sync_job`);
* **the kubelet**: runs the first container's ``command``+``args`` as a local process
  with the container's ``env`` (``value``, ``secretKeyRef``, ``fieldRef``), ``workingDir``
  and this machine's environment (PATH with the venv first) as the image's, and reports
  the pod's status through ``pods/status`` (Pending -> Running with a running
  containerStatus -> Succeeded/Failed with a terminated one, exit code and reason). A
  deleted pod's process gets SIGTERM, then SIGKILL after ``grace_seconds``, and when the
  main process ends everything else started in the "container" is killed too, as a
  container's PID namespace is;
* **the garbage collector**, for Jobs only: a deleted Job's pods are deleted through the
  API (then terminated as above and released from the finalizer).

Prefect's worker (prefect-kubernetes 0.8.0) reads all of this: its observer (a kopf
handler) replicates every pod event into Prefect (``status.phase`` must always be set; a
Failed pod with a terminated reason is reported as "evicted"), proposes
InfrastructurePending for a flow run whose pod is Pending, and marks a flow run Crashed
when its Job's ``status.failed`` exceeds ``backoffLimit`` or the Job is deleted, unless
another Job of the same flow run is ``active`` or ``succeeded`` (it asks with a label
selector, which the emulator applies as the API server does).

The kubelet also runs **bare pods** (no owner: ``kubectl run``, the transfer pod of
``sierra-operator push|fetch``): their container runs until it ends or the pod is deleted.
While a container runs, its status carries ``containerID: emulated://<pid>``, which the
emulator's ``pods/exec`` uses to run commands in the container (tests/kube_api.py).

**PVCs**: a claim named in ``claims`` (claim name -> a directory standing for the volume)
is mounted as the kubelet would: the container runs in a private mount namespace
(``unshare --mount``) where the directory is bind-mounted at the ``mountPath``, so the pod
sees the volume's files at that path while this machine sees its own files there (a
transfer test needs both). Claims not named there need no mapping: tests use a
``mountPath`` under their temp dir, so the path is the same "inside" and outside.

Not modelled: scheduling (a pod is bound at once; no nodes, resources or quotas), images
(the venv is the image), ``parallelism``/``completions`` other than 1, indexed Jobs,
``suspend``, ``activeDeadlineSeconds``, ``ttlSecondsAfterFinished`` (finished Jobs stay),
``restartPolicy: OnFailure`` (a container is never restarted in place), containers after
the first, init containers, probes, ``envFrom``/configMap values, Events (kubelet and Job
controller post none: tests count the operator's; ``pods/log`` is served by the emulator
from the file under ``log_dir`` named in the pod annotation :data:`LOG_PATH_ANNOTATION`),
and a pod deletion's own ``gracePeriodSeconds`` (the
runner's ``grace_seconds`` applies; Kubernetes' default is the pod's
``terminationGracePeriodSeconds``, 30 s).
"""

from __future__ import annotations

import base64
import datetime
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

VENV_BIN = str(Path(sys.executable).parent)
TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
"""The Job controller puts it on every pod it creates and removes it once it has counted
the pod: a deleted pod stays (Terminating) until then, which is how a deletion is seen."""
POD_UID_ENV = "SIERRA_TEST_POD_UID"
"""Set in every pod process (and inherited by its children): the "container" boundary, so
all its processes can be killed as a container's PID namespace would be."""
LOG_PATH_ANNOTATION = "tests.sierra.research.io/log-path"
"""Test-only pod annotation naming the file holding the container's output."""
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the API server uses for generateName
_MERGE = {"content-type": "application/merge-patch+json"}
_OWNED_POD_CONDITIONS = {
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
}
_MAX_FAILURE_BACKOFF = 360.0  # the Job controller's cap on its pod failure backoff (6 min)
_BIND_MOUNTS = (
    'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 127; shift 2; done; shift; exec "$@"'
)
"""Run in a fresh mount namespace: bind each (volume dir, mountPath) pair, then the command."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_name(job_name: str) -> str:
    """``<job>-<5 chars>``: the Job controller's ``generateName`` as the API server expands
    it (the prefix cut to 58 characters so the name fits in 63)."""
    return f"{job_name}-"[:58] + "".join(random.choices(_NAME_CHARS, k=5))


def container_pids(pod_uid: str) -> list[int]:
    """Processes of a pod's "container": those whose environment carries the pod's uid in
    :data:`POD_UID_ENV`, whatever their parent or session (the probe runs in its own
    session). A process that clears its environment escapes: not modelled."""
    needle = f"{POD_UID_ENV}={pod_uid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def exit_code(returncode: int) -> int:
    """A container's exit code as the kubelet reports it: 128 + signal when killed."""
    return 128 - returncode if returncode < 0 else returncode


def _qos_class(containers: list[dict[str, Any]]) -> str:
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        r.get("limits")
        and all(r.get("limits", {}).get(k) for k in ("cpu", "memory"))
        and (r.get("requests") or r["limits"]) == r["limits"]
        for r in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _condition(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    now = _now()
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


@dataclass(eq=False)
class _Pod:
    """One pod of a Job: its API identity and what the kubelet knows of its container."""

    job: _Job
    name: str
    uid: str
    obj: dict[str, Any]
    created: float  # monotonic, once the API answered the create
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    phase: str = "Pending"
    exit_code: int | None = None
    reason: str | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    oom_killed: bool = False
    deleting: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    accounted: bool = False  # the Job controller counted it (or replaced it)
    released: bool = False  # its tracking finalizer is removed
    gc_requested: bool = False  # deleted because its Job is gone

    @property
    def namespace(self) -> str:
        return self.job.namespace

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(eq=False)
class _Job:
    """A Job the runner controls: its manifest as first seen and the controller's counts."""

    raw: dict[str, Any]
    pods: list[_Pod] = field(default_factory=list)
    wake: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)
    succeeded: int = 0
    failed: int = 0
    start_time: str = field(default_factory=_now)
    completion_time: str | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    outcome: tuple[str, str, str] | None = None  # ("Failed"|"Complete", reason, message)
    finished: bool = False  # the terminal condition is written
    next_pod_at: float | None = None  # monotonic time to create the next pod
    written: dict[str, Any] | None = None  # the status last written

    @property
    def name(self) -> str:
        return str(self.raw["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.raw["metadata"]["namespace"])

    @property
    def uid(self) -> str:
        return str(self.raw["metadata"]["uid"])

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.raw["spec"])

    def replacement_policy(self) -> str:
        """``spec.podReplacementPolicy`` as the API server defaults it: ``Failed`` when a
        podFailurePolicy is set (the only value allowed then), else ``TerminatingOrFailed``."""
        spec = self.spec
        default = "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
        return str(spec.get("podReplacementPolicy") or default)


class JobRunner:
    """Job controller + kubelet + Job garbage collector for the emulated API (module doc).

    Thread-based: one poller (lists Jobs and Pods, as the controllers' watches would), one
    controller thread per Job and one kubelet thread per pod. Stopped with :meth:`stop`.

    ``grace_seconds``: how long a deleted pod's process has between SIGTERM and SIGKILL.
    ``failure_backoff``: delay before replacing a pod that failed within ``backoffLimit``
    (doubled per failure, at most 6 min, as the Job controller does; 10 s there).
    """

    def __init__(
        self,
        api_url: str,
        log_dir: Path,
        poll: float = 0.3,
        grace_seconds: float = 2.0,
        failure_backoff: float = 10.0,
        claims: dict[str, Path] | None = None,
    ) -> None:
        self.api_url = api_url
        self.log_dir = log_dir
        self.poll = poll
        self.grace_seconds = grace_seconds
        self.failure_backoff = failure_backoff
        self.claims = dict(claims or {})
        self.started: dict[str, dict[str, Any]] = {}  # Job uid -> manifest, as first seen
        self._jobs: dict[str, _Job] = {}
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._main = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> JobRunner:
        """Begin polling."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._main.start()
        return self

    def stop(self) -> None:
        """Stop and kill every pod process still running (as losing the whole cluster
        would). The API objects are left as they are: the emulator usually goes next."""
        self._stop.set()
        with self._lock:
            jobs = list(self._jobs.values())
            pods = list(self._pods.values())
        for job in jobs:
            job.wake.set()
        for pod in pods:
            self._kill_container(pod)
        self._main.join(timeout=10)
        for thread in list(self._threads):
            thread.join(timeout=10)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    # -- what tests use ---------------------------------------------------------------------

    def kill_pod(self, namespace: str, job_name: str | None = None) -> str | None:
        """SIGKILL every process of one running pod in ``namespace`` (of Job ``job_name``
        if given), as the kernel's OOM killer or a lost node ends it: the container ends
        ``OOMKilled`` (exit code 137) and the pod Failed, a failure the Job counts against
        ``backoffLimit`` (0: the Job fails). Returns the Job's name, None if none runs."""
        pod = self._running_pod(namespace, job_name)
        if pod is None:
            return None
        pod.oom_killed = True
        self._kill_container(pod)
        return pod.job.name

    def delete_pod(
        self, namespace: str, job_name: str | None = None, *, evict: bool = False
    ) -> str | None:
        """Delete one running pod in ``namespace`` (of Job ``job_name`` if given) through
        the API, as ``kubectl delete pod`` does; the kubelet and the Job controller then
        react as in a cluster (SIGTERM, SIGKILL after ``grace_seconds``; a replacement pod
        or a failed Job, per the Job's spec: :meth:`_sync_job`).

        ``evict=True`` goes the Eviction API's way (``kubectl drain``, node pressure and
        preemption are alike): the pod first gets the condition ``DisruptionTarget``
        (reason ``EvictionByEvictionAPI``), which a podFailurePolicy can match; a plain
        delete sets no condition. Returns the pod's name, None if no pod runs there."""
        pod = self._running_pod(namespace, job_name)
        if pod is None:
            return None
        path = f"/api/v1/namespaces/{namespace}/pods/{pod.name}"
        if evict:
            with self._lock:
                pod.conditions = [c for c in pod.conditions if c["type"] != "DisruptionTarget"] + [
                    _condition(
                        "DisruptionTarget",
                        "True",
                        "EvictionByEvictionAPI",
                        "Eviction API: evicting",
                    )
                ]
            self._write_pod_status(pod)
        resp = self._request("DELETE", path)
        if resp is None or resp.status_code >= 400:
            raise RuntimeError(f"deleting pod {namespace}/{pod.name} failed: {resp}")
        return pod.name

    def pods_started(self, job_name: str, namespace: str | None = None) -> int:
        """How many pods the Job controller created for Job ``job_name`` (first + replacements)."""
        return len(self.pod_names(job_name, namespace))

    def pod_names(self, job_name: str, namespace: str | None = None) -> list[str]:
        """The names of Job ``job_name``'s pods, oldest first."""
        with self._lock:
            return [
                pod.name
                for job in self._jobs.values()
                if job.name == job_name and namespace in (None, job.namespace)
                for pod in job.pods
            ]

    def running(self) -> int:
        """Pods whose main process is still executing."""
        with self._lock:
            return sum(pod.running() for pod in self._pods.values())

    # -- API access -----------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        """One client per thread (the poller, controllers and kubelets run concurrently)."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.api_url, timeout=10)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """A request, retried a few times on transport errors; None if it never got through."""
        for attempt in range(3):
            try:
                return self._http().request(method, path, **kwargs)
            except httpx.HTTPError:
                if self._stop.is_set():
                    return None
                time.sleep(0.2 * (attempt + 1))
        return None

    def _items(self, path: str) -> list[dict[str, Any]] | None:
        resp = self._request("GET", path)
        if resp is None or resp.status_code != 200:
            return None
        return list(resp.json().get("items", []))

    # -- the poller: what the controllers' and kubelet's watches would deliver --------------

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            listed_at = time.monotonic()
            jobs = self._items("/apis/batch/v1/jobs")
            pods = self._items("/api/v1/pods")
            if jobs is None or pods is None:
                continue
            self._see_jobs(jobs)
            self._see_pods(pods, listed_at)
            self._see_bare_pods(pods)

    def _see_jobs(self, listed: list[dict[str, Any]]) -> None:
        by_uid = {job["metadata"]["uid"]: job for job in listed}
        with self._lock:
            for uid, job in self._jobs.items():
                obj = by_uid.get(uid)
                if (obj is None or obj["metadata"].get("deletionTimestamp")) and (
                    not job.gone.is_set()
                ):
                    job.gone.set()
                    job.wake.set()
            for uid, obj in by_uid.items():
                if uid in self._jobs or obj["metadata"].get("deletionTimestamp"):
                    continue
                conditions = (obj.get("status") or {}).get("conditions") or []
                if any(c.get("type") in ("Complete", "Failed") for c in conditions):
                    continue  # finished before this runner saw it
                job = _Job(raw=obj)
                self._jobs[uid] = job
                self.started[uid] = obj
                self._spawn(self._control, job, name=f"job-{job.name}")

    def _see_pods(self, listed: list[dict[str, Any]], listed_at: float) -> None:
        """A pod the API marks for deletion (``deletionTimestamp``: its finalizer holds it)
        or no longer lists is being deleted: its kubelet and Job controller are told."""
        by_uid = {pod["metadata"]["uid"]: pod for pod in listed}
        with self._lock:
            for uid, pod in self._pods.items():
                if pod.deleting.is_set() or pod.created > listed_at:
                    continue  # a pod created after the list began is not missing from it
                obj = by_uid.get(uid)
                if obj is None or obj["metadata"].get("deletionTimestamp"):
                    pod.deleting.set()
                    pod.job.wake.set()

    def _see_bare_pods(self, listed: list[dict[str, Any]]) -> None:
        """Start the kubelet of each new pod that no Job owns (as the kubelet runs any pod
        bound to its node). Its owner stand-in is a :class:`_Job` no controller drives."""
        for obj in listed:
            meta = obj["metadata"]
            if meta.get("ownerReferences") or meta.get("deletionTimestamp"):
                continue
            if (obj.get("status") or {}).get("phase") not in (None, "Pending"):
                continue  # already run (by an earlier runner) or finished
            with self._lock:
                if meta["uid"] in self._pods:
                    continue
                owner = _Job(raw={"metadata": dict(meta), "spec": {}})
                pod = _Pod(
                    job=owner,
                    name=str(meta["name"]),
                    uid=str(meta["uid"]),
                    obj=obj,
                    created=time.monotonic(),
                    log=self.log_dir / f"{meta['name']}.log",
                    conditions=list((obj.get("status") or {}).get("conditions") or []),
                )
                self._pods[pod.uid] = pod
            self._spawn(self._kubelet, pod, name=f"pod-{pod.name}")

    def _spawn(self, target: Any, *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    # -- the Job controller ---------------------------------------------------------------

    def _control(self, job: _Job) -> None:
        job.next_pod_at = time.monotonic()
        while not self._stop.is_set():
            if self._sync_job(job):
                return
            # A finished Job waits for nothing but its deletion (garbage collection).
            job.wake.wait(None if job.finished else self.poll)
            job.wake.clear()

    def _sync_job(self, job: _Job) -> bool:
        """One pass of the Job controller over ``job``; True once the Job is gone and its
        pods are collected (nothing is left to do).

        Pod outcomes, as the Job controller counts them (one pod at a time, completions 1):

        * Succeeded: the Job is complete once no other pod is active.
        * Being deleted (``deletionTimestamp``) and ``podReplacementPolicy`` unset or
          ``TerminatingOrFailed`` (unless a podFailurePolicy is set): replaced at once,
          while the old pod still terminates, and not counted as a failure, even with
          ``backoffLimit: 0``, as measured on Kubernetes 1.36 (../shared/context.md).
          Kubernetes' source reads otherwise (``isPodFailed`` counts a terminating pod
          that did not succeed as failed under this policy, which with backoffLimit 0
          fails the Job): this follows the measurement.
        * Being deleted with ``podReplacementPolicy: Failed``: nothing until the pod is
          terminal; then it counts as what it ended as.
        * Failed: the podFailurePolicy's first matching rule decides (``FailJob``: the Job
          fails, reason ``PodFailurePolicy``; ``Ignore``: replaced, not counted;
          ``Count`` or no match: counted); a counted failure beyond ``backoffLimit``
          (default 6) fails the Job (``BackoffLimitExceeded``), else the pod is replaced
          after the failure backoff.

        A failing Job first gets ``FailureTarget``, its active pods are deleted, and
        ``Failed`` follows once they are terminal; a complete one gets
        ``SuccessCriteriaMet`` then ``Complete`` (the pairs Kubernetes >= 1.31 writes).
        """
        if job.gone.is_set():
            return self._collect_garbage(job)
        with self._lock:
            policy = job.replacement_policy()
            now = time.monotonic()
            release = [pod for pod in job.pods if self._account(job, pod, policy, now)]
            active = [p for p in job.pods if not p.deleting.is_set() and not p.done.is_set()]
            if job.outcome is None and job.succeeded >= 1 and not active:
                job.outcome = (
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
            doomed = []
            if job.outcome is not None and job.outcome[0] == "Failed":
                doomed = [p for p in active if not p.gc_requested]
                for pod in doomed:
                    pod.gc_requested = True
            create = (
                job.outcome is None
                and job.next_pod_at is not None
                and now >= job.next_pod_at
                and not active
            )
            if create:
                job.next_pod_at = None
        for pod in release:
            self._release(pod)
        for pod in doomed:
            self._request("DELETE", f"/api/v1/namespaces/{job.namespace}/pods/{pod.name}")
        if create:
            self._create_pod(job)
        with self._lock:
            self._conclude(job)
            status = self._job_status(job)
        self._write_job_status(job, status)
        return False

    def _account(self, job: _Job, pod: _Pod, policy: str, now: float) -> bool:
        """Count one pod's outcome once (see :meth:`_sync_job`). Returns whether the pod is
        to be released from its finalizer now (it is terminal and counted)."""
        release = pod.done.is_set() and not pod.released
        if release:
            pod.released = True
        if pod.accounted:
            return release
        if not pod.done.is_set():
            if pod.deleting.is_set() and policy == "TerminatingOrFailed":
                pod.accounted = True  # terminating: replaced now, never a failure
                if job.outcome is None:
                    job.next_pod_at = now
            return release
        pod.accounted = True
        if job.outcome is not None:
            return release  # the Job already ended: pods it deleted change nothing
        if pod.phase == "Succeeded":
            job.succeeded += 1
            return release
        action, message = self._match_failure_policy(job, pod)
        if action == "FailJob":
            job.failed += 1
            job.outcome = ("Failed", "PodFailurePolicy", message)
        elif action == "Ignore":
            job.next_pod_at = now
        else:
            job.failed += 1
            if job.failed > int(job.spec.get("backoffLimit", 6)):
                job.outcome = (
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            else:
                delay = self.failure_backoff * 2 ** (job.failed - 1)
                job.next_pod_at = now + min(delay, _MAX_FAILURE_BACKOFF)
        return release

    @staticmethod
    def _match_failure_policy(job: _Job, pod: _Pod) -> tuple[str, str]:
        """The action of the first podFailurePolicy rule matching Failed ``pod`` and the
        Job controller's message for it; ``("Count", "")`` without a match."""
        rules = (job.spec.get("podFailurePolicy") or {}).get("rules") or []
        container = job.spec["template"]["spec"]["containers"][0]["name"]
        for index, rule in enumerate(rules):
            action = str(rule.get("action", "Count"))
            codes = rule.get("onExitCodes")
            if codes and pod.exit_code not in (None, 0):
                if codes.get("containerName") not in (None, container):
                    continue
                listed = pod.exit_code in codes.get("values", [])
                if listed == (codes.get("operator") == "In"):
                    return action, (
                        f"Container {container} for pod {pod.namespace}/{pod.name} failed with "
                        f"exit code {pod.exit_code} matching {action} rule at index {index}"
                    )
            for wanted in rule.get("onPodConditions") or []:
                for cond in pod.conditions:
                    if cond["type"] == wanted.get("type") and cond["status"] == wanted.get(
                        "status", "True"
                    ):
                        return action, (
                            f"Pod {pod.namespace}/{pod.name} has condition {cond['type']} "
                            f"matching {action} rule at index {index}"
                        )
        return "Count", ""

    def _conclude(self, job: _Job) -> None:
        """Write the interim condition at once, the terminal one once no pod still runs."""
        if job.outcome is None or job.finished:
            return
        kind, reason, message = job.outcome
        interim = "FailureTarget" if kind == "Failed" else "SuccessCriteriaMet"
        if not any(c["type"] == interim for c in job.conditions):
            job.conditions.append(_condition(interim, "True", reason, message))
        if all(p.done.is_set() for p in job.pods):
            job.conditions.append(_condition(kind, "True", reason, message))
            if kind == "Complete":
                job.completion_time = _now()
            job.finished = True

    @staticmethod
    def _job_status(job: _Job) -> dict[str, Any]:
        """The Job's status as the Job controller writes it; ``None`` removes a zero counter
        (the API omits ``active``, ``succeeded``, ``failed`` at 0; merge patch deletes)."""
        live = [p for p in job.pods if not p.done.is_set()]
        active = [p for p in live if not p.deleting.is_set()]
        return {
            "startTime": job.start_time,
            "active": len(active) or None,
            "ready": sum(p.phase == "Running" for p in active),
            "terminating": len(live) - len(active),
            "succeeded": job.succeeded or None,
            "failed": job.failed or None,
            "uncountedTerminatedPods": {},
            "conditions": list(job.conditions) or None,
            "completionTime": job.completion_time,
        }

    def _write_job_status(self, job: _Job, status: dict[str, Any]) -> None:
        if status == job.written or job.gone.is_set():
            return
        path = f"/apis/batch/v1/namespaces/{job.namespace}/jobs/{job.name}/status"
        resp = self._request("PATCH", path, json={"status": status}, headers=_MERGE)
        if resp is not None and resp.status_code < 400:
            job.written = status

    def _collect_garbage(self, job: _Job) -> bool:
        """The Job is gone: delete its pods (background propagation) and, as the Job
        controller does for orphans, release each from its finalizer once terminal.
        Returns whether all are released."""
        with self._lock:
            to_delete = [p for p in job.pods if not p.gc_requested]
            to_release = [p for p in job.pods if p.done.is_set() and not p.released]
            for pod in to_delete:
                pod.gc_requested = True
            for pod in to_release:
                pod.released = True
            collected = all(p.released for p in job.pods)
        for pod in to_delete:
            self._request("DELETE", f"/api/v1/namespaces/{job.namespace}/pods/{pod.name}")
        for pod in to_release:
            self._release(pod)
        return collected

    def _release(self, pod: _Pod) -> None:
        """Remove the tracking finalizer: a pod already deleted then disappears."""
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"
        resp = self._request("GET", path)
        if resp is None or resp.status_code != 200:
            return
        finalizers = resp.json()["metadata"].get("finalizers") or []
        if TRACKING_FINALIZER in finalizers:
            keep = [f for f in finalizers if f != TRACKING_FINALIZER]
            self._request("PATCH", path, json={"metadata": {"finalizers": keep}}, headers=_MERGE)

    def _create_pod(self, job: _Job) -> None:
        """POST the pod the Job controller would, then start its kubelet."""
        template = job.spec["template"]
        tmeta = template.get("metadata") or {}
        name = pod_name(job.name)
        log = self.log_dir / f"{name}.log"
        spec = dict(template["spec"])
        spec.setdefault("nodeName", "emulated-node")  # bound at once: no scheduler here
        labels = {
            **(tmeta.get("labels") or {}),
            "batch.kubernetes.io/controller-uid": job.uid,
            "batch.kubernetes.io/job-name": job.name,
            "controller-uid": job.uid,
            "job-name": job.name,
        }
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": job.namespace,
                "labels": labels,
                "annotations": {**(tmeta.get("annotations") or {}), LOG_PATH_ANNOTATION: str(log)},
                "finalizers": [TRACKING_FINALIZER],
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job.name,
                        "uid": job.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
            # What the API server defaults on create: a pod is never without a phase (the
            # observer's pod handler reads status["phase"] on every event).
            "status": {
                "phase": "Pending",
                "qosClass": _qos_class(spec.get("containers", [])),
                "conditions": [_condition("PodScheduled", "True")],
            },
        }
        resp = self._request("POST", f"/api/v1/namespaces/{job.namespace}/pods", json=manifest)
        if resp is None or resp.status_code >= 400:
            with self._lock:  # the Job controller retries a failed create on its next sync
                job.next_pod_at = time.monotonic() + 1.0
            return
        obj = resp.json()
        pod = _Pod(
            job=job,
            name=name,
            uid=str(obj["metadata"]["uid"]),
            obj=obj,
            created=time.monotonic(),
            log=log,
            conditions=list(obj["status"]["conditions"]),
        )
        with self._lock:
            job.pods.append(pod)
            self._pods[pod.uid] = pod
        self._spawn(self._kubelet, pod, name=f"pod-{name}")

    # -- the kubelet ----------------------------------------------------------------------

    def _kubelet(self, pod: _Pod) -> None:
        """Run the pod's container once, report its status, end it when it is deleted."""
        spec = pod.obj["spec"]
        container = spec["containers"][0]
        argv = [*container.get("command", []), *container.get("args", [])]
        binds = self._binds(spec, container)
        for mount in container.get("volumeMounts", []):
            # The kubelet mounts the PVC; here the path is a local dir of the same name.
            Path(mount["mountPath"]).mkdir(parents=True, exist_ok=True)
        if binds:
            pairs = [path for bind in binds for path in bind]
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _BIND_MOUNTS]
            argv += ["sh", *pairs, "--", *container.get("command", []), *container.get("args", [])]
        env = self._container_env(pod, container)
        try:
            # Under the lock until pod.proc is set: the command may act (a test sees its
            # output) before this thread runs again, and kill_pod/delete_pod must then
            # find the pod running, as a real pod whose container has started is.
            with pod.log.open("wb") as out, self._lock:
                pod.proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=container.get("workingDir"),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                pod.started_at = _now()
                pod.phase = "Running"
        except OSError as exc:  # what a container runtime reports for a bad command
            pod.log.write_text(f"{exc}\n")
            code, reason = 128, "StartError"
        else:
            proc = pod.proc
            self._write_pod_status(pod)
            code = exit_code(self._supervise(pod, proc))
            reason = "OOMKilled" if pod.oom_killed else ("Completed" if code == 0 else "Error")
        self._kill_container(pod)  # the container ends with its main process
        with self._lock:
            pod.exit_code, pod.reason = code, reason
            pod.phase = "Succeeded" if code == 0 else "Failed"
        self._write_pod_status(pod)
        pod.done.set()
        pod.job.wake.set()

    def _binds(self, spec: dict[str, Any], container: dict[str, Any]) -> list[tuple[str, str]]:
        """(volume dir, mountPath) of each mount of a claim listed in ``claims``."""
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec.get("volumes") or []
            if "persistentVolumeClaim" in v
        }
        binds = []
        for mount in container.get("volumeMounts") or []:
            claim = claims.get(mount["name"])
            if claim in self.claims:
                self.claims[claim].mkdir(parents=True, exist_ok=True)
                binds.append((str(self.claims[claim]), str(mount["mountPath"])))
        return binds

    def _supervise(self, pod: _Pod, proc: subprocess.Popen[bytes]) -> int:
        """Wait for the main process; on deletion SIGTERM it (a container's PID 1), then
        SIGKILL the whole container after the grace period."""
        deadline: float | None = None
        while True:
            try:
                return proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            if self._stop.is_set():
                self._kill_container(pod)
            elif pod.deleting.is_set() and deadline is None:
                proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + self.grace_seconds
            elif deadline is not None and time.monotonic() >= deadline:
                self._kill_container(pod)

    def _kill_container(self, pod: _Pod) -> None:
        pids = set(container_pids(pod.uid))
        if pod.proc is not None and pod.proc.poll() is None:
            pids.add(pod.proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _container_env(self, pod: _Pod, container: dict[str, Any]) -> dict[str, str]:
        """The image's environment (this machine's, venv first on PATH), HOSTNAME as in a
        pod, then the container's ``env``; :data:`POD_UID_ENV` marks the container."""
        env = dict(os.environ)
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        env["HOSTNAME"] = pod.name
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "valueFrom" in var:
                value = self._value_from(pod, var["valueFrom"])
                if value is not None:
                    env[var["name"]] = value
        env[POD_UID_ENV] = pod.uid
        return env

    def _value_from(self, pod: _Pod, source: dict[str, Any]) -> str | None:
        """``secretKeyRef`` (read from the API) and ``fieldRef`` to the pod's metadata."""
        if ref := source.get("secretKeyRef"):
            resp = self._request("GET", f"/api/v1/namespaces/{pod.namespace}/secrets/{ref['name']}")
            if resp is None or resp.status_code != 200:
                return None
            data = resp.json().get("data") or {}
            if ref["key"] not in data:
                return None
            return base64.b64decode(data[ref["key"]]).decode()
        if ref := source.get("fieldRef"):
            fields = {
                "metadata.name": pod.name,
                "metadata.namespace": pod.namespace,
                "metadata.uid": pod.uid,
                "spec.nodeName": pod.obj["spec"].get("nodeName"),
                "spec.serviceAccountName": pod.obj["spec"].get("serviceAccountName"),
            }
            value = fields.get(ref.get("fieldPath", ""))
            return None if value is None else str(value)
        return None

    def _write_pod_status(self, pod: _Pod) -> None:
        """PATCH ``pods/status`` with what the kubelet knows; conditions other components
        own (``DisruptionTarget``) are kept, as the kubelet keeps them."""
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"
        current = self._request("GET", path)
        if current is None or current.status_code != 200:
            return  # deleted for good: nothing to report to
        foreign = [
            c
            for c in (current.json().get("status") or {}).get("conditions") or []
            if c["type"] not in _OWNED_POD_CONDITIONS
        ]
        with self._lock:
            for cond in pod.conditions:
                if cond["type"] not in _OWNED_POD_CONDITIONS and all(
                    c["type"] != cond["type"] for c in foreign
                ):
                    foreign.append(cond)
            pod.conditions = [*self._own_conditions(pod), *foreign]
            status = {
                "phase": pod.phase,
                "conditions": pod.conditions,
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": pod.started_at,
                "containerStatuses": self._container_statuses(pod),
            }
        self._request("PATCH", f"{path}/status", json={"status": status}, headers=_MERGE)

    @staticmethod
    def _own_conditions(pod: _Pod) -> list[dict[str, Any]]:
        running = pod.phase == "Running"
        terminal = pod.phase in ("Succeeded", "Failed")
        ready = ("True", "") if running else ("False", "PodCompleted" if terminal else "")
        return [
            _condition("PodReadyToStartContainers", "True" if running else "False"),
            _condition("Initialized", "True"),
            _condition("Ready", *ready),
            _condition("ContainersReady", *ready),
            _condition("PodScheduled", "True"),
        ]

    @staticmethod
    def _container_statuses(pod: _Pod) -> list[dict[str, Any]]:
        container = pod.obj["spec"]["containers"][0]
        state: dict[str, Any]
        running_id = {}
        if pod.phase == "Running":
            state = {"running": {"startedAt": pod.started_at}}
            running_id = {"containerID": f"emulated://{pod.proc.pid if pod.proc else 0}"}
        elif pod.phase in ("Succeeded", "Failed"):
            state = {
                "terminated": {
                    "exitCode": pod.exit_code,
                    "reason": pod.reason,
                    "startedAt": pod.started_at,
                    "finishedAt": _now(),
                    "containerID": f"emulated://{pod.proc.pid if pod.proc else 0}",
                }
            }
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "ready": pod.phase == "Running",
                "started": pod.phase == "Running",
                "restartCount": 0,
                "state": state,
                "lastState": {},
                **running_id,
            }
        ]

    def _running_pod(self, namespace: str, job_name: str | None) -> _Pod | None:
        with self._lock:
            for pod in self._pods.values():
                if (
                    pod.namespace == namespace
                    and job_name in (None, pod.job.name)
                    and pod.running()
                    and not pod.deleting.is_set()
                ):
                    return pod
        return None

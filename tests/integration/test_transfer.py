"""`sierra-operator push|fetch` as a researcher runs them: the CLI as a subprocess with only a
kubeconfig (user ``researcher``), against the emulated API server (tests/kube_api.py, whose
``pods/exec`` runs the command in the pod's mount namespace) and the job runner as kubelet
(tests/job_runner.py: the transfer pod runs as a local process that sees the PVC's
directory bind-mounted at the batch's mountPath, while this machine sees the local
sierra-root there). Real tar on both ends (Python's tarfile here, GNU tar in the "pod"),
real websockets. No operator and no Prefect: the transfer needs neither.

Needs root and ``unshare``/``nsenter`` (util-linux) for the mount namespaces."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import REPO, KubeAPI, wait_for, write_kubeconfig
from tests.integration.helpers import require_mount_namespaces
from tests.job_runner import JobRunner
from tests.kube_api import EXEC_FAULTS_FILE

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def _mount_namespaces() -> None:
    require_mount_namespaces()


NAMESPACES = ["research"]
CLAIM = "shared-root"
RESEARCHER_VERBS = {
    ("get", "sierrabatches"),
    ("get", "persistentvolumeclaims"),
    ("create", "pods"),
    ("get", "pods"),
    ("delete", "pods"),
    ("create", "pods/exec"),
}
"""What docs/researcher-cli.md tells an admin to grant a researcher for push/fetch (checked
below)."""


@pytest.fixture(scope="module")
def env(kube: KubeAPI, tmp_module: Path) -> Iterator[dict[str, Path]]:
    """The local sierra-root, the PVC's directory, a SierraBatch using the PVC, its PVC
    object, a researcher's kubeconfig, and the kubelet stand-in."""
    local = tmp_module / "sierra-root"
    pvc = tmp_module / "pvc"
    local.mkdir()
    pvc.mkdir()
    batch = {
        "apiVersion": "sierra.research.io/v1alpha1",
        "kind": "SierraBatch",
        "metadata": {"name": "forage"},
        "spec": {
            "commandsFile": "proj/batch/commands.txt",
            "image": {"repository": "localhost:5001/sierra", "tag": "test"},
            "sierraRoot": {"claimName": CLAIM, "mountPath": str(local)},
        },
    }
    kube.create_batch("research", batch)
    kube.create_pvc("research", CLAIM)
    kubeconfig = write_kubeconfig(tmp_module / "kubeconfig-researcher", kube.url, "researcher")
    runner = JobRunner(kube.url, tmp_module / "pods", claims={CLAIM: pvc}).start()
    yield {"local": local, "pvc": pvc, "kubeconfig": kubeconfig, "tmp": tmp_module}
    runner.stop()


def cli(env: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sierra_operator.cli", *args, "-n", "research"],
        cwd=REPO,
        env=dict(os.environ, KUBECONFIG=str(env["kubeconfig"]), COLUMNS="300"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def tree(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: directories, symlinks (target) and files (size, sha256)."""
    found: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir",)
        else:
            data = path.read_bytes()
            found[rel] = ("file", len(data), hashlib.sha256(data).hexdigest())
    return found


def make_tree(root: Path, files: int = 400, big: int = 24 * 1024 * 1024) -> None:
    """Many small files in nested directories, empty files and directories, a symlink and
    one large-ish file (several MiB of incompressible bytes)."""
    for i in range(files):
        path = root / f"exp-inputs/c1-exp{i % 7}/d{i % 3}/sub{i % 2}/run{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"run": i, "pad": "x" * (i * 13 % 5000)}))
    for i in range(5):
        (root / f"exp-inputs/empty{i}.txt").touch()
    (root / "exp-inputs/empty-dir/deeper").mkdir(parents=True)
    (root / "commands.txt").write_text("python3 sim.py --seed 1\n")
    (root / "latest").symlink_to("exp-inputs/c1-exp0")
    (root / "big.bin").write_bytes(os.urandom(big))


def transfer_pods(kube: KubeAPI) -> list[str]:
    found = kube.get(
        "/api/v1/namespaces/research/pods?labelSelector=app.kubernetes.io/component%3Dtransfer"
    )
    return [p["metadata"]["name"] for p in (found or {}).get("items", [])]


def researcher_calls(tmp: Path) -> set[tuple[str, str]]:
    from tests.integration.cluster import audit

    return {(e["verb"], e["resource"]) for e in audit(tmp) if e["user"] == "researcher"}


def test_all_of_sierra_root_leaves_the_tools_own_files_out(env: dict[str, Path]) -> None:
    """``push .``, ``fetch .``, ``push .`` (first, while both sides are empty): the end marker
    never lands in the PVC's root, a push being unpacked on the PVC is not fetched, a local
    fetch's staging directory is not pushed, and a file name with a line break counts as
    one file."""
    local, pvc = env["local"], env["pvc"]
    (local / "whole/d").mkdir(parents=True)
    (local / "whole/d/f.txt").write_text("f")
    (local / "whole/line\nbreak.txt").write_text("two lines in its name")
    (local / ".sierraop-fetch-stale/x").mkdir(parents=True)
    (pvc / ".sierraop-staging/other-pod/whole").mkdir(parents=True)
    (pvc / ".sierraop-staging/other-pod/whole/partial.txt").write_text("half")
    try:
        done = cli(env, "push", "forage", ".")
        assert done.returncode == 0, done
        assert "pushed 2 files" in done.stdout
        assert sorted(p.name for p in pvc.iterdir()) == [".sierraop-staging", "whole"]
        shutil.rmtree(local / "whole")
        done = cli(env, "fetch", "forage", ".")
        assert done.returncode == 0, done
        assert (local / "whole/line\nbreak.txt").exists()
        assert not (local / "whole/partial.txt").exists()
        assert sorted(p.name for p in local.iterdir()) == [".sierraop-fetch-stale", "whole"]
        done = cli(env, "push", "forage", ".")
        assert done.returncode == 0, done
        assert "pushed 2 files" in done.stdout
    finally:
        for path in (local / "whole", local / ".sierraop-fetch-stale", pvc / "whole"):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(pvc / ".sierraop-staging/other-pod", ignore_errors=True)


def test_round_trip_is_byte_identical(kube: KubeAPI, env: dict[str, Path]) -> None:
    batch = env["local"] / "proj/batch"
    make_tree(batch)
    original = tree(batch)
    assert len(original) > 400

    done = cli(env, "push", "forage", "proj/batch")
    assert done.returncode == 0, done
    assert f"pushed {400 + 5 + 2} files" in done.stdout  # + commands.txt and big.bin
    assert tree(env["pvc"] / "proj/batch") == original  # what the pod saw at the same path
    assert not (env["pvc"] / ".sierraop-staging").exists() or not any(
        (env["pvc"] / ".sierraop-staging").iterdir()
    )

    # The pod's side changes (runs write outputs); fetch brings back exactly that.
    out = env["pvc"] / "proj/batch/exp-outputs/c1-exp0/template_run0_output"
    out.mkdir(parents=True)
    (out / "result.csv").write_text("t,v\n0,1\n")
    shutil.rmtree(batch)
    done = cli(env, "fetch", "forage", str(env["local"] / "proj/batch"))
    assert done.returncode == 0, done
    assert tree(batch) == tree(env["pvc"] / "proj/batch")
    assert (batch / "exp-outputs/c1-exp0/template_run0_output/result.csv").exists()
    assert [p.name for p in env["local"].iterdir()] == ["proj"]  # no staging left behind

    assert transfer_pods(kube) == []  # deleted after each transfer
    calls = researcher_calls(env["tmp"])
    assert calls <= RESEARCHER_VERBS, calls - RESEARCHER_VERBS
    assert ("create", "pods/exec") in calls


def test_push_merges_into_what_is_there(env: dict[str, Path]) -> None:
    """Files only on the PVC stay; files pushed replace theirs."""
    (env["local"] / "merge").mkdir()
    (env["local"] / "merge/a.txt").write_text("new")
    (env["pvc"] / "merge").mkdir()
    (env["pvc"] / "merge/a.txt").write_text("old")
    (env["pvc"] / "merge/only-remote.txt").write_text("keep")
    done = cli(env, "push", "forage", "merge")
    assert done.returncode == 0, done
    assert (env["pvc"] / "merge/a.txt").read_text() == "new"
    assert (env["pvc"] / "merge/only-remote.txt").read_text() == "keep"


def cut_next_exec(env: dict[str, Path], **fault: int) -> None:
    (env["tmp"] / EXEC_FAULTS_FILE).write_text(json.dumps(fault))


def test_push_cut_mid_stream_fails_and_puts_nothing_in_place(
    kube: KubeAPI, env: dict[str, Path]
) -> None:
    src = env["local"] / "cut-push"
    make_tree(src, files=50, big=8 * 1024 * 1024)
    cut_next_exec(env, cut_stdin_after=3 * 1024 * 1024)
    done = cli(env, "push", "forage", "cut-push")
    assert done.returncode == 1, done
    assert "ended before the command's exit status" in done.stderr, done.stderr
    assert not (env["pvc"] / "cut-push").exists()
    staging = env["pvc"] / ".sierraop-staging"
    assert not staging.exists() or not any(staging.iterdir())
    assert transfer_pods(kube) == []


def test_fetch_cut_mid_stream_fails_and_puts_nothing_in_place(
    kube: KubeAPI, env: dict[str, Path]
) -> None:
    remote = env["pvc"] / "cut-fetch"
    make_tree(remote, files=50, big=8 * 1024 * 1024)
    cut_next_exec(env, cut_stdout_after=2 * 1024 * 1024)
    done = cli(env, "fetch", "forage", "cut-fetch")
    assert done.returncode == 1, done
    assert "fetching PVC shared-root" in done.stderr, done.stderr
    assert not (env["local"] / "cut-fetch").exists()
    assert not list(env["local"].glob(".sierraop-fetch-*"))
    assert transfer_pods(kube) == []


def test_tar_failing_in_the_pod_is_an_error(env: dict[str, Path]) -> None:
    done = cli(env, "fetch", "forage", "no/such/dir")
    assert done.returncode == 2, done  # as the help says: no such path
    assert "no/such/dir does not exist: nothing to fetch" in done.stderr
    assert not (env["local"] / "no").exists()
    # A push whose final step fails: a file on the PVC where a directory must go.
    (env["local"] / "clash/d").mkdir(parents=True)
    (env["local"] / "clash/d/f.txt").write_text("x")
    (env["pvc"] / "clash").mkdir()
    (env["pvc"] / "clash/d").write_text("a file")
    done = cli(env, "push", "forage", "clash")
    assert done.returncode == 1, done
    assert "pushing to PVC shared-root" in done.stderr and "exited 1" in done.stderr


def test_remote_tar_failing_early_reports_its_exit_code(
    kube: KubeAPI, env: dict[str, Path]
) -> None:
    """The pod's script fails before reading stdin (the staging dir cannot be made): the API
    server sends the exit status and closes while this side still sends the archive. The
    failed send must not hide the status: exit 1 with the script's stderr, not exit 3."""
    src = env["local"] / "early"
    make_tree(src, files=20, big=16 * 1024 * 1024)
    (env["pvc"] / ".sierraop-staging").mkdir(exist_ok=True)
    shutil.move(env["pvc"] / ".sierraop-staging", env["tmp"] / "staging-aside")
    (env["pvc"] / ".sierraop-staging").write_text("a file where the staging dir goes")
    try:
        done = cli(env, "push", "forage", "early")
    finally:
        (env["pvc"] / ".sierraop-staging").unlink()
        shutil.move(env["tmp"] / "staging-aside", env["pvc"] / ".sierraop-staging")
        shutil.rmtree(src)
    assert done.returncode == 1, done
    assert "exited 1" in done.stderr and "mkdir" in done.stderr, done.stderr
    assert not (env["pvc"] / "early").exists()
    assert transfer_pods(kube) == []


def test_local_file_errors_are_not_cluster_errors(kube: KubeAPI, env: dict[str, Path]) -> None:
    """A local sierra-root that cannot be made, and a file that reads shorter than its size
    (a sysfs file bind-mounted in: 4096 bytes by stat, a few by read), are this machine's
    errors: exit 1 naming the path, no traceback, no pod left."""
    blocker = env["tmp"] / "a-file"
    blocker.write_text("x")
    done = cli(env, "fetch", "forage", "proj", "--sierra-root", str(blocker / "root"))
    assert done.returncode == 1, done
    assert f"cannot fetch into {blocker / 'root'}" in done.stderr, done.stderr

    src = env["local"] / "shrinking"
    src.mkdir()
    (src / "f").touch()
    argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"']
    argv += ["sh", "/sys/kernel/profiling", str(src / "f"), sys.executable, "-m"]
    argv += ["sierra_operator.cli", "push", "forage", "shrinking", "-n", "research"]
    try:
        done = subprocess.run(
            argv,
            cwd=REPO,
            env=dict(os.environ, KUBECONFIG=str(env["kubeconfig"]), COLUMNS="300"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(src)
    assert done.returncode == 1, done
    assert "archiving under" in done.stderr and "unexpected end of data" in done.stderr, done
    assert not (env["pvc"] / "shrinking").exists()
    assert transfer_pods(kube) == []


def test_missing_batch_pvc_and_path_are_named(kube: KubeAPI, env: dict[str, Path]) -> None:
    done = cli(env, "push", "forage-nope")
    assert done.returncode == 2, done
    assert "SierraBatch forage-nope not found in namespace research" in done.stderr
    done = cli(env, "push", "forage", "not-here")
    assert done.returncode == 2, done
    assert "does not exist: nothing to push" in done.stderr
    other = {
        "apiVersion": "sierra.research.io/v1alpha1",
        "kind": "SierraBatch",
        "metadata": {"name": "noclaim"},
        "spec": {
            "experiments": [{"name": "e", "runs": [{"command": "true"}]}],
            "image": {"repository": "r", "tag": "t"},
            "sierraRoot": {"mountPath": str(env["local"])},
        },
    }
    kube.create_batch("research", other)
    (env["local"] / "x").write_text("x")
    done = cli(env, "push", "noclaim", "x")
    assert done.returncode == 2, done
    assert "PersistentVolumeClaim noclaim-sierra-root not found" in done.stderr


def test_logs_stream_a_runs_stdout_and_stderr_from_the_pvc(
    kube: KubeAPI, env: dict[str, Path]
) -> None:
    """`logs` reads the files on the PVC (not this machine's copy) through the same pod."""
    state = env["pvc"] / "proj/batch/scratch/sierra-operator/c1-exp2"
    state.mkdir(parents=True, exist_ok=True)
    out = "".join(f"step {i}\n" for i in range(20000))  # ~200 KB: several exec messages
    (state / "run1.stdout").write_text(out)
    (state / "run1.stderr").write_text("Traceback: boom\n")
    local_copy = env["local"] / "proj/batch/scratch/sierra-operator/c1-exp2"
    local_copy.mkdir(parents=True, exist_ok=True)
    (local_copy / "run1.stdout").write_text("stale local copy\n")
    done = cli(env, "logs", "forage", "c1-exp2", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == out
    assert done.stderr == "Traceback: boom\n"
    done = cli(env, "logs", "forage", "c1-exp2", "7")
    assert done.returncode == 2, done
    assert "no output of c1-exp2/run7" in done.stderr
    done = cli(env, "logs", "forage", "../../etc", "0")
    assert done.returncode == 2, done
    assert transfer_pods(kube) == []


def test_logs_into_a_reader_that_stops_ends_quietly(kube: KubeAPI, env: dict[str, Path]) -> None:
    """`logs ... | head`: the closed pipe ends the command with exit 0 and no error (it is
    not "cannot reach the Kubernetes API server"), and the pod is deleted."""
    state = env["pvc"] / "proj/batch/scratch/sierra-operator/c1-exp3"
    state.mkdir(parents=True, exist_ok=True)
    (state / "run0.stdout").write_text("".join(f"line {i}\n" for i in range(400000)))
    (state / "run0.stderr").write_text("")
    command = f"{sys.executable} -m sierra_operator.cli logs forage c1-exp3 0 -n research"
    done = subprocess.run(
        ["bash", "-c", f'{command} | head -c 20 >/dev/null; exit "${{PIPESTATUS[0]}}"'],
        cwd=REPO,
        env=dict(os.environ, KUBECONFIG=str(env["kubeconfig"]), COLUMNS="300"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done
    assert done.stderr == "", done.stderr
    assert transfer_pods(kube) == []


def test_logs_of_a_local_batch(env: dict[str, Path]) -> None:
    batch_file = env["tmp"] / "local-batch.yaml"
    batch_file.write_text(
        "apiVersion: sierra.research.io/v1alpha1\nkind: SierraBatch\n"
        "metadata: {name: here}\nspec:\n  experiments:\n"
        "    - name: c1-exp0\n      runs: [{command: 'true'}]\n"
    )
    state = env["tmp"] / "local-root/here/scratch/sierra-operator/c1-exp0"
    state.mkdir(parents=True)
    (state / "run0.stdout").write_text("out\n")
    argv = [sys.executable, "-m", "sierra_operator.cli", "logs", "--local", str(batch_file)]
    argv += ["c1-exp0", "0", "--sierra-root", str(env["tmp"] / "local-root")]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_mid_fetch_deletes_the_pod_and_changes_nothing(
    kube: KubeAPI, env: dict[str, Path], stop: signal.Signals
) -> None:
    slow = f"slow-{stop.name}"
    remote = env["pvc"] / slow
    make_tree(remote, files=20, big=4 * 1024 * 1024)
    cut_next_exec(env, stdout_delay_ms=200)  # ~30 s for the whole archive
    proc = subprocess.Popen(
        [sys.executable, "-m", "sierra_operator.cli", "fetch", "forage", slow, "-n", "research"],
        cwd=REPO,
        env=dict(os.environ, KUBECONFIG=str(env["kubeconfig"])),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: list(env["local"].glob(f".sierraop-fetch-*/{slow}/**/*.json")),
            60,
            "the fetch to be under way",
        )
        assert transfer_pods(kube), "the transfer pod exists while it runs"
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert transfer_pods(kube) == []
    assert not (env["local"] / slow).exists()
    assert not list(env["local"].glob(".sierraop-fetch-*"))


def test_a_batch_created_meanwhile_by_another_stage2_is_followed_not_an_error(
    env: dict[str, Path],
) -> None:
    """Two stage 2 runs racing: the second create gets 409 AlreadyExists and goes the way
    of a batch that existed before (followed, after the same-batch check)."""
    import asyncio

    from kubernetes_asyncio import client, config

    from sierra_operator.researcher.kubeconfig import Connection
    from sierra_operator.sierra.cluster_stage2 import (
        ClusterOptions,
        _create,
        check_existing,
        cluster_document,
    )
    from sierra_operator.sierra.execenv import Stage2Failed, Stage2Options

    opts = ClusterOptions(Stage2Options(parallelism=1), image="r/s:t", namespace="research")
    doc = cluster_document("raced", "p/commands.txt", env["local"], opts)

    async def race() -> tuple[bool, bool]:
        cfg = client.Configuration()  # KUBECONFIG is read once, at import: named here
        await config.load_kube_config(str(env["kubeconfig"]), client_configuration=cfg)
        conn = Connection(cfg, "research")
        return await _create(conn, doc), await _create(conn, doc)

    assert asyncio.run(race()) == (True, False)
    other = cluster_document("raced", "q/commands.txt", env["local"], opts)
    with pytest.raises(Stage2Failed, match="exists for another batch"):
        check_existing({"metadata": {"name": "raced"}, "spec": doc["spec"]}, other, "r", False)

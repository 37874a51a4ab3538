"""The pure parts of push/fetch: the exec status, paths, the transfer pod, and the local tar
stream's completeness checks (tests/integration/test_transfer.py runs the whole thing)."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path, PurePosixPath

import pytest

from sierra_operator.researcher.kubeconfig import ClusterError
from sierra_operator.researcher.pod_exec import exit_code_of
from sierra_operator.researcher.tar_stream import (
    MARKER,
    Pipe,
    TransferError,
    merge_into_place,
    read_archive,
    write_archive,
)
from sierra_operator.researcher.transfer import relative_path, target_of
from sierra_operator.researcher.transfer_pod import is_running, pod_problem, render_pod

pytestmark = pytest.mark.unit


def test_exit_status_from_the_status_channel() -> None:
    assert exit_code_of({"status": "Success"}) == (0, "")
    failure = {
        "status": "Failure",
        "message": "command terminated with non-zero exit code",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "2"}]},
    }
    assert exit_code_of(failure)[0] == 2
    assert exit_code_of({"status": "Failure", "message": "no such\nfile"}) == (-1, "no such file")


def test_paths_stay_under_sierra_root(tmp_path: Path) -> None:
    assert relative_path(None, tmp_path) == PurePosixPath(".")
    assert relative_path("a/./b/", tmp_path) == PurePosixPath("a/b")
    assert relative_path(tmp_path / "x/y", tmp_path) == PurePosixPath("x/y")
    for bad in ("../etc", "a/../../b", "/etc/passwd"):
        with pytest.raises(ClusterError):
            relative_path(bad, tmp_path)


def test_target_uses_the_claim_mount_and_pinned_image() -> None:
    obj = {
        "apiVersion": "sierra.research.io/v1alpha1",
        "kind": "SierraBatch",
        "metadata": {"name": "forage", "namespace": "lab"},
        "spec": {
            "experiments": [{"name": "e", "runs": [{"command": "true"}]}],
            "image": {"repository": "reg/sim", "tag": "v1", "pushSecret": "regcred"},
            "sierraRoot": {"mountPath": "/data/root"},
        },
        "status": {"image": {"ref": "reg/sim:v1", "digest": "sha256:abc"}},
    }
    target = target_of(obj, "lab")
    assert (target.claim, target.mount_path, target.image) == (
        "forage-sierra-root",
        "/data/root",
        "reg/sim@sha256:abc",
    )
    pod = render_pod(target)
    container = pod["spec"]["containers"][0]
    assert container["volumeMounts"] == [{"name": "sierra-root", "mountPath": "/data/root"}]
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "forage-sierra-root"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    del obj["status"]
    assert target_of(obj, "lab", image="busybox").image == "busybox"
    assert target_of(obj, "lab").image == "reg/sim:v1"


def test_pod_states() -> None:
    running = {"status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}}
    assert is_running(running) and pod_problem(running) is None
    pulling = {
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}
            ],
        }
    }
    assert pod_problem(pulling) == "ImagePullBackOff: no such image"


def archive_of(root: Path, rel: str) -> bytes:
    pipe = Pipe(limit=1 << 30)
    write_archive(root, [PurePosixPath(rel)], pipe)
    return pipe.read()


def unpack(data: bytes, stage: Path, rel: str) -> object:
    pipe = Pipe()
    pipe.write(data)
    pipe.close()
    return read_archive(pipe, stage, PurePosixPath(rel))


def test_archive_round_trip_and_counts(tmp_path: Path) -> None:
    (tmp_path / "src/a/b").mkdir(parents=True)
    (tmp_path / "src/a/b/f.txt").write_text("hello")
    (tmp_path / "src/a/empty").touch()
    data = archive_of(tmp_path, "src/a")
    counts = unpack(data, tmp_path / "stage", "src/a")
    assert counts.files == 2 and counts.bytes == 5  # type: ignore[attr-defined]
    merge_into_place(tmp_path / "stage/src/a", tmp_path / "dest")
    assert (tmp_path / "dest/b/f.txt").read_text() == "hello"


def test_an_archive_without_its_end_marker_is_refused(tmp_path: Path) -> None:
    """Cut at a member boundary, a tar stream still reads as a valid (shorter) archive."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/f").write_text("x")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        tar.add(tmp_path / "src/f", arcname="src/f")
    with pytest.raises(TransferError, match="end marker"):
        unpack(buf.getvalue(), tmp_path / "stage", "src")
    with pytest.raises(TransferError, match="not under"):
        unpack(archive_of(tmp_path, "src"), tmp_path / "stage2", "other")
    truncated = archive_of(tmp_path, "src")[:700]
    with pytest.raises(TransferError):
        unpack(truncated, tmp_path / "stage3", "src")
    assert MARKER not in [p.name for p in (tmp_path / "stage").rglob("*")]


def test_pipe_bounds_memory_and_aborts_unblock_the_writer() -> None:
    pipe = Pipe(limit=10)
    pipe.write(b"0123456789")
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            pipe.write(b"more")
        except TransferError as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive()  # full: the writer waits
    pipe.abort("reader failed")
    thread.join(5)
    assert not thread.is_alive() and errors

"""The pure parts of push/fetch: the exec status, paths, the transfer pod, and the local tar
stream's completeness checks (tests/integration/test_transfer.py runs the whole thing)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import pytest

from sierra_operator.researcher.kubeconfig import ClusterError
from sierra_operator.researcher.pod_exec import exchange, exit_code_of
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
    pod = render_pod(target, "b-transfer-x")
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


def test_a_conflict_deep_in_the_tree_leaves_the_destination_as_it_was(tmp_path: Path) -> None:
    """A file in the archive where the destination has a directory, below a file that would
    be replaced first: the merge refuses before moving anything."""
    stage, dest = tmp_path / "stage", tmp_path / "dest"
    (stage / "sub").mkdir(parents=True)
    (stage / "a.txt").write_text("new")
    (stage / "sub/x").write_text("a file")
    (dest / "sub/x").mkdir(parents=True)
    (dest / "a.txt").write_text("old")
    with pytest.raises(TransferError, match="is a directory locally"):
        merge_into_place(stage, dest)
    assert (dest / "a.txt").read_text() == "old"
    assert (stage / "a.txt").exists() and (dest / "sub/x").is_dir()


def test_a_hard_link_to_a_missing_member_is_a_transfer_error(tmp_path: Path) -> None:
    """tarfile raises KeyError for it (it looks the target up in the archive read so far)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        link = tarfile.TarInfo("src/link")
        link.type = tarfile.LNKTYPE
        link.linkname = "src/not-there"
        tar.addfile(link)
        marker = tarfile.TarInfo(MARKER)
        tar.addfile(marker, io.BytesIO(b""))
    with pytest.raises(TransferError, match="hard link"):
        unpack(buf.getvalue(), tmp_path / "stage", "src")


def test_hard_links_within_the_archive_still_unpack(tmp_path: Path) -> None:
    """Members are forgotten once unpacked; a hard link is made from the unpacked file."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/f").write_text("same")
    os.link(tmp_path / "src/f", tmp_path / "src/g")
    unpack(archive_of(tmp_path, "src"), tmp_path / "stage", "src")
    assert (tmp_path / "stage/src/g").read_text() == "same"
    assert os.stat(tmp_path / "stage/src/f").st_ino == os.stat(tmp_path / "stage/src/g").st_ino


def _peak_while(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file_count(tmp_path: Path) -> None:
    """tarfile keeps a TarInfo (~1.5 KiB) per member unless told otherwise: 4000 files would
    hold ~6 MiB, both when archiving and when unpacking. The pipe is bounded (256 KiB) and
    drained by a thread, so what remains is the per-member bookkeeping."""
    files = 4000
    for i in range(files):
        path = tmp_path / f"src/d{i % 10}/f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    archive_file = tmp_path / "archive.tar"

    def archive() -> None:
        pipe = Pipe(limit=256 * 1024)
        thread = threading.Thread(target=_copy_to, args=(pipe, archive_file))
        thread.start()
        write_archive(tmp_path, [PurePosixPath("src")], pipe)
        thread.join()

    assert _peak_while(archive) < 2 * 1024 * 1024

    def unpack_all() -> None:
        pipe = Pipe(limit=256 * 1024)
        stage = tmp_path / "stage"
        reading = threading.Thread(target=read_archive, args=(pipe, stage, PurePosixPath("src")))
        reading.start()
        with archive_file.open("rb") as fh:
            while chunk := fh.read(64 * 1024):
                pipe.write(chunk)
        pipe.close()
        reading.join()

    assert _peak_while(unpack_all) < 2 * 1024 * 1024
    assert len(list((tmp_path / "stage/src").rglob("*.txt"))) == files


def _copy_to(pipe: Pipe, path: Path) -> None:
    with path.open("wb") as fh:
        while chunk := pipe.read(64 * 1024):
            fh.write(chunk)


def test_the_tools_own_files_at_the_top_are_never_transferred(tmp_path: Path) -> None:
    """A transfer of all of sierra-root (``.``) skips the end marker, pushes being unpacked
    and fetches being unpacked, both when archiving and when unpacking."""
    root = tmp_path / "root"
    for own in (MARKER, ".sierraop-staging/p/f", ".sierraop-fetch-abc/f"):
        (root / own).parent.mkdir(parents=True, exist_ok=True)
        (root / own).write_text("own")
    (root / "proj/f").parent.mkdir(parents=True)
    (root / "proj/f").write_text("data")
    (root / "proj/.sierraop-staging").write_text("a user's file, not at the top")
    counts = unpack(archive_of(root, "."), tmp_path / "stage", ".")
    assert counts.files == 2
    assert sorted(
        str(p.relative_to(tmp_path / "stage")) for p in (tmp_path / "stage").rglob("*")
    ) == [
        "proj",
        "proj/.sierraop-staging",
        "proj/f",
    ]
    # The same files coming from the other side (an archive made by GNU tar of ``.``).
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        tar.add(root, arcname=".")
        marker = tarfile.TarInfo(MARKER)
        tar.addfile(marker, io.BytesIO(b""))
    unpack(buf.getvalue(), tmp_path / "stage2", ".")
    assert not (tmp_path / "stage2" / MARKER).exists()
    assert not (tmp_path / "stage2/.sierraop-staging").exists()
    assert not list((tmp_path / "stage2").glob(".sierraop-fetch-*"))
    assert (tmp_path / "stage2/proj/f").read_text() == "data"


class _ClosedByServer:
    """A websocket whose server sent the exit status and closed: every send fails, as
    aiohttp's does on a closing transport. A fake because the real race (the send failing
    before the close frame is read) cannot be produced on demand against a server."""

    def __init__(self) -> None:
        self.sender_failed = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

    async def close(self) -> None:
        self.sender_failed.set()

    async def __aiter__(self) -> AsyncIterator[Any]:
        status = {
            "status": "Failure",
            "details": {"causes": [{"reason": "ExitCode", "message": "2"}]},
        }
        yield aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, b"\x02tar: cannot open", None)
        yield aiohttp.WSMessage(
            aiohttp.WSMsgType.BINARY, b"\x03" + json.dumps(status).encode(), None
        )
        await self.sender_failed.wait()


def test_a_failed_send_does_not_hide_an_exit_status_that_arrived() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"tar data"

    async def ignore(data: bytes) -> None:
        pass

    status, err = asyncio.run(exchange(_ClosedByServer(), chunks(), ignore, None))
    assert status is not None and exit_code_of(status)[0] == 2
    assert err == b"tar: cannot open"

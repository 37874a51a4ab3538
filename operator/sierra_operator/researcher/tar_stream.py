"""The local half of a transfer: tar archives made and unpacked as streams, never whole.

A push archives a tree under sierra-root chunk by chunk while it is sent (a thread writes the
archive into a bounded :class:`Pipe`, the event loop sends what it reads from it); a fetch
unpacks chunk by chunk while it arrives, into a staging directory that is merged into place
only once the whole archive is known to have arrived (:func:`merge_into_place`). Memory use is
bounded by the pipe, whatever the tree's size.

Completeness: tar's end-of-archive blocks do not prove that nothing was lost (a stream cut at
a member boundary reads as a shorter archive), so every archive ends with a marker member,
:data:`MARKER`, written after everything else. Whoever unpacks it treats an archive without
the marker as cut, and puts nothing in place.

Unpacking uses Python's ``data`` filter: no absolute paths, no ``..``, no links leading out,
no device files, no set-uid bits; a member outside the path asked for is refused.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MARKER = ".sierraop-transfer-complete"
"""Name of the last member of every transfer archive (at the archive's top level)."""
STAGING = ".sierraop-staging"
"""Directory at the top of the PVC holding pushes being unpacked (each in its own dir)."""
FETCH_STAGING_PREFIX = ".sierraop-fetch-"
"""Fetches unpack into ``<local sierra-root>/.sierraop-fetch-*`` (:func:`staging_dir`)."""
CHUNK = 32 * 1024
"""Bytes per websocket message (what kubectl's streams use too)."""


class TransferError(Exception):
    """A transfer did not complete; nothing incomplete was put in place."""


@dataclass(frozen=True)
class Counts:
    """What an archive held: regular files (hard links included) and their bytes."""

    files: int = 0
    bytes: int = 0


class Pipe:
    """Bytes from one side to the other with at most ``limit`` bytes in flight; the writer
    blocks while it is full. Either side may :meth:`abort` (the other then raises
    :class:`TransferError` instead of waiting forever); :meth:`close` is a clean end."""

    def __init__(self, limit: int = 4 * 1024 * 1024) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._closed = False
        self._error: str | None = None
        self._drained = False
        self._cond = threading.Condition()

    def write(self, data: bytes) -> int:
        """Append ``data``, waiting for room (never more than ``limit`` queued)."""
        with self._cond:
            while self._size >= self._limit and self._error is None and not self._drained:
                self._cond.wait()
            if self._error is not None:
                raise TransferError(self._error)
            if data and not self._drained:
                self._chunks.append(bytes(data))
                self._size += len(data)
                self._cond.notify_all()
        return len(data)

    def close(self) -> None:
        """The writer is done: the reader gets what is left, then end of file."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        """Stop both sides: pending and later reads and writes raise ``TransferError``."""
        with self._cond:
            if self._error is None:
                self._error = reason
            self._cond.notify_all()

    def drain(self) -> None:
        """The reader has all it needs (tar's end-of-archive padding may follow): later
        writes are dropped instead of waiting for a reader that is gone."""
        with self._cond:
            self._drained = True
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all there is now if < 0); ``b""`` only at the end."""
        with self._cond:
            while not self._chunks and not self._closed and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise TransferError(self._error)
            if not self._chunks:
                return b""
            want = self._size if size < 0 else size
            out = bytearray()
            while self._chunks and len(out) < want:
                chunk = self._chunks.pop(0)
                take = want - len(out)
                if len(chunk) > take:
                    self._chunks.insert(0, chunk[take:])
                    chunk = chunk[:take]
                out += chunk
            self._size -= len(out)
            self._cond.notify_all()
            return bytes(out)


def _counted(counts: list[int]) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    def count(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if info.isreg() or info.islnk():
            counts[0] += 1
            counts[1] += info.size
        return info

    return count


def own_file(rel: PurePosixPath, name: str) -> bool:
    """Whether ``name`` in directory ``rel`` (relative to sierra-root) is the transfer tool's
    own: the end marker, a push's staging tree on the PVC, a fetch's staging tree here. They
    sit at the top of sierra-root and are never transferred: ``push .`` would otherwise ship
    a fetch in progress and the marker (miscounting the files), ``fetch .`` other pushes'
    partial trees."""
    return str(rel) == "." and (name in (MARKER, STAGING) or name.startswith(FETCH_STAGING_PREFIX))


def _forget_members(tar: Any) -> None:
    """Drop the members tarfile remembers (all of them, ~1.5 KiB each, even in the stream
    modes, where nothing reads them again): memory would grow with the file count. A hard
    link still unpacks, from the file already written in the staging directory."""
    tar.members.clear()


def _add_tree(tar: tarfile.TarFile, root: Path, rel: PurePosixPath, counts: list[int]) -> None:
    """Add ``root/rel`` and everything under it (symlinks as symlinks, sorted like
    ``tar.add``). Walked here rather than by ``tar.add`` so that each member's ``TarInfo`` is
    dropped once written: tarfile keeps them all in ``members`` (~1.5 KiB a file)."""
    pending = [rel]
    while pending:
        here = pending.pop()
        path = root / here
        info = tar.gettarinfo(str(path), arcname=str(here))
        if info is None:  # a socket: tar.add skips it too
            continue
        _counted(counts)(info)
        if info.isreg():
            with path.open("rb") as fh:
                tar.addfile(info, fh)
        else:
            tar.addfile(info)
        _forget_members(tar)
        if info.isdir():
            names = sorted(os.listdir(path), reverse=True)  # popped in sorted order
            pending.extend(here / name for name in names if not own_file(here, name))


def write_archive(root: Path, rels: list[PurePosixPath], out: Pipe) -> Counts:
    """Archive each ``root/rel`` (a file or a tree; symlinks as symlinks) as ``rel/...`` into
    ``out``, then :data:`MARKER` holding the counts, and close ``out``. On any error ``out``
    is aborted (the receiving side must not take a partial archive) and the error raised."""
    counts = [0, 0]
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for rel in rels:
                _add_tree(tar, root, rel, counts)
            marker = json.dumps({"files": counts[0], "bytes": counts[1]}).encode()
            info = tarfile.TarInfo(MARKER)
            info.size = len(marker)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(marker))
    except BaseException as exc:
        out.abort(f"archiving under {root} failed: {exc}")
        raise
    out.close()
    return Counts(counts[0], counts[1])


def _inside(name: str, rel: PurePosixPath) -> bool:
    """Whether archive member ``name`` is ``rel`` or under it (``.`` holds everything)."""
    path = PurePosixPath(os.path.normpath(name))
    return str(rel) == "." or path == rel or rel in path.parents


def read_archive(source: Pipe, stage: Path, rel: PurePosixPath) -> Counts:
    """Unpack the archive read from ``source`` into ``stage``; return its counts. Raises
    :class:`TransferError` for a member outside ``rel``, a member after the marker, an
    archive without the marker, or one tar cannot read. ``source`` is aborted on error, so
    its writer stops too."""
    counts = [0, 0]
    complete = False
    try:
        with tarfile.open(fileobj=source, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                if complete:
                    raise TransferError(f"archive member {member.name!r} after the end marker")
                if member.name == MARKER:
                    complete = True
                    continue
                parts = PurePosixPath(os.path.normpath(member.name)).parts
                if parts and own_file(rel, parts[0]):
                    continue  # another transfer's files at the top of sierra-root: not ours
                if not _inside(member.name, rel):
                    raise TransferError(f"archive member {member.name!r} is not under {rel}")
                _counted(counts)(member)
                tar.extract(member, stage, filter="data")
                _forget_members(tar)
    except KeyError as exc:  # tarfile's way of saying a hard link's target is not there
        source.abort(f"unpacking failed: {exc}")
        raise TransferError(
            f"the archive could not be unpacked: the target of hard link {exc} is missing"
        ) from None
    except (tarfile.TarError, OSError) as exc:
        source.abort(f"unpacking failed: {exc}")
        raise TransferError(f"the archive could not be unpacked: {exc}") from None
    except BaseException as exc:
        source.abort(f"unpacking failed: {exc}")
        raise
    if not complete:
        source.abort("the archive ended early")
        raise TransferError("the archive ended before its end marker: the stream was cut")
    source.drain()  # tar's zero padding may still arrive: dropped
    return Counts(counts[0], counts[1])


def _conflict(stage: Path, dest: Path) -> str | None:
    """The first path where ``stage`` holds a directory and ``dest`` something else, or the
    other way round (None if there is none): merging would have to stop there."""
    if not stage.is_dir() or stage.is_symlink():
        if dest.is_dir() and not dest.is_symlink():
            return f"{dest} is a directory locally, a file in the archive"
        return None
    if dest.exists() and not dest.is_dir():
        return f"{dest} is a file locally, a directory in the archive"
    if not dest.exists():
        return None  # nothing there can be in the way
    with os.scandir(stage) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        found = _conflict(stage / name, dest / name)
        if found is not None:
            return found
    return None


def merge_into_place(stage: Path, dest: Path) -> None:
    """Move the unpacked ``stage`` (a file or a tree) to ``dest``: directories are created
    or kept, each file or symlink replaces what ``dest`` has at its path (``os.replace``:
    never half a file). Files that exist only in ``dest`` stay. A file where the archive has
    a directory (or the other way round) anywhere in the tree is refused before anything
    moves, so ``dest`` is left as it was."""
    problem = _conflict(stage, dest)
    if problem is not None:
        raise TransferError(problem)
    _move(stage, dest)


def _move(stage: Path, dest: Path) -> None:
    if not stage.is_dir() or stage.is_symlink():
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, dest)
        return
    for here, dirs, files in os.walk(stage):
        rel = Path(here).relative_to(stage)
        target = dest / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in [*files, *(d for d in dirs if (Path(here) / d).is_symlink())]:
            _move(Path(here) / name, target / name)


def staging_dir(root: Path) -> Path:
    """A fresh staging directory on the same filesystem as ``root`` (so the final moves are
    renames), hidden: ``root/.sierraop-fetch-*``."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=FETCH_STAGING_PREFIX, dir=root))


def remove_tree(path: Path) -> None:
    """Remove a staging directory, whatever state it was left in."""
    shutil.rmtree(path, ignore_errors=True)

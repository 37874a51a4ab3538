"""`sierra-operator push|fetch BATCH [PATH]`: copy between the local sierra-root and a batch's
PVC through the Kubernetes API only, as ``kubectl cp`` does: a short-lived pod mounting the
PVC (:mod:`~sierra_operator.researcher.transfer_pod`) and a tar stream over ``pods/exec``
(:mod:`~sierra_operator.researcher.pod_exec`). No Service, port or extra credential.

Both directions stream (:mod:`~sierra_operator.researcher.tar_stream`: memory bounded whatever
the tree's size) and both refuse to put an incomplete tree in place:

* **push**: the pod unpacks into a staging directory on the PVC, checks that the archive's
  end marker arrived and that it holds as many files as were sent, then hard-links the staged
  tree into place (``cp -alf``: same filesystem, no second copy) and removes the staging
  directory. A cut stream, a tar error or a failed check exits non-zero and leaves the
  destination as it was.
* **fetch**: the pod archives ``PATH`` plus the end marker; this machine unpacks into a
  staging directory under the local sierra-root and moves it into place only when the
  marker arrived, tar read the whole archive, and the API server reported exit status 0.

Paths are relative to sierra-root on both sides (absolute ones must be under the local
``--sierra-root``). Existing files at the destination are replaced by what is transferred;
files only present at the destination stay.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sierra_operator.core.model import SpecError, parse_batch, stored_batch
from sierra_operator.core.names import sierra_root_claim
from sierra_operator.images.spec import pinned, tagged
from sierra_operator.researcher.kubeconfig import (
    EXIT_NOT_FOUND,
    ClusterError,
    Connection,
    one_line,
    unreachable,
)
from sierra_operator.researcher.pod_exec import ExecOutcome, ExecStreamCut
from sierra_operator.researcher.tar_stream import (
    CHUNK,
    FETCH_STAGING_PREFIX,
    MARKER,
    STAGING,
    Counts,
    Pipe,
    TransferError,
    merge_into_place,
    read_archive,
    remove_tree,
    staging_dir,
    write_archive,
)
from sierra_operator.researcher.transfer_pod import Target, run_script, transfer_pod

EXIT_TRANSFER_FAILED = 1
EXIT_NO_SUCH_PATH = 66
"""The fetch script's (and the logs script's) exit code for a path missing on the PVC."""
HEARTBEAT_SECONDS = 30.0
"""Websocket ping interval: a connection dropped without a close (NAT, a dead node) ends the
transfer as cut within two intervals instead of waiting forever with the pod kept."""

# `sh -c SCRIPT sh ROOT STAGE REL...`: paths are arguments, never pasted into the script.
PUSH_SCRIPT = f"""set -eu
root=$1 stage=$2
shift 2
# Staging dirs of pushes cut short over a day ago (their pods are gone: activeDeadline).
find "$(dirname "$stage")" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {{}} + 2>/dev/null || :
mkdir -p "$stage"
trap 'rm -rf "$stage"' EXIT
tar -x -o -f - -C "$stage"
if [ ! -f "$stage/{MARKER}" ]; then
  echo "the archive ended before its end marker: nothing was put in place" >&2; exit 65
fi
want=$(sed -n 's/.*"files": *\\([0-9]*\\).*/\\1/p' "$stage/{MARKER}")
rm -f "$stage/{MARKER}"  # never copied into place (a push of . would put it in the root)
# One dot per file: names may hold line breaks. GNU find (the images are Debian-based).
got=$(( $(find "$stage" -type f -printf . | wc -c) ))
if [ "$got" -ne "$want" ]; then
  echo "unpacked $got files, the archive announced $want: nothing was put in place" >&2
  exit 65
fi
for rel in "$@"; do
  if [ -d "$stage/$rel" ]; then
    mkdir -p "$root/$rel"
    cp -a -l -f "$stage/$rel/." "$root/$rel/"
  else
    mkdir -p "$(dirname "$root/$rel")"
    cp -a -l -f "$stage/$rel" "$root/$rel"
  fi
done
"""
FETCH_SCRIPT = f"""set -eu
root=$1 rel=$2
if [ ! -e "$root/$rel" ]; then
  echo "$root/$rel does not exist on the PVC" >&2; exit {EXIT_NO_SUCH_PATH}
fi
mark=$(mktemp -d)
trap 'rm -rf "$mark"' EXIT
printf '{{}}' > "$mark/{MARKER}"
# The tool's own files at the top (pushes being unpacked, a stray marker) never leave.
tar -c -f - --anchored --exclude="./{STAGING}" --exclude="./{FETCH_STAGING_PREFIX}*" \\
  --exclude="./{MARKER}" -C "$root" "$rel" -C "$mark" {MARKER}
"""


@dataclass(frozen=True)
class Transferred:
    """What a transfer moved, for the report."""

    files: int
    bytes: int
    remote: str


def target_of(obj: dict[str, Any], namespace: str, image: str | None = None) -> Target:
    """Where batch ``obj``'s sierra-root is: its claim (``sierraRoot.claimName`` or the one
    the operator creates), ``mountPath``, and the image its runs use (pinned to the digest
    once the operator resolved it), unless ``image`` is given."""
    try:
        batch = parse_batch(stored_batch(obj))
    except SpecError as exc:
        raise ClusterError(f"the stored SierraBatch is not one this version reads: {exc}") from None
    name = batch.metadata.name
    root = batch.spec.sierra_root
    spec_image = batch.spec.image
    status_image = ((obj.get("status") or {}).get("image")) or {}
    if image is None and spec_image is not None:
        digest = status_image.get("digest")
        image = pinned(spec_image.repository, digest) if digest else tagged(spec_image)
    if image is None:
        raise ClusterError(f"SierraBatch {name} has no spec.image: give --image (it needs tar)", 2)
    return Target(
        namespace=namespace,
        batch=name,
        claim=root.claim_name or sierra_root_claim(name),
        mount_path=root.mount_path,
        image=image,
        pull_secret=spec_image.push_secret if spec_image is not None else None,
    )


def relative_path(path: str | os.PathLike[str] | None, sierra_root: Path) -> PurePosixPath:
    """``path`` relative to sierra-root (an absolute one must lie under ``sierra_root``);
    ``.`` for all of it. ``..`` never leads out."""
    if path is None or str(path) in ("", "."):
        return PurePosixPath(".")
    given = Path(path)
    if given.is_absolute():
        try:
            given = given.relative_to(sierra_root)
        except ValueError:
            raise ClusterError(f"{path} is not under sierra-root {sierra_root}", 2) from None
    rel = PurePosixPath(os.path.normpath(given.as_posix()))
    if rel.parts and rel.parts[0] == "..":
        raise ClusterError(f"{path} leads out of sierra-root {sierra_root}", 2)
    return rel


def local_error(exc: OSError) -> ClusterError:
    """An error on this machine's files (exit code 1), naming the path."""
    where = f" ({exc.filename})" if exc.filename else ""
    return ClusterError(f"local file error{where}: {exc.strerror or exc}", EXIT_TRANSFER_FAILED)


def _remote(target: Target, rel: PurePosixPath) -> str:
    return f"PVC {target.claim}:{PurePosixPath(target.mount_path) / rel}"


def _failed(what: str, target: Target, rel: PurePosixPath, outcome: ExecOutcome) -> ClusterError:
    return ClusterError(f"{what} {_remote(target, rel)} failed: {outcome.describe()}", 1)


async def _chunks_of(pipe: Pipe) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(pipe.read, CHUNK):
        yield chunk


async def with_pod(
    conn: Connection, target: Target, work: Callable[[Any, str], Any], pod_timeout: float
) -> Any:
    """Run ``work(ws_api, pod)`` with a transfer pod (deleted afterwards, whatever
    happens). A network error talking to the API server becomes a ClusterError with exit
    code 3; any other OSError is this machine's (a local path not creatable, a rename across
    filesystems) and becomes one with exit code 1: the cluster is fine."""
    import aiohttp
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException
    from kubernetes_asyncio.stream import WsApiClient

    try:
        async with (
            client.ApiClient(configuration=conn.config) as api,
            WsApiClient(configuration=conn.config, heartbeat=HEARTBEAT_SECONDS) as ws_api,
            transfer_pod(api, target, pod_timeout) as pod,
        ):
            return await work(ws_api, pod)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise unreachable(conn, exc) from None
    except OSError as exc:
        raise local_error(exc) from None
    except ApiException as exc:  # what the specific handlers did not expect
        raise ClusterError(
            f"the Kubernetes API server answered {exc.status} {exc.reason} "
            f"(namespace {target.namespace}): {one_line(exc.body)[:300]}"
        ) from None


async def push(
    conn: Connection,
    target: Target,
    sierra_root: Path,
    rels: list[PurePosixPath],
    pod_timeout: float = 300.0,
) -> Transferred:
    """Upload each ``sierra_root/rel`` to the same path under the PVC's mount, in one
    archive (one pod): all of them are put in place, or none."""
    for rel in rels:
        if not (sierra_root / rel).exists():
            raise ClusterError(f"{sierra_root / rel} does not exist: nothing to push", 2)
    shown = rels[0] if len(rels) == 1 else PurePosixPath("{" + ",".join(map(str, rels)) + "}")

    async def work(ws_api: Any, pod: str) -> Transferred:
        pipe = Pipe()
        archiving = asyncio.ensure_future(asyncio.to_thread(write_archive, sierra_root, rels, pipe))

        async def ignore(data: bytes) -> None:
            """The push script writes nothing on stdout; its errors come on stderr."""

        stage = f"{target.mount_path.rstrip('/')}/{STAGING}/{pod}"
        outcome: ExecOutcome | None = None
        cut: ClusterError | None = None
        try:
            outcome = await run_script(
                ws_api,
                target,
                pod,
                PUSH_SCRIPT,
                [target.mount_path, stage, *map(str, rels)],
                stdin=_chunks_of(pipe),
                stdout=ignore,
            )
        except (ExecStreamCut, TransferError) as exc:
            cut = ClusterError(str(exc), 1)
        finally:
            pipe.abort("the transfer ended")  # the archiving thread stops if still going
            done = await asyncio.gather(archiving, return_exceptions=True)
        counts = done[0]
        if isinstance(counts, BaseException) and not isinstance(counts, TransferError):
            # Archiving here failed (a file unreadable or shrinking while read): that is why
            # the stream ended, and the pod refused the archive without its end marker.
            raise ClusterError(
                f"pushing to {_remote(target, shown)} failed: archiving under {sierra_root} "
                f"failed: {counts}; nothing was put in place there",
                1,
            )
        if cut is not None:
            # The cut may have come while the pod hard-linked the staged tree into place.
            raise ClusterError(
                f"pushing to {_remote(target, shown)} failed: {cut}; the PVC may hold part of "
                "what was pushed: push again",
                1,
            )
        assert outcome is not None
        if outcome.exit_code != 0:
            raise _failed("pushing to", target, shown, outcome)
        if not isinstance(counts, Counts):
            raise ClusterError(f"archiving under {sierra_root} failed: {counts}", 1)
        return Transferred(counts.files, counts.bytes, _remote(target, shown))

    result: Transferred = await with_pod(conn, target, work, pod_timeout)
    return result


async def fetch(
    conn: Connection,
    target: Target,
    sierra_root: Path,
    rel: PurePosixPath,
    pod_timeout: float = 300.0,
) -> Transferred:
    """Download the PVC's ``rel`` to ``sierra_root/rel``, put in place only when complete.
    The staging directory is made first: a local sierra-root that cannot be written fails
    before any pod is created."""
    try:
        stage = staging_dir(sierra_root)
    except OSError as exc:
        raise ClusterError(
            f"cannot fetch into {sierra_root}: {exc.strerror or exc} ({exc.filename}); give "
            "--sierra-root a directory you can write",
            EXIT_TRANSFER_FAILED,
        ) from None

    def failed(reason: object) -> ClusterError:
        return ClusterError(
            f"fetching {_remote(target, rel)} failed: {reason}; nothing was changed under "
            f"{sierra_root}",
            EXIT_TRANSFER_FAILED,
        )

    async def work(ws_api: Any, pod: str) -> Transferred:
        pipe = Pipe()
        unpacking = asyncio.ensure_future(asyncio.to_thread(read_archive, pipe, stage, rel))

        async def feed(data: bytes) -> None:
            if unpacking.done():  # it failed (or already has everything): stop now
                unpacking.result()
                return
            await asyncio.to_thread(pipe.write, data)

        try:
            try:
                outcome = await run_script(
                    ws_api, target, pod, FETCH_SCRIPT, [target.mount_path, str(rel)], stdout=feed
                )
            except TransferError:
                outcome = None  # the unpacking error, raised below, says what went wrong
            except ExecStreamCut as exc:
                raise failed(exc) from None
            finally:
                pipe.close()
            if outcome is not None and outcome.exit_code == EXIT_NO_SUCH_PATH:
                raise ClusterError(
                    f"{_remote(target, rel)} does not exist: nothing to fetch", EXIT_NOT_FOUND
                )
            try:
                counts = await unpacking
            except TransferError as exc:
                if outcome is not None and outcome.exit_code != 0:
                    raise _failed("fetching", target, rel, outcome) from None
                raise failed(exc) from None
            if outcome is None or outcome.exit_code != 0:
                assert outcome is not None  # a TransferError always fails the unpacking
                raise _failed("fetching", target, rel, outcome)
            try:
                merge_into_place(stage / rel, sierra_root / rel)
            except TransferError as exc:
                raise failed(exc) from None
            return Transferred(counts.files, counts.bytes, _remote(target, rel))
        finally:
            pipe.abort("the transfer ended")
            await asyncio.gather(unpacking, return_exceptions=True)

    try:
        result: Transferred = await with_pod(conn, target, work, pod_timeout)
    finally:
        remove_tree(stage)
    return result


def describe(done: Transferred, direction: str, local: Path) -> str:
    """One line for the terminal."""
    size = done.bytes / (1024 * 1024)
    arrow = "->" if direction == "pushed" else "<-"
    return f"{direction} {done.files} files ({size:.1f} MiB): {local} {arrow} {done.remote}"


@dataclass(frozen=True)
class Located:
    """A batch found through the researcher's connection, and where its sierra-root is."""

    conn: Connection
    obj: dict[str, Any]
    target: Target


async def locate(
    batch: str, namespace: str | None, context: str | None, image: str | None = None
) -> Located:
    """Read batch ``batch`` (``get`` on sierrabatches) and find its PVC and image."""
    from sierra_operator.researcher.batch_status import read_with
    from sierra_operator.researcher.kubeconfig import connect

    conn = await connect(namespace, context)
    obj = await read_with(conn, batch)
    return Located(conn, obj, target_of(obj, conn.namespace, image))

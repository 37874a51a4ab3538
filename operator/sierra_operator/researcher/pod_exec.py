"""A command run in a running pod through the Kubernetes API, as ``kubectl exec`` does:
``pods/exec`` over a websocket (kubernetes_asyncio's ``WsApiClient``).

Why not a Service or a port: the researcher's machine then needs nothing but the API server,
with the researcher's own credentials (``create`` on ``pods/exec``).

The wire protocol is ``v4.channel.k8s.io``: every websocket message is binary, its first
byte the channel (0 stdin, 1 stdout, 2 stderr, 3 the command's exit status as a
``metav1.Status`` JSON), the rest the data. The protocol has no way to close stdin alone, so
what is sent on stdin must tell the command where it ends (a tar archive does); closing the
websocket closes the command's stdin. The status arrives after the command exited and its
output was sent: a stream that ends without it was cut (the connection dropped, the pod
went away) and its output must not be trusted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sierra_operator.researcher.kubeconfig import ClusterError, forbidden, one_line

STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
PROTOCOL = "v4.channel.k8s.io"
STDERR_KEPT = 16 * 1024
"""How much of the command's stderr is kept for the error message (the end of it)."""


class ExecStreamCut(ClusterError):
    """The exec stream ended before the command's exit status: its output is incomplete
    (exit code 1: the work failed, the cluster may well be usable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1)


@dataclass(frozen=True)
class ExecOutcome:
    """How the command ended: ``exit_code`` (-1 when the API server gave no code, with its
    ``message``) and the end of its stderr."""

    exit_code: int
    message: str
    stderr: bytes

    def describe(self) -> str:
        """The failure in one line: the exit code or the server's message, then stderr."""
        what = f"exited {self.exit_code}" if self.exit_code >= 0 else self.message
        tail = one_line(self.stderr.decode(errors="replace"))[-600:]
        return what + (f": {tail}" if tail else "")


def exit_code_of(status: Mapping[str, Any]) -> tuple[int, str]:
    """Exit code and message from channel 3's ``Status``: ``Success`` is 0; a command that
    exited non-zero is ``NonZeroExitCode`` with the code in ``details.causes``; anything
    else (the command could not start) is -1 with the server's message."""
    if status.get("status") == "Success":
        return 0, ""
    message = one_line(status.get("message")) or "the command failed"
    causes = (status.get("details") or {}).get("causes") or []
    for cause in causes:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(str(cause.get("message"))), message
            except (TypeError, ValueError):
                break
    return -1, message


async def _send_stdin(ws: Any, chunks: AsyncIterator[bytes]) -> None:
    """Send ``chunks`` on stdin. If producing them fails, the websocket is closed first, so
    the command sees its stdin end early (and fails) rather than wait for more."""
    try:
        async for chunk in chunks:
            await ws.send_bytes(bytes([STDIN]) + chunk)
    except BaseException:
        await ws.close()
        raise


async def run_in_pod(
    ws_api: Any,
    namespace: str,
    pod: str,
    container: str,
    command: list[str],
    *,
    stdout: Callable[[bytes], Awaitable[None]],
    stdin: AsyncIterator[bytes] | None = None,
    stderr: Callable[[bytes], Awaitable[None]] | None = None,
) -> ExecOutcome:
    """Run ``command`` in ``pod`` and wait for it: ``stdin`` chunks are sent as they come,
    each stdout chunk is given to ``stdout`` as it arrives (so nothing is held in memory),
    and so is each stderr chunk to ``stderr`` if given (its end is kept for the outcome).

    Raises :class:`ExecStreamCut` when the stream ends without an exit status, a
    :class:`ClusterError` when the API server refuses the exec (permission, no such pod,
    container not running), and whatever ``stdin``'s producer or ``stdout`` raise (the
    websocket is closed then, which ends the command's stdin)."""
    import aiohttp
    from kubernetes_asyncio import client

    core: Any = client.CoreV1Api(ws_api)  # its exec method is typed for the preloaded form
    try:
        connecting = await core.connect_get_namespaced_pod_exec(
            pod,
            namespace,
            command=command,
            container=container,
            stdin=stdin is not None,
            stdout=True,
            stderr=True,
            tty=False,
            _preload_content=False,
        )
        ws_cm = connecting
        ws = await ws_cm.__aenter__()
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 403:
            raise forbidden(
                "create", "pods/exec", namespace, "run tar in the transfer pod"
            ) from None
        raise ClusterError(
            f"the API server refused to exec in pod {namespace}/{pod} ({exc.status} "
            f"{one_line(exc.message)}); is the pod still running?"
        ) from None
    try:
        status, err_tail = await exchange(ws, stdin, stdout, stderr)
    finally:
        await ws_cm.__aexit__(None, None, None)
    if status is None:
        tail = one_line(bytes(err_tail).decode(errors="replace"))[-600:]
        raise ExecStreamCut(
            f"the exec stream from pod {namespace}/{pod} ended before the command's exit "
            f"status (connection dropped or pod gone){': ' + tail if tail else ''}"
        )
    code, message = exit_code_of(status)
    return ExecOutcome(code, message, bytes(err_tail))


async def exchange(
    ws: Any,
    stdin: AsyncIterator[bytes] | None,
    stdout: Callable[[bytes], Awaitable[None]],
    stderr: Callable[[bytes], Awaitable[None]] | None,
) -> tuple[dict[str, Any] | None, bytes]:
    """Send ``stdin`` on an open exec websocket while handing out what arrives, until the
    stream ends; return the exit status (None if the stream ended without one) and the end
    of stderr."""
    import aiohttp

    sender = asyncio.ensure_future(_send_stdin(ws, stdin)) if stdin is not None else None
    status: dict[str, Any] | None = None
    err_tail = bytearray()
    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                data = bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = str(msg.data).encode()
            else:
                break  # ERROR or CLOSE: the stream is over
            if len(data) < 2:
                continue  # an empty message only says a channel is open
            channel, payload = data[0], data[1:]
            if channel == STDOUT:
                await stdout(payload)
            elif channel == STDERR:
                if stderr is not None:
                    await stderr(payload)
                err_tail += payload
                del err_tail[:-STDERR_KEPT]
            elif channel == STATUS:
                status = json.loads(payload)
        if sender is not None and sender.done() and not sender.cancelled():
            failed = sender.exception()  # retrieved either way: never "never retrieved"
            # Without a status the producer's error is why the stream ended. With one, the
            # command ended first (e.g. the remote tar failed early and the server closed the
            # stream, so sending the rest failed): its exit code and stderr say what happened.
            if failed is not None and status is None:
                raise failed
    finally:
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    return status, bytes(err_tail)

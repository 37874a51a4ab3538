"""Processes local mode starts: its own Prefect server and process workers.

Unlike SIERRA's plugin (``sleep 10``, port 4200, ``killall prefect``) the server gets a free
port, a private PREFECT_HOME, a readiness check with a deadline and a clear error, and only
the processes started here are ever stopped (each in its own process group).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from sierra_operator.local import home_template


class ServerStartError(RuntimeError):
    """The Prefect server exited or did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prefect_environment(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for Prefect processes we start: private home, no telemetry, no UI."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_PROFILES_PATH=str(home / "profiles.toml"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except OSError:
        return ""


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    pipe_stdin: ClassVar[bool] = False  # a pipe from us on its stdin (else /dev/null)

    def start(self) -> None:
        """Start it detached from our terminal's Ctrl-C, so we control the shutdown order."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if self.pipe_stdin else subprocess.DEVNULL,
                start_new_session=True,
            )

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM its process group, then SIGKILL after ``grace`` seconds; only ours."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                # Children (flow-run processes) may outlive the leader: end the group.
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self) -> str:
        """Last lines of its log, for error messages."""
        return _tail(self.log_path)


def prefect_cli() -> list[str]:
    """Command prefix running the Prefect CLI of this very interpreter."""
    return [sys.executable, "-m", "prefect"]


# Server services local mode never needs (no schedules, pauses, automations, workers,
# subflows, tag concurrency): off, the server starts ~20% faster (8.3 s vs 10.6 s measured
# on a loaded 2-core machine) and has less to do while runs execute. The event persister
# (the events table: the UI's event feed and automations, neither used by local mode's
# UI-less private server) is off too: its batched writes made SQLite refuse a concurrent
# flow-run create or state change ("database is locked", answered 503), which Prefect's
# client retries only after 2 s: 6 of 72 sequential creates measured, 0 without it. The
# task run recorder (task states, which progress reads) stays on.
IDLE_SERVICES = (
    "SCHEDULER",
    "LATE_RUNS",
    "PAUSE_EXPIRATIONS",
    "REPOSSESSOR",
    "FOREMAN",
    "TRIGGERS",
    "EVENT_LOGGER",
    "CANCELLATION_CLEANUP",
    "CLEANUP_RECONCILER",
    "EVENT_PERSISTER",
)


HEALTH_POLL_SECONDS = 0.1  # a health check costs the starting server next to nothing


class LocalPrefectServer(ManagedProcess):
    """`prefect server start` on 127.0.0.1:<free port> with its own PREFECT_HOME.

    ``lean``: without the services local mode never needs (:data:`IDLE_SERVICES`); a
    server shared with the operator's workers (tests) keeps them. ``database_url`` (e.g.
    ``postgresql+asyncpg://...``) replaces the embedded SQLite database; it goes to the
    server's environment only, never to a log."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        database_url: str | None = None,
        *,
        lean: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.home = home
        self.database_url = database_url
        self.seeded = False  # started from the cached template (see home_template)
        env = prefect_environment(home)
        if database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        super().__init__(
            name="prefect-server",
            argv=[
                *prefect_cli(),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            log_path=home / "server.log",
        )
        if lean:
            self.env.update(
                {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in IDLE_SERVICES}
            )

    def start(self) -> None:
        """Start from the cached ready home if there is one (see home_template); not for
        another database, whose migrations and blocks the cached SQLite home says nothing of."""
        self.seeded = self._own_sqlite() and home_template.seed(self.home)
        if self.seeded:
            # The template's database has every block type of this Prefect registered.
            # Prefect's memo of that never matches here (it hashes the database URL, which
            # names this new home), so it would import every installed collection
            # (prefect-kubernetes: the Kubernetes client) and register them all again:
            # ~1 s of the server's start on a 2-core machine.
            self.env.update(
                PREFECT_SERVER_REGISTER_BLOCKS_ON_START="false",
                PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION="false",
            )
        super().start()

    def _own_sqlite(self) -> bool:
        """Whether this server uses its home's SQLite database: no ``database_url`` and no
        database URL in its environment (inherited, say); only then is the home template
        seeded or saved."""
        return self.database_url is None and home_template.own_sqlite(self.env)

    @property
    def api_url(self) -> str:
        """The API URL clients and workers use."""
        return f"http://127.0.0.1:{self.port}/api"

    def wait_ready(self, timeout: float) -> None:
        """Poll /api/ready until it answers; fail clearly on exit or after ``timeout``.

        Prefect's readiness check, not /api/health: it answers once the server reaches its
        database, which opens the server's database engine (~0.25 s on a 2-core machine)
        as part of the start rather than of the batch's first request."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise ServerStartError(
                    f"the Prefect server exited with code {self.proc and self.proc.returncode} "
                    f"before answering on {self.api_url}; its log ({self.log_path}) ends:\n"
                    f"{self.log_tail()}"
                )
            if health_ok(self.api_url, "ready"):
                if not self.seeded and self._own_sqlite():
                    home_template.save(self.home)  # a SQLite home only
                return
            time.sleep(HEALTH_POLL_SECONDS)
        self.stop()
        raise ServerStartError(
            f"the Prefect server did not answer {self.api_url}/ready within {timeout:.0f}s; "
            f"raise --server-timeout on a slow machine, or use an existing server with "
            f"--prefect-api-url. Its log ({self.log_path}) ends:\n{self.log_tail()}"
        )


def health_ok(api_url: str, check: str = "health") -> bool:
    """True if the Prefect API at ``api_url`` answers its ``check`` (``health``: it is up;
    ``ready``: it also reaches its database)."""
    try:
        with urllib.request.urlopen(f"{api_url}/{check}", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False

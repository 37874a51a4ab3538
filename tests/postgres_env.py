"""A private PostgreSQL server for tests and benchmarks: Prefect's production database.

Real part: Debian's ``postgresql`` package (``initdb`` + ``postgres``), one throw-away cluster
in a temp dir, listening on 127.0.0.1:<free port> and on a socket in that dir, trust auth
for the local user ``prefect`` (nothing else can reach it; no password exists to leak).
PostgreSQL refuses to run as root: as root the cluster is owned by, and runs as, the
``postgres`` system user the package creates. Only the process started here is stopped.
scripts/test installs the package when missing and it is root; without it, callers skip
with :func:`missing_reason`.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sierra_operator.local.server import ManagedProcess, free_port

USER = "prefect"
DATABASE = "prefect"


def bin_dir() -> Path | None:
    """Where ``initdb`` and ``postgres`` live (Debian keeps them off PATH, per version)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def missing_reason() -> str | None:
    """Why no private PostgreSQL can run here, or None if it can."""
    if bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; scripts/test does)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL refuses to run as root"
    return None


def _as_owner(argv: list[str]) -> list[str]:
    """``argv`` run as the cluster's owner: ourselves, or ``postgres`` when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PrivatePostgres:
    """One PostgreSQL cluster in ``root``, started by :meth:`start`, ended by :meth:`stop`."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sierra-pg-")))
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Prefect (``PREFECT_API_DATABASE_CONNECTION_URL``)."""
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self, timeout: float = 60.0) -> PrivatePostgres:
        """initdb, start the server, create the database; raise with the log on failure."""
        bindir = bin_dir()
        assert bindir is not None, missing_reason()
        data = self.root / "data"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_owner([str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust"]),
            check=True,
            capture_output=True,
        )
        self.process = ManagedProcess(
            "postgres",
            _as_owner(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=200",
                ]
            ),
            dict(os.environ),
            self.root / "logs" / "postgres.log",
        )
        self.process.start()  # its log is opened by us (root or not), outside the cluster
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sql(f"CREATE DATABASE {DATABASE}", database="postgres")
                return self
            except RuntimeError as exc:
                if self.process.running() and time.monotonic() < deadline:
                    time.sleep(0.3)
                    continue
                log = self.process.log_tail()
                self.stop()
                raise RuntimeError(
                    f"PostgreSQL did not start on port {self.port}: {exc}; "
                    f"log ({self.process.log_path}) ends:\n{log}"
                ) from None

    def sql(self, query: str, database: str = DATABASE) -> str:
        """One query through psql, its rows as unaligned text (what is really stored)."""
        bindir = bin_dir()
        assert bindir is not None
        argv = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER]
        done = subprocess.run(
            [*argv, "-d", database, "-At", "-c", query], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout.strip()

    def stop(self) -> None:
        """Stop the server (only ours) and delete the cluster."""
        if self.process is not None:
            self.process.stop(grace=10)
        shutil.rmtree(self.root, ignore_errors=True)

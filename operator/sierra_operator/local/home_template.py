"""A ready Prefect home to start local mode's private server from, cached per Prefect version.

A fresh Prefect server spends a third of its start (measured: 19.6 s -> 13.1 s on a loaded
2-core machine, see bench/README.md) creating its SQLite database (every migration) and
registering every block type. Both results are the same for every batch with the same
Prefect: after the first server of a version is ready, a snapshot of its database (SQLite's
backup API: consistent while the server runs, taken before local mode creates anything)
and its block-registration memo are kept under ``$XDG_CACHE_HOME/sierra-operator/``
(default ``~/.cache``); later servers start from a copy in their own fresh home, where
Prefect finds the migrations applied and the blocks registered. Best effort: any failure
just means a fresh start. ``SIERRA_OPERATOR_NO_PREFECT_CACHE=1`` turns it off.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

DATABASE = "prefect.db"
MEMO = "memo_store.toml"  # Prefect's record of the block types it registered
# Either points a server at a database other than its home's SQLite file: such a server's
# home must neither be seeded (the template says nothing of that database) nor saved.
DATABASE_URL_SETTINGS = (
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
)


def own_sqlite(env: Mapping[str, str]) -> bool:
    """Whether a server started with ``env`` uses its home's SQLite database."""
    return not any(env.get(name) for name in DATABASE_URL_SETTINGS)


def template_dir() -> Path | None:
    """Where the template for the installed Prefect lives (None: caching is off)."""
    if os.environ.get("SIERRA_OPERATOR_NO_PREFECT_CACHE"):
        return None
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sierra-operator" / f"prefect-{version('prefect')}-home"


def seed(home: Path) -> bool:
    """Copy the template into a new, empty Prefect ``home``; whether there was one."""
    source = template_dir()
    if source is None or not (source / DATABASE).is_file() or not (source / MEMO).is_file():
        return False
    try:
        for name in (DATABASE, MEMO):
            shutil.copyfile(source / name, home / name)
    except OSError:
        for name in (DATABASE, MEMO):
            (home / name).unlink(missing_ok=True)
        return False
    return True


def save(home: Path) -> bool:
    """Keep a snapshot of a just-started server's home as the template (if none yet).

    Only from a real SQLite home: ``prefect.db`` a regular file (not a link), opened
    read-only, so a home whose server used another database (no such file) is never saved,
    and connecting never creates an empty database that would become the template."""
    target = template_dir()
    database = home / DATABASE
    if target is None or target.exists() or not (home / MEMO).is_file():
        return False
    if database.is_symlink() or not database.is_file():
        return False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    except OSError:
        return False
    try:
        live = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        copy = sqlite3.connect(staging / DATABASE)
        try:
            live.backup(copy)
        finally:
            copy.close()
            live.close()
        shutil.copyfile(home / MEMO, staging / MEMO)
        staging.rename(target)  # atomic; another invocation may have won the race
    except (OSError, sqlite3.Error):
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True

"""The cached ready Prefect home: saved once per Prefect version, seeded into new homes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sierra_operator.local import home_template


def _ready_home(home: Path, marker: str) -> Path:
    """A home as a started server leaves it: a database (in WAL mode, as Prefect's) + memo."""
    home.mkdir()
    db = sqlite3.connect(home / home_template.DATABASE)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE alembic_version (version_num TEXT)")
    db.execute("INSERT INTO alembic_version VALUES (?)", (marker,))
    db.commit()  # left open: the server is still running when the snapshot is taken
    (home / home_template.MEMO).write_text('block_auto_registration = "abc"\n')
    return home


def _marker(home: Path) -> str:
    db = sqlite3.connect(home / home_template.DATABASE)
    try:
        return str(db.execute("SELECT version_num FROM alembic_version").fetchone()[0])
    finally:
        db.close()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SIERRA_OPERATOR_NO_PREFECT_CACHE", raising=False)
    return tmp_path / "cache"


def test_a_new_home_starts_from_the_first_ready_one(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert not home_template.seed(fresh), "nothing cached yet"
    assert home_template.save(_ready_home(tmp_path / "first", "head-1"))
    assert not home_template.save(_ready_home(tmp_path / "second", "head-2")), "kept once"
    assert home_template.seed(fresh)
    assert _marker(fresh) == "head-1", "the snapshot holds what the live WAL database held"
    assert (fresh / home_template.MEMO).read_text() == 'block_auto_registration = "abc"\n'


def test_the_cache_is_per_prefect_version_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    where = home_template.template_dir()
    assert where is not None and where.parent == cache / "sierra-operator"
    assert where.name.startswith("prefect-3.")
    monkeypatch.setenv("SIERRA_OPERATOR_NO_PREFECT_CACHE", "1")
    assert home_template.template_dir() is None


def test_a_home_without_its_block_memo_is_not_saved(tmp_path: Path) -> None:
    home = _ready_home(tmp_path / "h", "head-1")
    (home / home_template.MEMO).unlink()
    assert not home_template.save(home)


def test_a_home_without_its_own_database_file_is_not_saved(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / home_template.MEMO).write_text('block_auto_registration = "abc"\n')
    assert not home_template.save(home), "its server used another database"
    assert not (home / home_template.DATABASE).exists(), "read-only: no empty database made"
    other = _ready_home(tmp_path / "other", "head-1")
    (home / home_template.DATABASE).symlink_to(other / home_template.DATABASE)
    assert not home_template.save(home), "a link is not the home's own database"


@pytest.mark.parametrize(
    "setting", ["PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"]
)
def test_a_server_on_another_database_neither_seeds_nor_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    from sierra_operator.local.server import LocalPrefectServer

    assert home_template.save(_ready_home(tmp_path / "first", "head-1"))
    assert home_template.own_sqlite({})
    assert not home_template.own_sqlite({setting: "postgresql+asyncpg://db/prefect"})
    home = tmp_path / "home"
    home.mkdir()
    server = LocalPrefectServer(home)
    server.env[setting] = "postgresql+asyncpg://db/prefect"  # e.g. inherited
    assert not server._own_sqlite()
    monkeypatch.setattr(
        home_template, "seed", lambda home: pytest.fail("seeded for another database")
    )
    monkeypatch.setattr("sierra_operator.local.server.ManagedProcess.start", lambda self: None)
    server.start()
    assert not server.seeded

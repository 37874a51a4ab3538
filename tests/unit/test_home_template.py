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

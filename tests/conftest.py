"""Shared fixtures: one real Prefect server for the whole test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sierra_operator.server import LocalPrefectServer


@pytest.fixture(scope="session")
def prefect_api_url() -> Iterator[str]:
    """A real `prefect server start` (SQLite) on a free port, started once, stopped at the end.

    SIERRA_TEST_PREFECT_API_URL reuses a server that is already running (and leaves it alone).
    """
    given = os.environ.get("SIERRA_TEST_PREFECT_API_URL")
    if given:
        yield given
        return
    home = Path(tempfile.mkdtemp(prefix="sierra-test-prefect-"))
    server = LocalPrefectServer(home)
    server.start()
    try:
        server.wait_ready(timeout=300)
        yield server.api_url
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)

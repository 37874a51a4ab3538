"""Shared fixtures: one real Prefect server, one image build environment per test session."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sierra_operator.local.server import LocalPrefectServer
from tests.image_env import ImageEnv, missing_tools, start_image_env

# A suite started in the background by a non-interactive shell (`bash .ci/run &`) inherits
# SIGINT ignored (POSIX), and Python then installs no KeyboardInterrupt handler, neither here
# nor in the CLIs the tests start (an ignored signal stays ignored across exec): the Ctrl-C
# tests would fail for how the suite was started. A terminal's Ctrl-C is what they model.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(scope="session")
def image_env() -> Iterator[ImageEnv]:
    """podman's Docker API + an authenticated registry (tests/image_env.py), once a session.

    Without the Debian packages (scripts/test installs them as root) image tests are skipped,
    saying which are missing; CI=true makes that a failure instead.
    """
    missing = missing_tools()
    if missing:
        message = f"image tests need {', '.join(missing)} (apt-get install podman runc "
        message += "docker-registry busybox-static)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = start_image_env()
    try:
        yield env
    finally:
        env.stop()

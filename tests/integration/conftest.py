"""Fixtures of the cluster-less cluster tests: one temp dir and one emulated Kubernetes API
per test module (each module names its namespaces in ``NAMESPACES``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import KubeAPI, Workers, start_kube_api


@pytest.fixture(scope="module")
def tmp_module(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A temp dir for the module; /tmp/… keeps mount paths short and the same "inside"
    Jobs and outside. SIERRA_TEST_KEEP=1 keeps it for a post-mortem."""
    path = Path(tempfile.mkdtemp(prefix=f"sierra-{request.module.__name__.split('.')[-1]}-"))
    yield path
    if not os.environ.get("SIERRA_TEST_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def kube(tmp_module: Path, request: pytest.FixtureRequest) -> Iterator[KubeAPI]:
    """tests/kube_api.py serving the module's ``NAMESPACES``."""
    api = start_kube_api(tmp_module, list(request.module.NAMESPACES))
    yield api
    api.proc.kill()
    api.proc.wait()


@pytest.fixture()
def workers(kube: KubeAPI, tmp_module: Path) -> Iterator[Workers]:
    """Worker "pods" a test starts from its batches' Deployments; stopped after the test."""
    w = Workers(kube, tmp_module / "workers")
    yield w
    w.stop()

"""`sierra-operator local` with spec.image.build: the real CLI builds and pushes through the
docker SDK (podman's Docker API, tests/image_env.py) with the user's `docker login`
credentials (DOCKER_CONFIG), records the digest, then runs the batch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.image_env import BASE_IMAGE, ImageEnv
from tests.integration.helpers import inline_batch, probe, run_local, status

pytestmark = [pytest.mark.image, pytest.mark.integration]


def test_local_mode_builds_pushes_and_records_the_digest(
    tmp_path: Path, image_env: ImageEnv, prefect_api_url: str
) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo local > /f\n")
    doc = inline_batch("localbuilt", [[probe(0.1)]])
    doc["spec"]["image"] = {
        "repository": f"{image_env.registry}/localbuilt",
        "tag": "v1",
        "build": {"context": "ctx"},  # relative to the batch file
    }
    batch = tmp_path / "b.yaml"
    batch.write_text(yaml.safe_dump(doc))
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    (docker_config / "config.json").write_text(image_env.dockerconfigjson())
    env = dict(os.environ, DOCKER_HOST=image_env.docker_host, DOCKER_CONFIG=str(docker_config))
    proc = run_local(batch, tmp_path / "root", prefect_api_url, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = status(tmp_path / "root" / "localbuilt")["image"]
    assert recorded["digest"] == image_env.registry_digest("localbuilt", "v1")
    assert recorded["buildHash"].startswith("sha256:")
    assert "pushed" in proc.stdout

    (docker_config / "config.json").write_text(json.dumps({"auths": {}}))
    denied = run_local(batch, tmp_path / "root2", prefect_api_url, env=env)
    assert denied.returncode == 3, "no credentials: an infrastructure error, nothing runs"
    assert image_env.registry in denied.stdout and "refused" in denied.stdout
    assert not (tmp_path / "root2" / "localbuilt" / "exp-outputs").exists()

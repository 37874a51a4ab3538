"""Pure image facts: registry parsing, the build-inputs hash, credentials from a
dockerconfigjson, and what a failed build's condition says."""

from __future__ import annotations

import base64
import json

import pytest

from sierra_operator.core.model import ImageSpec
from sierra_operator.images.spec import (
    RegistryAuth,
    build_hash,
    digest_in,
    failing_step,
    is_directory_context,
    is_git_context,
    path_in_registry,
    pinned,
    registry_auth,
    registry_of,
    tail,
)

pytestmark = pytest.mark.unit


def image(**build: object) -> ImageSpec:
    return ImageSpec.model_validate(
        {"repository": "localhost:5001/foraging", "tag": "v1", "build": {"context": "x", **build}}
    )


@pytest.mark.parametrize(
    ("repository", "registry", "path"),
    [
        ("localhost:5001/foraging", "localhost:5001", "foraging"),
        ("ghcr.io/acme/sim", "ghcr.io", "acme/sim"),
        ("acme/sim", "docker.io", "acme/sim"),
        ("python", "docker.io", "library/python"),
        ("localhost/sim", "localhost", "sim"),
    ],
)
def test_registry_and_path(repository: str, registry: str, path: str) -> None:
    assert registry_of(repository) == registry
    assert path_in_registry(repository) == path


def test_build_hash_changes_with_every_input_and_only_then() -> None:
    base = build_hash(image(buildArgs={"A": "1", "B": "2"}))
    assert base == build_hash(image(buildArgs={"B": "2", "A": "1"})), "order does not matter"
    assert base != build_hash(image(buildArgs={"A": "1", "B": "3"}))
    assert base != build_hash(image(buildArgs={"A": "1", "B": "2"}, target="run"))
    assert base != build_hash(image(buildArgs={"A": "1", "B": "2"}, dockerfile="D2"))
    other_tag = image(buildArgs={"A": "1", "B": "2"}).model_copy(update={"tag": "v2"})
    assert base != build_hash(other_tag)
    no_build = ImageSpec.model_validate({"repository": "r", "tag": "t"})
    assert build_hash(no_build) == ""


def _config(entries: dict[str, dict[str, str]]) -> str:
    return json.dumps({"auths": entries})


def test_registry_auth_from_auth_field_and_username_password() -> None:
    token = base64.b64encode(b"alice:p:w").decode()
    found = registry_auth(_config({"localhost:5001": {"auth": token}}), "localhost:5001")
    assert found == RegistryAuth("localhost:5001", "alice", "p:w")
    hub = registry_auth(
        _config({"https://index.docker.io/v1/": {"username": "bob", "password": "x"}}),
        "docker.io",
    )
    assert hub is not None and hub.username == "bob"
    assert registry_auth(_config({"ghcr.io": {"auth": token}}), "localhost:5001") is None


def test_registry_auth_errors_never_echo_the_document() -> None:
    with pytest.raises(ValueError) as err:
        registry_auth('{"not": "auths", "secret": "hunter2"}', "r")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="neither auth nor username"):
        registry_auth(_config({"r": {"email": "x"}}), "r")


def test_password_is_not_in_repr() -> None:
    auth = RegistryAuth("r", "u", "hunter2")
    assert "hunter2" not in repr(auth) and "hunter2" not in str(auth)


def test_failing_step_docker_and_podman_logs() -> None:
    docker_log = ["Step 1/3 : FROM base", " ---> abc", "Step 2/3 : RUN make", "make: *** Error 2"]
    podman_log = ["STEP 1/2: FROM base", "STEP 2/2: RUN exit 7", "Error: exit status 7"]
    assert failing_step(docker_log) == "Step 2/3 : RUN make"
    assert failing_step(podman_log) == "STEP 2/2: RUN exit 7"
    assert failing_step(["no steps"]) is None


def test_tail_is_bounded() -> None:
    log = [f"line {i}" for i in range(100)] + ["", "x" * 5000]
    assert tail(log[:100], lines=2) == "line 98\nline 99"
    assert len(tail(log)) <= 801


def test_digest_pin_and_git_contexts() -> None:
    digest = "sha256:" + "a" * 64
    assert digest_in(f"v1: digest: {digest} size: 735") == digest
    assert digest_in("Pushing") is None
    assert pinned("localhost:5001/x", digest) == f"localhost:5001/x@{digest}"
    assert is_git_context("https://github.com/acme/foraging.git#main")
    assert is_git_context("git@github.com:acme/foraging.git")
    assert not is_git_context("https://example.org/ctx.tar.gz")
    assert is_directory_context("ctx") and is_directory_context("/abs/ctx")
    assert not is_directory_context("https://example.org/ctx.tar.gz")
    assert not is_directory_context("git@github.com:acme/foraging.git")
    assert not is_directory_context("github.com/acme/foraging")

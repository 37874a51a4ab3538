"""Build and push through the docker SDK against a real engine and registry (tests/image_env.py:
podman's Docker-compatible API and docker-registry with htpasswd auth)."""

from __future__ import annotations

import pytest

from sierra_operator.core.model import ImageSpec
from sierra_operator.images.builder import ImageError, build_and_push
from sierra_operator.images.registry import ImageNotFound, RegistryUnreachable, resolve_digest
from sierra_operator.images.spec import RegistryAuth
from sierra_operator.local.server import free_port
from tests.image_env import BASE_IMAGE, PASSWORD, USER, ImageEnv

pytestmark = pytest.mark.image

DOCKERFILE = f'FROM {BASE_IMAGE}\nARG GREETING=hello\nRUN echo "$GREETING" > /greeting\n'


def spec(env: ImageEnv, name: str, dockerfile: str = DOCKERFILE, **args: str) -> ImageSpec:
    url = env.context(name, {"Dockerfile": dockerfile, "data.txt": name})
    return ImageSpec.model_validate(
        {
            "repository": f"{env.registry}/{name}",
            "tag": "v1",
            "build": {"context": url, "buildArgs": args},
            "pushSecret": "regcred",
        }
    )


def good_auth(env: ImageEnv, password: str = PASSWORD) -> RegistryAuth:
    return RegistryAuth(env.registry, USER, password)


def test_build_push_records_the_registrys_digest(image_env: ImageEnv) -> None:
    milestones: list[str] = []
    image = spec(image_env, "pushed", GREETING="hi")
    pushed = build_and_push(
        image, image_env.docker_host, good_auth(image_env), "regcred", milestones.append
    )
    assert pushed.digest == image_env.registry_digest("pushed", "v1")
    assert pushed.digest.startswith("sha256:")
    assert any(m.startswith("building") for m in milestones)
    assert any(m.startswith("pushed") and pushed.digest in m for m in milestones)
    assert len(milestones) <= 4, "a few milestones, not one per step or layer"
    assert resolve_digest(image.repository, "v1", good_auth(image_env)) == pushed.digest


def test_different_build_args_give_a_different_image(image_env: ImageEnv) -> None:
    first, second = (
        build_and_push(
            spec(image_env, "args", GREETING=greeting),
            image_env.docker_host,
            good_auth(image_env),
            None,
            print,
        )
        for greeting in ("a", "b")
    )
    assert first.digest != second.digest
    assert image_env.registry_digest("args", "v1") == second.digest


def test_dockerfile_error_names_the_failing_step(image_env: ImageEnv) -> None:
    broken = DOCKERFILE + "RUN exit 7\nRUN echo never\n"
    with pytest.raises(ImageError) as err:
        build_and_push(spec(image_env, "broken", broken), image_env.docker_host, None, None, print)
    assert err.value.reason == "BuildFailed"
    assert "RUN exit 7" in str(err.value)
    assert "never" not in str(err.value).split("last lines")[0]


def test_wrong_credentials_name_registry_and_secret_not_password(image_env: ImageEnv) -> None:
    image = spec(image_env, "denied")
    with pytest.raises(ImageError) as err:
        build_and_push(
            image, image_env.docker_host, good_auth(image_env, "wrong-pw-123"), "regcred", print
        )
    message = str(err.value)
    assert err.value.reason == "PushFailed"
    assert image_env.registry in message and "'regcred'" in message
    assert "wrong-pw-123" not in message and PASSWORD not in message


def test_unreachable_context_and_engine_are_clear(image_env: ImageEnv) -> None:
    image = spec(image_env, "ctx")
    missing = image.model_copy(
        update={
            "build": image.build.model_copy(
                update={"context": f"{image_env.contexts_url}/nope.tar.gz"}
            )
        }
    )
    with pytest.raises(ImageError) as err:
        build_and_push(missing, image_env.docker_host, None, None, print)
    assert err.value.reason == "ContextUnavailable" and "spec.image.build.context" in str(err.value)
    with pytest.raises(ImageError) as err:
        build_and_push(image, f"unix://{image_env.root}/no.sock", None, None, print)
    assert err.value.reason == "EngineUnavailable"


def test_resolve_digest_of_missing_and_unreachable(image_env: ImageEnv) -> None:
    with pytest.raises(ImageNotFound):
        resolve_digest(f"{image_env.registry}/never-pushed", "v1", good_auth(image_env))
    with pytest.raises(ImageNotFound, match=r"spec\.image\.pushSecret"):
        resolve_digest(f"{image_env.registry}/pushed", "v1", None)  # needs credentials
    with pytest.raises(RegistryUnreachable):
        resolve_digest(f"127.0.0.1:{free_port()}/x", "v1", None, timeout=2)

"""Every example a user is pointed to is a valid SierraBatch: for the API server's schema
(the committed CRD) and for the operator's model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sierra_operator.core.model import parse_batch
from tests.crd_validator import crd_errors

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_the_documented_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"batch.yaml", "minimal.yaml", "sierra-batch.yaml", "build-batch.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "SierraBatch"
    assert crd_errors(doc) == []
    batch = parse_batch(doc)
    assert batch.spec.image is not None, "the cluster needs an image"


def test_build_example_builds_and_pushes() -> None:
    doc = yaml.safe_load((EXAMPLES[0].parent / "build-batch.yaml").read_text())
    image = parse_batch(doc).spec.image
    assert image is not None and image.build is not None and image.push_secret

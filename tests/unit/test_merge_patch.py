"""JSON merge patch (RFC 7386) as the API server applies it, the least patch the operator sends,
and the test API emulator (tests/kube_api.py) storing status the way a real API server does."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import kmock
import pytest

from sierra_operator.cluster.reconciler import read_status, status_document, status_patch
from sierra_operator.core import merge_patch
from sierra_operator.core.model import BatchPhase, BatchStatus, Condition, ImageStatus
from tests.kube_api import (
    JSON_PATCH,
    MERGE_PATCH,
    RESOURCES,
    STRATEGIC_MERGE_PATCH,
    VERBS,
    Apiserver,
    patched,
)

pytestmark = pytest.mark.unit

# RFC 7386, Appendix A: (original, patch, result), verbatim.
RFC_7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]

# RFC 7386, section 3.
RFC_7386_SECTION_3 = (
    {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    },
    {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    },
    {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    },
)


@pytest.mark.parametrize(("original", "patch", "result"), [*RFC_7386_EXAMPLES, RFC_7386_SECTION_3])
def test_apply_is_rfc_7386(original: Any, patch: Any, result: Any) -> None:
    before = json.dumps(original)
    assert merge_patch.apply(original, patch) == result
    assert json.dumps(original) == before, "the target is not modified"


# The examples whose two ends could be stored objects (objects without nulls): diff's domain.
DIFFABLE = [
    (original, result)
    for original, _, result in [*RFC_7386_EXAMPLES, RFC_7386_SECTION_3]
    if isinstance(original, dict) and isinstance(result, dict) and None not in original.values()
]


@pytest.mark.parametrize(("original", "result"), DIFFABLE)
def test_diff_rebuilds_the_rfc_examples(original: Any, result: Any) -> None:
    change = merge_patch.diff(original, result)
    assert merge_patch.apply(original, change) == result
    assert merge_patch.diff(result, result) == {}


def test_diff_is_minimal() -> None:
    old = {"a": 1, "gone": "x", "n": {"same": 1, "ch": 1, "drop": 2}, "l": [1, 2], "t": {"x": 1}}
    new = {"a": 1, "n": {"same": 1, "ch": 2}, "l": [1, 2, 3], "t": "scalar", "added": {"k": 1}}
    assert merge_patch.diff(old, new) == {
        "gone": None,
        "n": {"ch": 2, "drop": None},
        "l": [1, 2, 3],
        "t": "scalar",
        "added": {"k": 1},
    }
    assert merge_patch.diff({"s": "v"}, {"s": {"now": "dict"}}) == {"s": {"now": "dict"}}
    assert merge_patch.diff({"d": {"k": 1}}, {"d": {}}) == {"d": {"k": None}}
    assert (
        merge_patch.diff({"same": {"deep": [1, {"x": 1}]}}, {"same": {"deep": [1, {"x": 1}]}}) == {}
    )


def _document(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A random JSON object without nulls (what a stored status looks like)."""
    out: dict[str, Any] = {}
    for key in rng.sample("abcdef", rng.randint(0, 4)):
        kind = rng.random()
        if kind < 0.3 and depth < 3:
            out[key] = _document(rng, depth + 1)
        elif kind < 0.45:
            out[key] = [rng.randint(0, 2) for _ in range(rng.randint(0, 2))]
        elif kind < 0.6:
            out[key] = rng.choice([True, False, "x", "y"])
        else:
            out[key] = rng.randint(0, 3)
    return out


def test_diff_then_apply_round_trips_random_documents() -> None:
    rng = random.Random(7386)
    for _ in range(2000):
        old, new = _document(rng), _document(rng)
        change = merge_patch.diff(old, new)
        assert merge_patch.apply(old, change) == new, (old, new, change)
        assert (change == {}) == (old == new)


def test_status_patch_is_empty_for_what_the_server_stored() -> None:
    """The defect found on a real API server: a dump with null for absent fields never equals
    the stored status (the merge patch deleted those keys), so every tick wrote again."""
    status = BatchStatus(
        phase=BatchPhase.RUNNING,
        observed_generation=2,
        image=ImageStatus(ref="r/x:1"),  # digest, buildHash absent
        conditions=[Condition(type="Valid", status="True", reason="Valid")],
    )
    old_dump = status.model_dump(mode="json", by_alias=True)  # what was sent every tick
    stored = patched({}, {"status": old_dump}, MERGE_PATCH)["status"]
    assert stored != old_dump, "the old comparison: true on every tick"
    assert "currentExperiment" not in stored and "digest" not in stored["image"]
    assert status_patch(stored, status) == {}
    assert read_status(stored) == status
    later = status.model_copy(update={"phase": BatchPhase.SUSPENDED, "work_pool": None})
    assert status_patch(stored, later) == {"phase": "Suspended"}
    assert status_patch({**stored, "workPool": "p"}, later) == {
        "phase": "Suspended",
        "workPool": None,
    }


def test_status_patch_leaves_fields_it_does_not_know() -> None:
    status = BatchStatus(phase=BatchPhase.RUNNING)
    assert status_patch({**status_document(status), "fromANewerVersion": 1}, status) == {}


# ------------------------------------------------------------------ the test API emulator


def test_emulator_patch_media_types() -> None:
    obj = {"metadata": {"name": "n"}, "spec": {"c": [{"name": "w", "image": "a"}]}}
    assert patched(obj, {"spec": {"c": None}}, MERGE_PATCH) == {
        "metadata": {"name": "n"},
        "spec": {},
    }
    assert patched(obj, {"spec": {"c": []}}, STRATEGIC_MERGE_PATCH)["spec"] == {"c": []}
    assert patched(obj, [{"op": "remove", "path": "/spec"}], JSON_PATCH) == {
        "metadata": {"name": "n"}
    }
    assert obj["spec"]["c"][0]["image"] == "a", "the stored object is not modified"
    for bad, media in (
        ({"spec": {"$patch": "replace"}}, STRATEGIC_MERGE_PATCH),
        ({"spec": {}}, "application/json"),
        ({"spec": {}}, JSON_PATCH),
    ):
        with pytest.raises(kmock.KubernetesError) as err:
            patched(obj, bad, media)
        assert err.value.status == 415
    with pytest.raises(kmock.KubernetesError) as err:
        patched(obj, [{"op": "test", "path": "/metadata/name", "value": "m"}], JSON_PATCH)
    assert err.value.status == 422


BATCHES = "/apis/sierra.research.io/v1alpha1/namespaces/ns/sierrabatches"


async def _against_emulator() -> dict[str, Any]:
    """Create a batch, PATCH it as kopf does, and watch what a client would see."""
    seen: dict[str, Any] = {"events": []}
    async with Apiserver() as api, kmock.Server(api) as server:
        for key, info in RESOURCES.items():
            api.resources[key] = kmock.ResourceInfo(verbs=VERBS, **info)
        async with httpx.AsyncClient(base_url=str(server.url).rstrip("/"), timeout=10) as http:

            async def watch() -> None:
                async with http.stream("GET", BATCHES, params={"watch": "true"}) as resp:
                    async for line in resp.aiter_lines():
                        if line.strip():
                            event = json.loads(line)
                            seen["events"].append(
                                (event["type"], event["object"]["metadata"]["resourceVersion"])
                            )

            watcher = asyncio.create_task(watch())
            created = await http.post(
                BATCHES,
                json={
                    "apiVersion": "sierra.research.io/v1alpha1",
                    "kind": "SierraBatch",
                    "metadata": {"name": "b"},
                    "spec": {"suspend": True},
                },
            )
            seen["created"] = created.json()

            async def merge(path: str, body: dict[str, Any]) -> dict[str, Any]:
                resp = await http.patch(path, json=body, headers={"content-type": MERGE_PATCH})
                resp.raise_for_status()
                return dict(resp.json())

            status = {
                "phase": "Running",
                "currentExperiment": None,
                "image": {"ref": "r", "digest": None},
            }
            seen["first"] = await merge(f"{BATCHES}/b/status", {"status": status})
            seen["again"] = await merge(f"{BATCHES}/b/status", {"status": status})
            seen["same_spec"] = await merge(f"{BATCHES}/b", {"spec": {"suspend": True}})
            seen["new_spec"] = await merge(f"{BATCHES}/b", {"spec": {"suspend": None}})
            await asyncio.sleep(0.3)
            watcher.cancel()
    return seen


def test_emulator_stores_merge_patches_as_the_api_server_does() -> None:
    seen = asyncio.run(_against_emulator())
    version = seen["created"]["metadata"]["resourceVersion"]
    first = seen["first"]
    assert first["status"] == {"phase": "Running", "image": {"ref": "r"}}, (
        "null deletes, nested too"
    )
    assert first["metadata"]["resourceVersion"] != version
    again, same_spec = seen["again"], seen["same_spec"]
    assert again == first, "a patch that changes nothing writes nothing: same resourceVersion"
    assert same_spec == first and same_spec["metadata"]["generation"] == 1
    new_spec = seen["new_spec"]
    assert new_spec["spec"] == {} and new_spec["metadata"]["generation"] == 2
    versions = [v for kind, v in seen["events"] if kind == "MODIFIED"]
    assert versions == [
        first["metadata"]["resourceVersion"],
        new_spec["metadata"]["resourceVersion"],
    ], "no watch event for a patch that changed nothing"

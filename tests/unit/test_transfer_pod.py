"""The transfer pod's lifecycle around failures that the emulated API server cannot produce
on demand: a create whose answer is lost after the pod was made, and a delete that fails
while another error is on its way out. ``CoreV1Api`` is replaced by a fake that records
calls (the only mock here; tests/integration/test_transfer.py runs the real thing)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from sierra_operator.researcher.kubeconfig import ClusterError
from sierra_operator.researcher.transfer_pod import Target, transfer_pod

pytestmark = pytest.mark.unit

TARGET = Target("ns", "forage", "claim", "/sierra-root", "img:1")
RUNNING = {
    "status": {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]},
}


class FakeCore:
    """Pods as the API server keeps them; ``lose_create_answer`` makes the pod, then the
    answer times out; ``fail_delete`` answers a delete with a 500."""

    def __init__(self, lose_create_answer: bool = False, fail_delete: bool = False) -> None:
        self.pods: set[str] = set()
        self.lose_create_answer = lose_create_answer
        self.fail_delete = fail_delete

    async def read_namespaced_persistent_volume_claim(self, *_: Any, **__: Any) -> None:
        return None

    async def create_namespaced_pod(self, ns: str, body: dict[str, Any], **_: Any) -> None:
        self.pods.add(body["metadata"]["name"])
        if self.lose_create_answer:
            raise TimeoutError

    async def read_namespaced_pod(self, name: str, ns: str, **_: Any) -> dict[str, Any]:
        return RUNNING

    async def delete_namespaced_pod(self, name: str, ns: str, **_: Any) -> None:
        if self.fail_delete:
            raise ApiException(status=500, reason="Internal Server Error")
        self.pods.discard(name)


class FakeApi:
    def sanitize_for_serialization(self, obj: Any) -> Any:
        return obj


def _with_core(monkeypatch: pytest.MonkeyPatch, core: FakeCore) -> None:
    from kubernetes_asyncio import client

    monkeypatch.setattr(client, "CoreV1Api", lambda api: core)


def test_a_pod_made_by_a_create_whose_answer_was_lost_is_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = FakeCore(lose_create_answer=True)
    _with_core(monkeypatch, core)

    async def use() -> None:
        async with transfer_pod(FakeApi(), TARGET):
            pass

    with pytest.raises(TimeoutError):
        asyncio.run(use())
    assert core.pods == set()


def test_a_failed_delete_does_not_replace_the_error_in_flight(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    core = FakeCore(fail_delete=True)
    _with_core(monkeypatch, core)
    names: list[str] = []

    async def use() -> None:
        async with transfer_pod(FakeApi(), TARGET) as pod:
            names.append(pod)
            raise ClusterError("the transfer failed", 1)

    with caplog.at_level(logging.WARNING), pytest.raises(ClusterError) as raised:
        asyncio.run(use())
    assert (str(raised.value), raised.value.exit_code) == ("the transfer failed", 1)
    assert f"kubectl delete pod -n ns {names[0]}" in caplog.text

    async def clean() -> None:  # nothing else failed: the failed delete is the error
        async with transfer_pod(FakeApi(), TARGET):
            pass

    with pytest.raises(ClusterError, match="could not delete transfer pod ns/forage-transfer-"):
        asyncio.run(clean())

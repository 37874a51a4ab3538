"""submit_each's requests: one failure neither loses nor orphans the others; flow runs the
server refuses are named with its reason, sent again when it is SQLite's passing lock; a
server without the bulk endpoint gets one create per flow run, and is asked only once.

The Prefect client is a stand-in here (say so: a fake of the two calls that create flow
runs, the bulk request and the single create, idempotent per key as the server is): the
real server cannot be made, on demand, to fail one request while others are in flight or
to refuse flow runs for "database is locked". The same paths against the real server (bulk
and single creates, idempotency, the cap on requests in flight, a server answering 404/405
for the bulk route, a refusal) are tested in tests/integration/test_prefect_api.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.exceptions import PrefectHTTPStatusError

from sierra_operator.core.machine import RunAttempt, SubmitRuns
from sierra_operator.runs import prefect_api
from sierra_operator.runs.clients import PrefectClients
from sierra_operator.runs.prefect_api import FlowRunsRefused, PrefectBatch

LOCKED = "(sqlite3.OperationalError) database is locked\n[SQL: INSERT INTO flow_run ...]"


def _status_error(status: int, body: Any) -> PrefectHTTPStatusError:
    """What Prefect's client raises for an answer with ``status``."""
    request = httpx.Request("POST", "http://unused/api/deployments/x/create_flow_run/bulk")
    response = httpx.Response(status, json=body, request=request)
    return PrefectHTTPStatusError.from_httpx_error(
        httpx.HTTPStatusError(f"{status}", request=request, response=response)
    )


class StandIn:
    """The flow-run creating calls of a Prefect server behind PrefectClient, in memory."""

    def __init__(self, *, bulk: bool = True) -> None:
        self.bulk = bulk  # False: the bulk route answers 404 (an older Prefect)
        self.by_key: dict[str, UUID] = {}
        self.fail_index: int | None = None  # a request holding this run raises (a timeout)
        self.refuse: dict[int, str] = {}  # run index -> the reason it is reported FAILED
        self.locked = 0  # the next N bulk requests: every flow run FAILED, database locked
        self.requests: list[list[int]] = []  # run indexes of each bulk request
        self.singles = 0
        self.in_flight = self.peak = 0

    def _id(self, key: str) -> UUID:
        return self.by_key.setdefault(key, uuid.uuid4())

    async def _busy(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.02)
        self.in_flight -= 1

    async def request(
        self, method: str, path: str, path_params: dict[str, Any], json: list[dict[str, Any]]
    ) -> httpx.Response:
        assert (method, path) == ("POST", "/deployments/{id}/create_flow_run/bulk")
        indexes = [c["parameters"]["runs"][0]["index"] for c in json]
        self.requests.append(indexes)
        await self._busy()
        if not self.bulk:
            raise _status_error(404, {"detail": "Not Found"})
        if self.fail_index in indexes:
            raise RuntimeError("request failed")
        results = []
        locked, self.locked = self.locked > 0, max(0, self.locked - 1)
        for create, index in zip(json, indexes, strict=True):
            reason = LOCKED if locked else self.refuse.get(index)
            if reason:
                results.append({"flow_run_id": None, "status": "FAILED", "error": reason})
            else:
                run_id = self._id(create["idempotency_key"])
                results.append({"flow_run_id": str(run_id), "status": "CREATED", "error": None})
        return httpx.Response(200, json={"results": results})

    async def create_flow_run_from_deployment(
        self, deployment_id: UUID, *, parameters: dict[str, Any], idempotency_key: str, **_: Any
    ) -> SimpleNamespace:
        self.singles += 1
        await self._busy()
        if parameters["runs"][0]["index"] == self.fail_index:
            raise RuntimeError("create failed")
        return SimpleNamespace(id=self._id(idempotency_key))


def _batch(server: StandIn, **kwargs: Any) -> PrefectBatch:
    """A batch whose client is ``server`` (its deployment known)."""
    batch = PrefectBatch(
        api_url="http://unused",
        pool="p",
        queue="q",
        deployment_id=uuid.uuid4(),
        **({"submit_concurrency": 4, "batch_id": "b"} | kwargs),
    )
    batch._listed = True

    @asynccontextmanager
    async def client() -> AsyncIterator[Any]:
        yield server

    batch.client = client  # type: ignore[method-assign]
    return batch


def _wave(n: int, experiment: str = "exp") -> SubmitRuns:
    return SubmitRuns(experiment, 0, tuple(RunAttempt(i, f"cmd {i}", 1) for i in range(n)))


@pytest.fixture(autouse=True)
def _small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two flow runs per bulk request (so a few runs make several), no real waits."""
    monkeypatch.setattr(prefect_api, "BULK_CREATE_LIMIT", 2)
    monkeypatch.setattr(prefect_api, "BULK_RETRY_SECONDS", 0.001)
    monkeypatch.setattr(prefect_api, "BULK_RETRY_MAX_WAIT", 0.004)


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "one-create-each"])
def test_failed_request_lets_the_others_finish_and_relists(bulk: bool) -> None:
    server = StandIn(bulk=bulk)
    server.fail_index = 1
    batch = _batch(server)
    with pytest.raises(RuntimeError, match="failed"):
        asyncio.run(batch.submit_each(_wave(8), {}))
    created = set(server.by_key.values())
    assert len(created) == (6 if bulk else 7)  # none cancelled in flight: only 0-1 / 1 lost
    assert batch._unsettled == created  # every id that came back is observed
    assert batch._listed is False  # and the batch is listed again: a lost id is found


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "one-create-each"])
def test_successful_submit_keeps_listing_state(bulk: bool) -> None:
    server = StandIn(bulk=bulk)
    batch = _batch(server)
    ids = asyncio.run(batch.submit_each(_wave(5), {}))
    assert ids == [server.by_key[f"b/exp/{i}/1"] for i in range(5)], "in run order"
    assert batch._unsettled == set(ids)
    assert batch._listed is True
    assert server.singles == (0 if bulk else 5)


def test_refused_flow_runs_are_named_with_the_servers_reason() -> None:
    """The rest of the request and the other requests are created and recorded; the error
    names the refused flow run and the first line of the server's reason; not sent again."""
    server = StandIn()
    server.refuse = {3: "Error hydrating flow run parameters: bad\nTraceback ..."}
    batch = _batch(server)
    with pytest.raises(FlowRunsRefused) as refused:
        asyncio.run(batch.submit_each(_wave(6), {}))
    assert str(refused.value) == (
        "Prefect refused 1 of 2 flow runs of exp in a bulk create (the others were "
        "created): exp-run3-try1: Error hydrating flow run parameters: bad"
    )
    assert batch._unsettled == set(server.by_key.values()) and len(server.by_key) == 5
    assert batch._listed is False
    assert len(server.requests) == 3, "a refusal that is not SQLite's lock is not retried"


def test_flow_runs_refused_for_sqlites_lock_are_sent_again() -> None:
    """SQLite refuses a whole bulk create when another writer committed during it (a single
    create gets a 503 for that, which the client retries): the refused flow runs are sent
    again until created, each once (their keys)."""
    server = StandIn()
    server.locked = 3
    batch = _batch(server, submit_concurrency=1)
    ids = asyncio.run(batch.submit_each(_wave(4), {}))
    assert ids == [server.by_key[f"b/exp/{i}/1"] for i in range(4)]
    assert sorted(map(tuple, server.requests)) == [(0, 1)] * 3 + [(2, 3)] * 2
    assert batch._listed is True


def test_sqlites_lock_past_the_patience_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    server = StandIn()
    server.locked = 10**6
    monkeypatch.setattr(prefect_api, "BULK_RETRY_PATIENCE", 0.02)
    batch = _batch(server, submit_concurrency=1)
    with pytest.raises(FlowRunsRefused, match=r"exp-run0-try1, exp-run1-try1: .*locked$"):
        asyncio.run(batch.submit_each(_wave(2), {}))
    assert 3 <= len(server.requests) < 20 and batch._listed is False


def test_a_server_without_the_bulk_endpoint_is_asked_once() -> None:
    """A 404 for the bulk route: one create per flow run, and this batch does not ask again
    (a fresh PrefectBatch, i.e. a restarted operator, does)."""
    server = StandIn(bulk=False)
    batch = _batch(server, submit_concurrency=1)
    first = asyncio.run(batch.submit_each(_wave(6, "e0"), {}))
    asked = len(server.requests)
    second = asyncio.run(batch.submit_each(_wave(6, "e1"), {}))
    assert asked == 1, "the other requests of the wave waited at the gate, then knew"
    assert len(server.requests) == asked, "not asked again by this batch"
    assert server.singles == 12 and len(set(first + second)) == 12
    asyncio.run(_batch(server, submit_concurrency=1).submit_each(_wave(6, "e0"), {}))
    assert len(server.requests) == asked + 1 and len(server.by_key) == 12


def test_batches_on_one_shared_client_share_its_submit_gate() -> None:
    """Many batches' waves at once stay within one bound per shared client (its pool of
    connections), not one bound per wave."""
    clients = PrefectClients(submit_concurrency=2)
    server = StandIn()
    batches = []
    for _ in range(3):
        batch = _batch(server)
        batch.clients = clients  # the batch's own bound (4) is not what applies
        batches.append(batch)

    async def all_at_once() -> None:
        await asyncio.gather(*(b.submit_each(_wave(8), {}) for b in batches))

    asyncio.run(all_at_once())
    assert server.peak == 2 and len(server.requests) == 3 * 4
    assert clients.submit_gate("http://unused", None) is clients.submit_gate("http://unused", None)


@pytest.mark.parametrize(
    ("status", "body", "missing"),
    [
        (404, {"detail": "Not Found"}, True),  # no such route: a Prefect without it
        (405, {"detail": "Method Not Allowed"}, True),
        (404, ["not", "prefect"], True),  # a proxy's answer
        (404, {"detail": "Deployment not found"}, False),  # the endpoint's own 404: raised
        (409, {"detail": "conflict"}, False),
        (500, {"exception_message": "Internal Server Error"}, False),
    ],
)
def test_which_refusals_mean_no_bulk_endpoint(status: int, body: Any, missing: bool) -> None:
    assert prefect_api._no_bulk_endpoint(_status_error(status, body).response) is missing


def test_a_batch_waits_for_one_request_of_a_big_wave_not_all_of_them() -> None:
    """The shared gate takes turns between batches: a batch submitting one run while a
    1,000-run wave's ten requests wait is served next, not after all ten (a semaphore's
    order: measured 49 s behind a big wave with one request in flight)."""
    clients = PrefectClients(submit_concurrency=1)
    server = StandIn()
    big, small = _batch(server, batch_id="big"), _batch(server, batch_id="small")
    big.clients = small.clients = clients
    keys: list[str] = []
    create = server.request

    async def request(method: str, path: str, path_params: Any, json: Any) -> httpx.Response:
        keys.append(json[0]["idempotency_key"].split("/")[0])
        return await create(method, path, path_params, json)

    server.request = request  # type: ignore[method-assign]

    async def both() -> None:
        wave = asyncio.create_task(big.submit_each(_wave(10 * prefect_api.BULK_CREATE_LIMIT), {}))
        while not server.in_flight:  # the big wave's first request is in flight
            await asyncio.sleep(0.001)
        await small.submit_each(_wave(1, "other"), {})
        assert not wave.done(), "the small batch was served while the big wave went on"
        await wave

    asyncio.run(both())
    assert keys == ["big", "small"] + ["big"] * 9
    assert server.peak == 1

"""The test API emulator (tests/kube_api.py) answers selectors and pods/log as a real API server
does: each test runs it in-process on a free port and talks to it over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import kmock
import pytest
from kubernetes_asyncio import client as k8s

from tests.kube_api import (
    LOG_PATH_ANNOTATION,
    MERGE_PATCH,
    RESOURCES,
    VERBS,
    Apiserver,
    Requirement,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

pytestmark = pytest.mark.unit

PODS = "/api/v1/namespaces/ns/pods"
JOBS = "/apis/batch/v1/namespaces/ns/jobs"


@contextlib.asynccontextmanager
async def emulator() -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """A live emulator with this project's resources declared, and an HTTP client for it."""
    async with Apiserver() as api, kmock.Server(api) as server:
        for key, info in RESOURCES.items():
            api.resources[key] = kmock.ResourceInfo(verbs=VERBS, **info)
        url = str(server.url).rstrip("/")
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            yield url, http


def run(test: Callable[[str, httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with emulator() as (url, http):
            await test(url, http)

    asyncio.run(main())


def pod(
    name: str,
    labels: dict[str, str] | None = None,
    *,
    annotations: dict[str, str] | None = None,
    containers: tuple[str, ...] = ("main",),
    phase: str = "Pending",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": c, "image": "i"} for c in containers]},
        "status": {"phase": phase},
    }


async def create(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await http.post(path, json=body)
    resp.raise_for_status()
    return dict(resp.json())


async def names(http: httpx.AsyncClient, path: str, **params: str) -> list[str]:
    resp = await http.get(path, params=params)
    assert resp.status_code == 200, resp.text
    return sorted(item["metadata"]["name"] for item in resp.json()["items"])


def assert_bad_request(resp: httpx.Response) -> None:
    assert resp.status_code == 400, resp.text
    status = resp.json()
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 400, "BadRequest")


# ------------------------------------------------------------------ the selector grammar


@pytest.mark.parametrize(
    ("selector", "parsed"),
    [
        ("", ()),
        ("a", (Requirement("a", "exists"),)),
        ("!a", (Requirement("a", "!"),)),
        ("a=b", (Requirement("a", "=", frozenset({"b"})),)),
        ("a==b", (Requirement("a", "==", frozenset({"b"})),)),
        ("a!=b", (Requirement("a", "!=", frozenset({"b"})),)),
        ("a=", (Requirement("a", "=", frozenset({""})),)),
        ("a in (x, y)", (Requirement("a", "in", frozenset({"x", "y"})),)),
        ("a notin (x)", (Requirement("a", "notin", frozenset({"x"})),)),
        ("a in ()", (Requirement("a", "in", frozenset({""})),)),
        ("a in (x,)", (Requirement("a", "in", frozenset({"x", ""})),)),
        (
            "a>1,b<2",
            (Requirement("a", ">", frozenset({"1"})), Requirement("b", "<", frozenset({"2"}))),
        ),
        ("in=notin", (Requirement("in", "=", frozenset({"notin"})),)),
        (
            " prefect.io/flow-run-id = x , !job-name ",
            (
                Requirement("prefect.io/flow-run-id", "=", frozenset({"x"})),
                Requirement("job-name", "!"),
            ),
        ),
    ],
)
def test_label_selector_grammar(selector: str, parsed: tuple[Requirement, ...]) -> None:
    assert parse_label_selector(selector) == parsed


MALFORMED = [
    "a in (b",  # unclosed set
    "a in b",  # a set needs parentheses
    "a=b,",  # a comma needs a requirement after it
    ",a",
    "a b",  # no operator
    "a!",
    "!a=b",  # "!" takes no value
    "!",
    "a=(b)",
    "a=b=c",
    "a in (b c)",
    "-a=b",  # invalid key
    "a/b/c=d",
    "Example.com/a=b",  # the prefix is a lowercase DNS subdomain
    "a=" + "x" * 64,  # a value is at most 63 characters
    "a=-x",
    "a>x",  # > and < take an integer
]


@pytest.mark.parametrize("selector", MALFORMED)
def test_malformed_label_selectors_are_refused(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


def test_label_selector_matching() -> None:
    labels = {"app": "web", "tier": "front", "n": "5"}

    def matches(selector: str, on: dict[str, str] = labels) -> bool:
        return all(req.matches(on) for req in parse_label_selector(selector))

    assert matches("app=web") and matches("app==web") and not matches("app=db")
    assert matches("app!=db") and matches("zone!=x"), "!= matches an absent label"
    assert matches("zone notin (x)") and not matches("zone in (x)")
    assert matches("app in (db,web)") and not matches("app notin (db,web)")
    assert matches("tier") and not matches("!tier") and matches("!zone")
    assert matches("n>4") and not matches("n>5") and matches("n<6") and not matches("app<6")
    assert matches("app=web,tier=front") and not matches("app=web,tier=back")
    assert matches("zone=", {"zone": ""}) and not matches("zone=")


def test_field_selector_grammar() -> None:
    assert parse_field_selector("") == ()
    assert parse_field_selector("metadata.name=a,metadata.namespace!=b") == (
        ("metadata.name", False, "a"),
        ("metadata.namespace", True, "b"),
    )
    assert parse_field_selector(r"metadata.name==a\,b\=c\\", "", "pods") == (
        ("metadata.name", False, "a,b=c\\"),
    )
    assert parse_field_selector("status.phase=Running", "", "pods") == (
        ("status.phase", False, "Running"),
    )
    for bad in ("metadata.name", "status.phase=Running", "metadata.name=a=b", r"metadata.name=\x"):
        with pytest.raises(SelectorError):
            parse_field_selector(bad, "sierra.research.io", "sierrabatches")


# ------------------------------------------------------------------ list


def test_list_with_each_selector_form() -> None:
    async def test(url: str, http: httpx.AsyncClient) -> None:
        await create(http, PODS, pod("a", {"app": "web", "tier": "front"}))
        await create(http, PODS, pod("b", {"app": "web", "tier": "back"}))
        await create(http, PODS, pod("c", {"app": "db"}))
        await create(http, PODS, pod("d", phase="Running"))
        await create(http, PODS, pod("e", {"app": "web", "n": "5"}))
        await create(http, "/api/v1/namespaces/other/pods", pod("f", {"app": "web"}))
        expected = {
            "": "abcde",
            "app=web": "abe",
            "app==web": "abe",
            "app!=web": "cd",
            "app in (web,db)": "abce",
            "app notin (web)": "cd",
            "tier": "ab",
            "!tier": "cde",
            "app=web,tier!=back": "ae",
            "app in (web),!tier": "e",
            "n>4": "e",
            "n<5": "",
            "app=nope": "",
        }
        for selector, wanted in expected.items():
            got = await names(http, PODS, labelSelector=selector)
            assert got == list(wanted), selector
        assert await names(http, "/api/v1/pods", labelSelector="app=web") == list("abef")
        assert await names(http, PODS, fieldSelector="metadata.name=a") == ["a"]
        assert await names(http, PODS, fieldSelector="metadata.name!=a", labelSelector="app") == [
            "b",
            "c",
            "e",
        ]
        assert await names(http, "/api/v1/pods", fieldSelector="metadata.namespace=other") == ["f"]
        assert await names(http, PODS, fieldSelector="status.phase=Running") == ["d"]

    run(test)


def test_malformed_selectors_answer_400() -> None:
    async def test(url: str, http: httpx.AsyncClient) -> None:
        await create(http, PODS, pod("a", {"app": "web"}))
        for selector in ("a in (b", "a=b,", "!a=b", "-a"):
            assert_bad_request(await http.get(PODS, params={"labelSelector": selector}))
            watch = {"labelSelector": selector, "watch": "true"}
            assert_bad_request(await http.get(PODS, params=watch))
        for selector in ("spec.foo=x", "metadata.name"):
            assert_bad_request(await http.get(PODS, params={"fieldSelector": selector}))
        assert await names(http, PODS) == ["a"], "the emulator still serves"

    run(test)


def test_kubernetes_asyncio_lists_by_label_as_prefects_observer_does() -> None:
    """The observer asks for the Jobs of one flow run and the pods of one Job."""

    async def test(url: str, http: httpx.AsyncClient) -> None:
        run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
        for name, flow_run in (("ja", run_a), ("jb", run_b)):
            job = {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "labels": {"prefect.io/flow-run-id": flow_run}},
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            }
            await create(http, JOBS, job)
            await create(http, PODS, pod(f"{name}-x1", {"job-name": name}))
        api = k8s.ApiClient(k8s.Configuration(host=url))
        try:
            jobs = await k8s.BatchV1Api(api).list_namespaced_job(
                namespace="ns", label_selector=f"prefect.io/flow-run-id={run_a}"
            )
            assert [j.metadata.name for j in jobs.items] == ["ja"]
            pods = await k8s.CoreV1Api(api).list_namespaced_pod(
                namespace="ns", label_selector="job-name=jb"
            )
            assert [p.metadata.name for p in pods.items] == ["jb-x1"]
        finally:
            await api.close()

    run(test)


# ------------------------------------------------------------------ watch


def test_watch_with_a_selector_sees_objects_enter_and_leave_it() -> None:
    """A watch of ``app=web``: ADDED when an object starts matching, MODIFIED while it
    matches, DELETED when it stops (changed or deleted), nothing for the others. Each step's
    "nothing" is proven by the next matching event arriving first."""

    async def test(url: str, http: httpx.AsyncClient) -> None:
        await create(http, PODS, pod("w0", {"app": "web"}))
        await create(http, PODS, pod("x0", {"app": "db"}))
        events: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()

        async def watch() -> None:
            params = {"watch": "true", "labelSelector": "app=web"}
            async with http.stream("GET", PODS, params=params) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.strip():
                        event = json.loads(line)
                        obj = event["object"]
                        await events.put((event["type"], obj["metadata"]["name"], obj))

        async def next_event() -> tuple[str, str, dict[str, Any]]:
            return await asyncio.wait_for(events.get(), timeout=5)

        async def patch(name: str, labels: dict[str, Any]) -> dict[str, Any]:
            resp = await http.patch(
                f"{PODS}/{name}",
                json={"metadata": {"labels": labels}},
                headers={"content-type": MERGE_PATCH},
            )
            resp.raise_for_status()
            return dict(resp.json())

        watcher = asyncio.create_task(watch())
        try:
            assert (await next_event())[:2] == ("ADDED", "w0"), "only the matching one"
            await create(http, PODS, pod("x1", {"app": "db"}))
            await create(http, PODS, pod("w1", {"app": "web"}))
            assert (await next_event())[:2] == ("ADDED", "w1")
            await patch("w1", {"tier": "front"})
            kind, name, obj = await next_event()
            assert (kind, name, obj["metadata"]["labels"]) == (
                "MODIFIED",
                "w1",
                {"app": "web", "tier": "front"},
            )
            left = await patch("w1", {"app": "db"})
            kind, name, obj = await next_event()
            assert (kind, name) == ("DELETED", "w1"), "it no longer matches"
            assert obj["metadata"]["labels"]["app"] == "web", "as it last matched"
            assert obj["metadata"]["resourceVersion"] == left["metadata"]["resourceVersion"]
            await patch("w1", {"tier": "back"})  # still not matching: nothing
            await patch("x0", {"app": "web"})
            assert (await next_event())[:2] == ("ADDED", "x0"), "it now matches"
            assert (await http.delete(f"{PODS}/x0")).status_code == 200
            assert (await next_event())[:2] == ("DELETED", "x0")
            assert (await http.delete(f"{PODS}/x1")).status_code == 200  # never matched
            await create(http, PODS, pod("w2", {"app": "web"}))
            assert (await next_event())[:2] == ("ADDED", "w2")
            assert events.empty()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    run(test)


def test_a_watch_ends_after_its_timeout_seconds_as_kube_apiserver_ends_it() -> None:
    """kube-apiserver closes a watch after ``timeoutSeconds`` (kopf asks for one and watches
    again): a stream that never ended would hide a client that does not re-watch."""

    async def test(url: str, http: httpx.AsyncClient) -> None:
        await create(http, PODS, pod("w0", {"app": "web"}))
        loop = asyncio.get_running_loop()
        started = loop.time()
        seen = []
        params = {"watch": "true", "timeoutSeconds": "1"}
        async with http.stream("GET", PODS, params=params) as resp:
            async for line in resp.aiter_lines():
                if line.strip():
                    seen.append(json.loads(line)["type"])
        assert seen == ["ADDED"]
        assert 0.9 <= loop.time() - started < 4, "closed by the server after ~1 s"

    run(test)


def test_watch_with_a_field_selector_on_the_name() -> None:
    async def test(url: str, http: httpx.AsyncClient) -> None:
        await create(http, PODS, pod("p"))
        seen: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        async def watch() -> None:
            params = {"watch": "true", "fieldSelector": "metadata.name=p"}
            async with http.stream("GET", "/api/v1/pods", params=params) as resp:
                async for line in resp.aiter_lines():
                    if line.strip():
                        event = json.loads(line)
                        await seen.put((event["type"], event["object"]["metadata"]["name"]))

        async def next_event() -> tuple[str, str]:
            return await asyncio.wait_for(seen.get(), timeout=5)

        watcher = asyncio.create_task(watch())
        try:
            assert await next_event() == ("ADDED", "p")
            await create(http, PODS, pod("q"))
            await http.delete(f"{PODS}/q")
            await http.delete(f"{PODS}/p")
            assert await next_event() == ("DELETED", "p"), "nothing of q"
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    run(test)


# ------------------------------------------------------------------ pods/log


def test_pod_log_is_the_log_files_text(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    log.write_text("one\ntwo\nthree\nfour\nfive")  # the last line not ended yet

    async def test(url: str, http: httpx.AsyncClient) -> None:
        annotated = {LOG_PATH_ANNOTATION: str(log)}
        await create(http, PODS, pod("p", annotations=annotated))
        await create(http, PODS, pod("bare"))
        await create(http, PODS, pod("multi", annotations=annotated, containers=("main", "side")))

        async def text(name: str, **params: str) -> str:
            resp = await http.get(f"{PODS}/{name}/log", params=params)
            assert resp.status_code == 200, resp.text
            assert resp.headers["content-type"].startswith("text/plain")
            return resp.text

        assert await text("p") == "one\ntwo\nthree\nfour\nfive"
        assert await text("p", tailLines="2") == "four\nfive"
        assert await text("p", tailLines="0") == ""
        assert await text("p", tailLines="9") == "one\ntwo\nthree\nfour\nfive"
        assert await text("p", limitBytes="5") == "one\nt"
        assert await text("p", tailLines="3", limitBytes="4") == "thre"
        assert await text("p", container="main", tailLines="1") == "five"
        assert await text("bare") == "", "no annotation: an empty log"
        assert await text("multi", container="main", tailLines="1") == "five"
        assert await text("multi", container="side") == "", "the runner runs only the first"
        for params in ({"tailLines": "-1"}, {"limitBytes": "0"}):
            invalid = await http.get(f"{PODS}/p/log", params=params)
            assert invalid.status_code == 422 and invalid.json()["reason"] == "Invalid"
        for name, params in (
            ("p", {"tailLines": "x"}),
            ("p", {"container": "nope"}),
            ("p", {"previous": "true"}),  # no container restarted in place
            ("multi", {}),  # which container?
        ):
            assert_bad_request(await http.get(f"{PODS}/{name}/log", params=params))
        missing = await http.get(f"{PODS}/missing/log")
        assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"
        assert (await http.delete(f"{PODS}/p")).status_code == 200
        assert (await http.get(f"{PODS}/p/log")).status_code == 404, "deleted"

        api = k8s.ApiClient(k8s.Configuration(host=url))
        try:
            core = k8s.CoreV1Api(api)
            got = await core.read_namespaced_pod_log("multi", "ns", container="main", tail_lines=2)
            assert got == "four\nfive", "what Prefect's observer reads"
        finally:
            await api.close()

    run(test)


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nsenter"), reason="exec enters the container: root"
)
def test_pod_exec_speaks_the_v4_channel_protocol(tmp_path: Path) -> None:
    """A raw websocket client (not kubernetes_asyncio) against ``pods/exec``: stdin on
    channel 0 reaches the command, stdout and stderr come on 1 and 2, the exit status as a
    ``metav1.Status`` on 3 after them, then the server closes; the command runs with the
    container's environment; a missing pod is 404, a container not running 400. (A closed
    websocket ending the command's stdin is what tests/integration/test_transfer.py's cut
    push relies on.)"""
    container = subprocess.Popen(["sleep", "60"], env={"MARK": "in-the-container"})

    async def test(url: str, http: httpx.AsyncClient) -> None:
        running = pod("p")
        running["status"] = {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "main",
                    "state": {"running": {}},
                    "containerID": f"emulated://{container.pid}",
                }
            ],
        }
        await create(http, PODS, running)
        await create(http, PODS, pod("pending"))
        ws_url = url.replace("http://", "ws://")

        async def execute(name: str, *command: str, stdin: bytes | None = None) -> dict[int, bytes]:
            query = [("command", c) for c in command] + [("stdout", "true"), ("stderr", "true")]
            query += [("stdin", "true")] if stdin is not None else []
            got: dict[int, bytes] = {}
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(
                    f"{ws_url}{PODS}/{name}/exec", params=query, protocols=("v4.channel.k8s.io",)
                ) as ws,
            ):
                assert ws.protocol == "v4.channel.k8s.io"
                if stdin is not None:
                    await ws.send_bytes(b"\x04" + b'{"Width":80,"Height":24}')  # resize: ignored
                    await ws.send_bytes(b"\x00" + stdin)
                async for msg in ws:
                    assert msg.type == aiohttp.WSMsgType.BINARY
                    got[msg.data[0]] = got.get(msg.data[0], b"") + msg.data[1:]
                    assert 3 not in got or msg.data[0] == 3, "nothing after the status"
            return got

        out = await execute("p", "sh", "-c", 'echo "$MARK"; echo oops >&2; exit 3')
        assert out[1] == b"in-the-container\n" and out[2] == b"oops\n"
        status = json.loads(out[3])
        assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
        assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
        out = await execute("p", "head", "-c", "5", stdin=b"hello world")
        assert out[1] == b"hello"
        assert json.loads(out[3]) == {"metadata": {}, "status": "Success"}
        for name, code in (("nope", 404), ("pending", 400)):
            resp = await http.get(f"{PODS}/{name}/exec", params={"command": "true"})
            assert resp.status_code == code, resp.text

    try:
        run(test)
    finally:
        container.kill()
        container.wait()

"""An HTTP reverse proxy that counts what passes: the operator's Prefect requests, for bench/.

Stand-in for nothing: requests and answers are forwarded unchanged to the real Prefect
server; it only counts, so the scale benchmark can say how many Prefect requests (and how
many flow runs read) the operator costs per tick. It adds one local hop per request.

Run as ``python bench/counting_proxy.py TARGET_URL URL_FILE``: serves on 127.0.0.1:<free
port>, writes its URL to URL_FILE once ready. ``GET /__counts`` answers the counts so far:
requests by method and path (ids replaced by ``{id}``), and ``flow_runs_read``, the flow runs
in the answers of ``POST .../flow_runs/filter``.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import aiohttp.web

ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}
# Answers uncompressed, so the flow runs in them can be counted.
NOT_FORWARDED = HOP | {"accept-encoding"}


def route(method: str, path: str) -> str:
    """``POST /api/flow_runs/{id}/set_state``: one counter per endpoint, not per object."""
    return f"{method} {ID.sub('{id}', path)}"


def main() -> None:
    target, url_file = sys.argv[1].rstrip("/"), Path(sys.argv[2])
    base = target[: target.index("/api")] if "/api" in target else target
    counts: Counter[str] = Counter()
    read = Counter[str]()
    session: aiohttp.ClientSession | None = None

    async def forward(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        nonlocal session
        if request.path == "/__counts":
            return aiohttp.web.json_response(
                {"requests": dict(counts), "flow_runs_read": read["flow_runs"]}
            )
        if session is None:
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        key = route(request.method, request.path)
        counts[key] += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        async with session.request(
            request.method, base + request.path_qs, data=body, headers=headers
        ) as resp:
            payload = await resp.read()
            if key.endswith("/flow_runs/filter") and resp.status == 200:
                try:
                    read["flow_runs"] += len(json.loads(payload))
                except ValueError:
                    pass
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
            return aiohttp.web.Response(status=resp.status, body=payload, headers=out)

    app = aiohttp.web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url_file.write_text(f"http://127.0.0.1:{port}/api")
    aiohttp.web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()

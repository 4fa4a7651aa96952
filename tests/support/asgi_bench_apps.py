"""ASGI apps that ``bench/`` serves with uvicorn (the ASGI counterparts of
:mod:`tests.support.bench_apps`), configured by environment variables:

* ``UM_STORE`` -- the store URL (default: the middleware's default SQLite file)
* ``UM_UPLOAD_DIR`` -- where uploaded files are spooled
* ``UM_BENCH_CONTROL=1`` -- both sides of :func:`side_by_side_app` bare (an A/A run)
* ``UM_SWITCH_INTERVAL`` -- ``sys.setswitchinterval`` in the server (``lag_app``)

``side_by_side_app()`` serves a Starlette app (``POST /upload`` parses the form with
``request.form()`` and hashes every file, what an app really does) bare and behind the
middleware from one process, chosen per request by the ``X-Bench-Side`` header.
``lag_app()`` is the middleware around an app that drains uploads, with a probe that
measures the event loop's lag (``GET /lag``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import sys
import time
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.bench_apps import SECRET, SIDE_HEADER
from uploadmeter.asgi import UploadMeterMiddleware
from uploadmeter.asgi._types import ASGIApp, Message, Receive, Scope, Send


def _store() -> str | None:
    return os.environ.get("UM_STORE") or None


def upload_app() -> Starlette:
    async def upload(request: Request) -> JSONResponse:
        files = []
        async with request.form(max_part_size=1024 * 1024, max_files=10_000) as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    digest = hashlib.sha256()
                    while block := await value.read(1 << 20):
                        digest.update(block)
                    files.append({"field": name, "sha256": digest.hexdigest()})
        return JSONResponse({"files": files})

    return Starlette(routes=[Route("/upload", upload, methods=["POST"])])


def side_by_side_app() -> ASGIApp:
    """The bare app and the metered app in one uvicorn process, chosen per request."""
    bare = upload_app()
    inner = upload_app()
    metered: ASGIApp = inner
    if os.environ.get("UM_BENCH_CONTROL") != "1":
        metered = UploadMeterMiddleware(inner, secret_key=SECRET, store=_store())
    key = SIDE_HEADER.lower().encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        side = bare
        if scope["type"] == "http" and (key, b"metered") in scope["headers"]:
            side = metered  # type: ignore[assignment]
        await side(scope, receive, send)

    return app


class LoopLag:
    """Sleeps ``interval`` on the loop again and again and records how late it wakes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(time.perf_counter() - start - self.interval)

    def report(self) -> dict[str, Any]:
        lags = sorted(self.lags)
        self.lags = []
        if not lags:
            return {"samples": 0}
        return {
            "samples": len(lags),
            "p50_ms": statistics.median(lags) * 1000,
            "p99_ms": lags[int(len(lags) * 0.99) - 1] * 1000,
            "max_ms": lags[-1] * 1000,
        }


def lag_app() -> ASGIApp:
    """The middleware around a drain-the-body app; ``GET /lag`` answers (and resets) the
    loop lag measured since the last call.  With ``UM_BENCH_CONTROL=1`` there is no
    middleware: the app answers polls itself from memory (``{"state": "done"}`` once the
    upload it names has ended), the same load without uploadmeter."""
    probe = LoopLag()
    finished: set[str] = set()
    if os.environ.get("UM_SWITCH_INTERVAL"):
        # The GIL's switch interval (5 ms by default) bounds how long the loop waits for a
        # store thread that holds the GIL: bench/asgi_loop_lag.py --switch-interval.
        sys.setswitchinterval(float(os.environ["UM_SWITCH_INTERVAL"]))

    async def drain(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if probe.task is None:
            probe.task = asyncio.ensure_future(probe.run())
        query = scope["query_string"].decode()
        if scope["path"] == "/lag":
            body = json.dumps(probe.report()).encode()
        elif scope["path"] == "/uploadmeter/progress":  # control only: polls reach the app
            state = "done" if query.removeprefix("id=") in finished else "uploading"
            body = json.dumps({"state": state}).encode()
        else:
            message: Message = {"more_body": True}
            while message.get("more_body"):
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
            finished.add(query.removeprefix("uploadmeter_id="))
            body = b"{}"
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    if os.environ.get("UM_BENCH_CONTROL") == "1":
        return drain
    threads = int(os.environ.get("UM_STORE_THREADS", "2"))
    return UploadMeterMiddleware(drain, secret_key=SECRET, store=_store(), store_threads=threads)

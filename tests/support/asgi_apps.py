"""ASGI apps for end-to-end tests, behind :class:`uploadmeter.asgi.UploadMeterMiddleware`.

``make_starlette_app`` answers ``POST /upload`` as the WSGI apps of
:mod:`tests.support.e2e_apps` do (form fields, and each file's name and SHA-256), so the
same checks apply.  Settings come from keyword arguments or environment variables, as
there.  Importable by the servers::

    uvicorn --factory --workers 3 tests.support.asgi_apps:make_starlette_app
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

from fastapi import FastAPI
from fastapi import UploadFile as FastAPIUploadFile
from fastapi.responses import HTMLResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from werkzeug.utils import secure_filename

from tests.support.e2e_apps import _settings
from uploadmeter.asgi import UploadMeterMiddleware, current_upload, route_path
from uploadmeter.asgi._types import ASGIApp, Message, Receive, Scope, Send
from uploadmeter.ui import template_environment

SECRET = "e2e secret"  # the WSGI apps' too: one session cookie for both shells


def with_pid(app: ASGIApp) -> ASGIApp:
    """Tag every response with the worker's pid, so tests can see who answered."""
    pid = str(os.getpid()).encode()

    async def tagged(scope: Scope, receive: Receive, send: Send) -> None:
        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message["headers"], (b"x-worker-pid", pid)])
            await send(message)

        await app(scope, receive, tagging_send)

    return tagged


def _save_file(upload_dir: str, upload: UploadFile) -> dict[str, Any]:
    name = secure_filename(upload.filename or "") or "upload"
    path = os.path.join(upload_dir, name)
    digest = hashlib.sha256()
    upload.file.seek(0)
    with open(path, "wb") as out:
        while block := upload.file.read(1 << 20):
            digest.update(block)
            out.write(block)
    return {
        "filename": upload.filename,
        "sha256": digest.hexdigest(),
        "size": os.path.getsize(path),
    }


def starlette_upload_app(upload_dir: str) -> Starlette:
    """``POST /upload`` through Starlette's ``request.form()``."""

    async def upload(request: Request) -> JSONResponse:
        async with request.form(max_part_size=16 * 1024 * 1024) as form:
            fields: dict[str, str] = {}
            saved = []
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    found = await run_in_threadpool(_save_file, upload_dir, value)
                    saved.append({"field": name, **found})
                else:
                    fields[name] = value
        handle = current_upload(request)
        if handle is not None:
            handle.set_result(files=[f["filename"] for f in saved])
        return JSONResponse({"form": fields, "files": saved})

    return Starlette(routes=[Route("/upload", upload, methods=["POST"])])


class WhereAmI:
    """A mountable ASGI app answering the paths it was given, and where it was mounted."""

    def __init__(self) -> None:
        self.mounted: str | None = None

    def mounted_at(self, path: str) -> None:
        self.mounted = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps(
            {
                "path": scope["path"],
                "root_path": scope["root_path"],
                "route_path": route_path(scope),
                "mounted_at": self.mounted,
            }
        ).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def read_throttle(app: ASGIApp, bytes_per_second: float) -> ASGIApp:
    """The app reads its request bodies at ``bytes_per_second`` (the demo's server-side
    throttle, for ASGI): each body message waits as long as its size takes at that rate,
    so the server's flow control slows the client down and a browser test can watch."""

    async def throttled(scope: Scope, receive: Receive, send: Send) -> None:
        async def slow_receive() -> Message:
            message = await receive()
            size = len(message.get("body", b""))
            if size:
                await asyncio.sleep(size / bytes_per_second)
            return message

        await app(scope, slow_receive, send)

    return throttled


TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def make_fastapi_page_app(**options: Any) -> ASGIApp:
    """A FastAPI page with the component (``GET /``), its uploads saved by ``UploadFile``
    (``POST /upload``), read at ``UM_THROTTLE_KBPS`` KiB/s when that is set."""
    s = _settings(options)
    api = FastAPI()
    kbps = float(options.get("throttle_kbps", os.environ.get("UM_THROTTLE_KBPS", "0")))
    inner = read_throttle(api, kbps * 1024) if kbps else api
    meter = UploadMeterMiddleware(
        inner,
        secret_key=SECRET,
        store=s["store"],
        update_interval=s["update_interval"],
        max_content_length=s["max_content_length"],
    )
    templates = Jinja2Templates(env=template_environment(TEMPLATES, middleware=meter))

    @api.get("/", response_class=HTMLResponse)
    async def page(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "asgi_page.html")

    @api.post("/upload")
    async def upload(request: Request, document: list[FastAPIUploadFile]) -> dict[str, Any]:
        saved = [await run_in_threadpool(_save_file, s["upload_dir"], f) for f in document]
        handle = current_upload(request)
        if handle is not None:
            handle.set_result(saved=", ".join(f["filename"] for f in saved))
        return {"files": saved}

    return with_pid(meter)


def make_starlette_app(**options: Any) -> ASGIApp:
    s = _settings(options)
    meter = UploadMeterMiddleware(
        starlette_upload_app(s["upload_dir"]),
        secret_key=SECRET,
        store=s["store"],
        update_interval=s["update_interval"],
        max_content_length=s["max_content_length"],
    )
    meter.mount("/where", WhereAmI())
    return with_pid(meter)

"""A small app serving the chunk and tus endpoints, for tests (in-thread and gunicorn).

``make_app()`` reads its settings from the environment so ``run_gunicorn`` can start it:

* ``UPLOADMETER_TEST_STORE`` -- store URL (``sqlite:///...``, ``redis://...``)
* ``UPLOADMETER_TEST_FILES`` -- the FileStore directory
* ``UPLOADMETER_TEST_INSTANT`` -- ``session`` (default), ``global`` or ``off``
* ``UPLOADMETER_TEST_TUS_LOCK_WAIT`` -- seconds a PATCH waits for another one
* ``UPLOADMETER_TEST_TUS_LOCK_TTL`` -- seconds a PATCH's lock outlives a stalled worker

Every ``on_complete`` call is appended as one JSON line to ``completed.jsonl`` in the
FileStore directory, so a test can see what the application received in any worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from uploadmeter import UploadMeterMiddleware
from uploadmeter.asgi import UploadMeterMiddleware as AsgiMiddleware
from uploadmeter.asgi._types import Receive, Scope, Send
from uploadmeter.resumable import ChunkUploads, FileInfo, FileStore, TusUploads
from uploadmeter.stores import ProgressStore

SECRET = "chunked-test-secret"


def page(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [b"<!doctype html><title>chunked</title><p>ok</p>"]


async def asgi_page(scope: Scope, receive: Receive, send: Send) -> None:
    """:func:`page` for the ASGI shell."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/html; charset=utf-8")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"<!doctype html><title>page</title>"})


def completion_log(directory: str) -> Callable[[FileInfo], dict[str, Any]]:
    path = os.path.join(directory, "completed.jsonl")

    def on_complete(info: FileInfo) -> dict[str, Any]:
        line = {
            "upload_id": info.upload_id,
            "session": info.session,
            "protocol": info.protocol,
            "filename": info.filename,
            "size": info.size,
            "sha256": info.sha256,
            "md5": info.md5,
            "path": info.path,
            "instant": info.instant,
            "metadata": dict(info.metadata),
            "pid": os.getpid(),
        }
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        return {"url": "/files/" + info.sha256}

    return on_complete


def read_completions(directory: str) -> list[dict[str, Any]]:
    try:
        with open(os.path.join(directory, "completed.jsonl"), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def make_app(
    store: str | ProgressStore | None = None,
    directory: str | None = None,
    *,
    inner: Callable[..., Iterable[bytes]] = page,
    chunk_options: dict[str, Any] | None = None,
    tus_options: dict[str, Any] | None = None,
    files_options: dict[str, Any] | None = None,
    meter_options: dict[str, Any] | None = None,
    shell: str = "wsgi",
) -> Any:
    """The WSGI middleware with both endpoints mounted; ``shell="asgi"`` (or
    ``UPLOADMETER_TEST_SHELL=asgi``): the ASGI middleware, the same endpoints mounted
    the same way (for uvicorn: ``--factory tests.support.chunked_app:make_app``)."""
    store = store or os.environ.get("UPLOADMETER_TEST_STORE")
    directory = directory or os.environ["UPLOADMETER_TEST_FILES"]
    meter: Any
    if os.environ.get("UPLOADMETER_TEST_SHELL", shell) == "asgi":
        meter = AsgiMiddleware(asgi_page, SECRET, store, **(meter_options or {}))
    else:
        meter = UploadMeterMiddleware(inner, SECRET, store, **(meter_options or {}))
    files = FileStore(directory, **(files_options or {}))
    on_complete = completion_log(directory)
    instant = os.environ.get("UPLOADMETER_TEST_INSTANT", "session")
    options: dict[str, Any] = {"instant_upload": None if instant == "off" else instant}
    options.update(chunk_options or {})
    meter.mount("/chunks", ChunkUploads(meter, files, on_complete=on_complete, **options))
    tus: dict[str, Any] = {}
    if "UPLOADMETER_TEST_TUS_LOCK_WAIT" in os.environ:
        tus["lock_wait"] = float(os.environ["UPLOADMETER_TEST_TUS_LOCK_WAIT"])
    if "UPLOADMETER_TEST_TUS_LOCK_TTL" in os.environ:
        tus["lock_ttl"] = float(os.environ["UPLOADMETER_TEST_TUS_LOCK_TTL"])
    tus.update(tus_options or {})
    meter.mount("/tus", TusUploads(meter, files, on_complete=on_complete, **tus))
    return meter

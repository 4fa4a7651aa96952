"""Apps that ``bench/`` serves with gunicorn: the same Flask app with and without the meter.

Configured by environment variables, because gunicorn builds the app from a spec string:

* ``UM_METERED`` -- ``1``: wrap the app in :class:`UploadMeterMiddleware`; ``0``: bare app
* ``UM_STORE`` -- the store URL (default: the middleware's default SQLite file)
* ``UM_UPLOAD_DIR`` -- where uploaded files are saved (and removed again)
* ``UM_BENCH_SEARCH=bytes.find`` -- make the observer use ``bytes.find`` even when
  StringZilla is installed (to measure both)

``create_app()`` is the benchmark app: ``POST /upload`` saves every file through
``request.files`` (what an app really does), ``POST /json`` echoes a JSON body and
``GET /`` answers a small HTML page.  ``side_by_side_app()`` serves it with and without
the middleware from one process, for A/B runs.  ``hello_app()`` is the hello-world baseline and
``poll_app()`` the middleware around it, for poll-throughput runs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import Any

from uploadmeter import UploadMeterMiddleware
from uploadmeter.stores import ProgressStore, open_store

SECRET = "bench-secret"


class CountingStore(ProgressStore):
    """Passes every call to ``inner`` and counts record writes (``add`` and ``set``) per
    upload id."""

    def __init__(self, inner: ProgressStore) -> None:
        self.inner = inner
        self.record_writes: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        return self.inner.get(key)

    def set(self, key: str, value: str, ttl: float) -> None:
        self.inner.set(key, value, ttl)
        if key.startswith("upload:"):
            upload_id = key.rsplit(":", 1)[1]
            with self._lock:
                self.record_writes[upload_id] = self.record_writes.get(upload_id, 0) + 1

    def add(self, key: str, value: str, ttl: float) -> bool:
        added = self.inner.add(key, value, ttl)
        if added and key.startswith("upload:"):  # the claim: an upload's first write
            upload_id = key.rsplit(":", 1)[1]
            with self._lock:
                self.record_writes[upload_id] = self.record_writes.get(upload_id, 0) + 1
        return added

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def incr(self, key: str, ttl: float) -> int:
        return self.inner.incr(key, ttl)


def _search() -> None:
    if os.environ.get("UM_BENCH_SEARCH") == "bytes.find":
        import uploadmeter.core

        uploadmeter.core._observer._find = bytes.find


def _store() -> ProgressStore:
    return CountingStore(open_store(os.environ.get("UM_STORE") or None))


def create_app(metered: bool | None = None) -> Callable[..., Iterable[bytes]]:
    """The benchmark app, wrapped in the middleware if ``metered`` (default: ``UM_METERED``)."""
    from flask import Flask, jsonify, request

    _search()
    upload_dir = os.environ.get("UM_UPLOAD_DIR") or tempfile.mkdtemp(prefix="um-bench-")
    os.makedirs(upload_dir, exist_ok=True)
    app = Flask(__name__)
    meter: UploadMeterMiddleware | None = None

    @app.post("/upload")
    def upload() -> Any:
        want_hash = request.args.get("hash") == "1"
        files: list[dict[str, Any]] = []
        for name, storage in request.files.items(multi=True):
            path = os.path.join(upload_dir, f"{os.getpid()}-{threading.get_ident()}-{len(files)}")
            storage.save(path)
            size = os.path.getsize(path)
            digest = None
            if want_hash:
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            os.unlink(path)
            files.append({"name": name, "size": size, "sha256": digest})
        return jsonify(files=files, fields=len(request.form))

    @app.post("/json")
    def echo_json() -> Any:
        data = request.get_json()
        return jsonify(received=len(data.get("items", [])))

    @app.get("/")
    def index() -> str:
        return "<!doctype html><title>bench</title><p>Hello."

    @app.get("/stats")
    def stats() -> Any:
        """Store writes made for one upload id (this worker's count)."""
        if meter is None:
            return jsonify(writes=None)
        store = meter.store
        assert isinstance(store, CountingStore)
        return jsonify(writes=store.record_writes.get(request.args["id"], 0))

    if metered is None:
        metered = os.environ.get("UM_METERED", "1") == "1"
    if metered:
        meter = UploadMeterMiddleware(app.wsgi_app, secret_key=SECRET, store=_store())
        app.wsgi_app = meter  # type: ignore[method-assign]
    return app


SIDE_HEADER = "X-Bench-Side"


def side_by_side_app() -> Callable[..., Iterable[bytes]]:
    """The bare app and the metered app in one server process, chosen per request.

    ``X-Bench-Side: metered`` sends a request to the app behind the middleware, anything
    else to the bare app.  Both sides then share everything a process brings (heap
    layout, gunicorn's buffers, the CPU it runs on), which otherwise differs between two
    processes by several percent: the A/B ratio measures the middleware alone.  With
    ``UM_BENCH_CONTROL=1`` both sides are the bare app (an A/A run: the method's noise).
    """
    bare = create_app(metered=False)
    metered = create_app(metered=os.environ.get("UM_BENCH_CONTROL") != "1")
    key = "HTTP_" + SIDE_HEADER.upper().replace("-", "_")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        side = metered if environ.get(key) == "metered" else bare
        return side(environ, start_response)

    return app


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("REQUEST_METHOD") == "POST":
        stream = environ["wsgi.input"]
        while stream.read(65536):
            pass
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def hello_app() -> Callable[..., Iterable[bytes]]:
    return hello


def poll_app() -> Callable[..., Iterable[bytes]]:
    """The middleware around hello-world: polls are answered by the middleware alone.

    A tracked ``POST`` (drained by :func:`hello`) makes the record that the polls read.
    """
    return UploadMeterMiddleware(hello, secret_key=SECRET, store=_store())

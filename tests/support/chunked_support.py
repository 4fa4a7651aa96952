"""Helpers for the chunked-upload, tus and processing tests: a client speaking the chunk
protocol the way simple-uploader.js does (same parameter names, same split), a served test
app, and a store that stages races at chosen moments."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import uvicorn
from werkzeug.serving import make_server

from tests.support.asgi_servers import run_uvicorn
from tests.support.chunked_app import make_app
from tests.support.servers import Client, free_port, multipart_body, run_gunicorn, wait_until
from uploadmeter import MemoryStore, UploadMeterMiddleware

CHUNKS = "/uploadmeter/chunks"


def split(size: int, chunk_size: int, *, force: bool = False) -> int:
    """totalChunks as the clients compute it (floor, or ceil with forceChunkSize)."""
    if force:
        return max(-(-size // chunk_size), 1)
    return max(size // chunk_size, 1)


@dataclass
class ChunkedFile:
    data: bytes
    chunk_size: int
    identifier: str
    filename: str = "data.bin"
    force: bool = False

    @classmethod
    def random(cls, size: int, chunk_size: int, **kw: Any) -> ChunkedFile:
        data = os.urandom(size)
        kw.setdefault("identifier", hashlib.md5(data).hexdigest())
        return cls(data, chunk_size, **kw)

    @property
    def total_chunks(self) -> int:
        return split(len(self.data), self.chunk_size, force=self.force)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def piece(self, number: int) -> bytes:
        start = (number - 1) * self.chunk_size
        end = len(self.data) if number == self.total_chunks else start + self.chunk_size
        return self.data[start:end]

    def params(self, number: int | None = None, **override: Any) -> dict[str, Any]:
        p: dict[str, Any] = {
            "identifier": self.identifier,
            "filename": self.filename,
            "relativePath": self.filename,
            "totalSize": len(self.data),
            "chunkSize": self.chunk_size,
            "totalChunks": self.total_chunks,
        }
        if number is not None:
            p["chunkNumber"] = number
            p["currentChunkSize"] = len(self.piece(number))
        p.update(override)
        return {k: v for k, v in p.items() if v is not None}


class ChunkClient(Client):
    """A cookie-keeping client with the chunk protocol's three requests."""

    def start(self) -> None:
        # As the uploader's script does (chunk requests never issue a session).
        status, _, _ = self.request("GET", "/uploadmeter/session")
        assert status == 204 and self.cookies

    def test(self, params: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        status, _, body = self.request("GET", CHUNKS + "?" + urlencode(params))
        return status, (json.loads(body) if body else None)

    def post(
        self, params: dict[str, Any], data: bytes, *, octet: bool = False, field: str = "file"
    ) -> tuple[int, dict[str, Any]]:
        if octet:
            status, _, body = self.request(
                "POST",
                CHUNKS + "?" + urlencode(params),
                data,
                {"Content-Type": "application/octet-stream"},
            )
        else:
            parts = [(k, None, str(v).encode()) for k, v in params.items()]
            body_bytes, ctype = multipart_body([*parts, (field, "blob", data)])
            status, _, body = self.request("POST", CHUNKS, body_bytes, {"Content-Type": ctype})
        return status, json.loads(body)

    def post_chunk(
        self, f: ChunkedFile, number: int, **override: Any
    ) -> tuple[int, dict[str, Any]]:
        return self.post(f.params(number, **override), f.piece(number))

    def upload(self, f: ChunkedFile, order: list[int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for number in order or range(1, f.total_chunks + 1):
            status, body = self.post_chunk(f, number)
            assert status == 200, body
        return body


@dataclass
class Served:
    url: str
    meter: UploadMeterMiddleware
    directory: str

    def endpoint(self, path: str) -> Any:
        """The feature mounted at ``path`` (``ChunkUploads``, ``TusUploads``), whichever
        shell serves it (the ASGI middleware wraps it)."""
        app = self.meter.endpoints.mounts[path]
        return getattr(app, "feature", app)

    def client(self) -> ChunkClient:
        c = ChunkClient(self.url)
        c.start()
        return c


@contextlib.contextmanager
def serve_fast(app: Any) -> Iterator[str]:
    """Like ``servers.serve_in_thread``, but shuts down in milliseconds, not 0.5 s."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn (one worker, h11, asyncio) in a thread of this process."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", http="h11"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@contextlib.contextmanager
def run_workers(shell: str, env: dict[str, str], workers: int = 3) -> Iterator[str]:
    """:func:`~tests.support.chunked_app.make_app` in ``workers`` processes: gunicorn for
    ``"wsgi"``, uvicorn for ``"asgi"``; the base URL."""
    if shell == "asgi":
        env = {**env, "UPLOADMETER_TEST_SHELL": "asgi"}
        with run_uvicorn("tests.support.chunked_app:make_app", workers=workers, env=env) as srv:
            yield srv.url
        return
    with run_gunicorn("tests.support.chunked_app:make_app()", workers=workers, env=env) as url:
        yield url


@contextlib.contextmanager
def served(
    directory: str, store: Any = "memory://", shell: str = "wsgi", **options: Any
) -> Iterator[Served]:
    """The test app on ``directory`` (``shell``: ``"wsgi"``, werkzeug's server; ``"asgi"``:
    the ASGI middleware under uvicorn), in this process."""
    meter = make_app(store, directory, shell=shell, **options)
    with (serve_asgi if shell == "asgi" else serve_fast)(meter) as url:
        yield Served(url, meter, directory)


def leftovers(directory: str) -> dict[str, list[str]]:
    """Files under tmp/ and partial/ (should be empty once uploads are over)."""
    found: dict[str, list[str]] = {}
    for sub in ("tmp", "partial"):
        paths = []
        for root, _, names in os.walk(os.path.join(directory, sub)):
            paths.extend(os.path.join(root, n) for n in names)
        found[sub] = paths
    return found


class HookedStore(MemoryStore):
    """A memory store that stages races: ``after_get(key, hook)`` runs ``hook`` once, right
    after the next read of ``key``; ``after_set(marker, hook)`` once, right after the next
    write whose value contains ``marker`` (in the thread that made it)."""

    def __init__(self) -> None:
        super().__init__()
        self._after_get: dict[str, Callable[[], object]] = {}
        self._after_set: dict[str, Callable[[], object]] = {}

    def after_get(self, key: str, hook: Callable[[], object]) -> None:
        self._after_get[key] = hook

    def after_set(self, marker: str, hook: Callable[[], object]) -> None:
        self._after_set[marker] = hook

    def get(self, key: str) -> str | None:
        value = super().get(key)
        hook = self._after_get.pop(key, None)
        if hook is not None:
            hook()
        return value

    def set(self, key: str, value: str, ttl: float) -> None:
        super().set(key, value, ttl)
        for marker in [m for m in self._after_set if m in value]:
            hook = self._after_set.pop(marker, None)
            if hook is not None:
                hook()


class Pause:
    """A hook that holds the thread running it until :meth:`resume`."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._resume = threading.Event()

    def __call__(self) -> None:
        self.reached.set()
        assert self._resume.wait(10), "never resumed"

    def resume(self) -> None:
        self._resume.set()

"""Helpers of the hardening tests (faults, hostile input): apps, servers, raw HTTP.

* :func:`make_app` -- a Flask app behind the middleware that saves uploads through
  ``request.files`` and spools them to *named* temp files in a directory of the test's
  choosing, so a test can prove nothing is left behind (werkzeug's default spool is an
  unnamed ``O_TMPFILE`` on Linux: invisible either way).
* :func:`gunicorn_app` -- the same app for gunicorn, configured by environment variables.
* :class:`Gunicorn` -- gunicorn in a subprocess, with its workers' pids.
* :class:`RedisServer` -- a redis-server that a test can freeze, kill and restart on
  the same port.
* :func:`raw_http` -- one HTTP request over a plain socket, for the requests
  ``http.client`` will not send (lying lengths, half-closed bodies, trickles).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from flask import Flask, Request, jsonify, request
from werkzeug.utils import secure_filename

from tests.support import servers
from tests.support.servers import free_port, wait_for_port
from uploadmeter import SQLiteStore, UploadMeterMiddleware, current_upload

TESTS = os.path.dirname(os.path.abspath(__file__))
SECRET = "hardening secret"


def make_app(
    upload_dir: str,
    spool_dir: str,
    *,
    store: Any = None,
    max_form_parts: int | None = 1000,
    **meter_options: Any,
) -> UploadMeterMiddleware:
    """``POST /upload`` saves every file; ``GET /ping`` answers ``pong``."""

    class SpoolingRequest(Request):
        def _get_file_stream(
            self,
            total_content_length: int | None,
            content_type: str | None,
            filename: str | None = None,
            content_length: int | None = None,
        ) -> IO[bytes]:
            return tempfile.NamedTemporaryFile("wb+", dir=spool_dir, prefix="spool-")

    app = Flask(__name__)
    app.request_class = SpoolingRequest
    app.config["MAX_FORM_PARTS"] = max_form_parts

    @app.post("/upload")
    def upload() -> Any:
        saved = []
        for field, storage in request.files.items(multi=True):
            name = secure_filename(storage.filename or "")[:100] or "upload"
            path = os.path.join(upload_dir, f"{len(saved)}-{name}")
            storage.save(path)
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            saved.append({"field": field, "size": os.path.getsize(path), "sha256": digest})
        handle = current_upload(request.environ)
        if handle is not None:
            handle.set_result(files=len(saved))
        return jsonify(files=saved, fields=len(request.form))

    @app.get("/ping")
    def ping() -> Any:
        return jsonify(pong=os.getpid())

    meter = UploadMeterMiddleware(app.wsgi_app, secret_key=SECRET, store=store, **meter_options)
    app.wsgi_app = meter  # type: ignore[method-assign]
    meter.flask_app = app  # type: ignore[attr-defined]
    return meter


def gunicorn_app() -> Callable[..., Iterable[bytes]]:
    """For gunicorn: :func:`make_app` configured by ``UM_*`` environment variables."""
    limit = os.environ.get("UM_MAX_CONTENT_LENGTH")
    meter = make_app(
        os.environ["UM_UPLOAD_DIR"],
        os.environ["UM_SPOOL_DIR"],
        store=_store_from_env(),
        stale_after=float(os.environ.get("UM_STALE_AFTER", "120")),
        update_interval=0.0,
        max_content_length=int(limit) if limit else None,
    )
    return meter.flask_app  # type: ignore[attr-defined,no-any-return]


def _store_from_env() -> Any:
    """``UM_STORE``, as an :class:`SQLiteStore` with ``UM_SQLITE_BUSY_TIMEOUT`` when set."""
    spec = os.environ.get("UM_STORE") or None
    busy = os.environ.get("UM_SQLITE_BUSY_TIMEOUT")
    if spec and busy and spec.startswith("sqlite://"):
        return SQLiteStore(spec[len("sqlite://") :], busy_timeout=float(busy))
    return spec


def plain_gunicorn_app() -> Callable[..., Iterable[bytes]]:
    """For gunicorn: a plain WSGI app (no framework) that reads the body in 8 KiB reads
    and answers its size, behind the middleware."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        size = 0
        while data := stream.read(8192):
            size += len(data)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(size).encode()]

    return UploadMeterMiddleware(
        app, secret_key=SECRET, store=_store_from_env(), update_interval=0.0
    )


def open_fds(ignore: str | None = None) -> int:
    """Open file descriptors of this process, less those on paths starting with ``ignore``.

    Pass the SQLite store's path as ``ignore``: SQLite keeps the descriptors of closed
    connections to reuse them (POSIX locks are per process), a bounded pool that would
    otherwise look like a leak.
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if ignore is None or not os.readlink(f"/proc/self/fd/{fd}").startswith(ignore):
                count += 1
    return count


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- servers ------------------------------------------------------------------------------


class Gunicorn(servers.Gunicorn):
    """:class:`servers.Gunicorn` that can also tell which worker serves a connection."""

    def worker_serving(self, client_port: int) -> int:
        """The pid of the worker whose socket talks to our ``client_port``."""
        inodes = set()
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[2].split(":")[1], 16) == client_port:
                    inodes.add(f"socket:[{fields[9]}]")
        for pid in self.worker_pids():
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
        raise LookupError(f"no worker serves port {client_port}")


@contextlib.contextmanager
def run_gunicorn(spec: str, *, workers: int = 1, env: dict[str, str]) -> Iterator[Gunicorn]:
    with servers.gunicorn_process(
        spec, workers=workers, env=env, args=("-k", "sync", "--log-level", "warning")
    ) as server:
        yield Gunicorn(server.proc, server.port)


class RedisServer:
    """A redis-server on a fixed port that can be frozen, killed and started again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, proc=self.proc)

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- raw HTTP -----------------------------------------------------------------------------


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class RawHTTP:
    """One request over a plain socket: the test writes whatever bytes it likes."""

    def __init__(self, url: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def end_body(self) -> None:
        """Half-close: no more body bytes will come, the answer can still be read."""
        self.sock.shutdown(socket.SHUT_WR)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                headers = _headers(head)
                length = headers.get("content-length")
                if length is not None and len(body) >= int(length):
                    break
        self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), _headers(head), body

    def close(self) -> None:
        self.sock.close()


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def request_head(
    path: str, headers: dict[str, str], *, method: str = "POST", cookie: str | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def decode_json(data: bytes) -> Any:
    return json.loads(data)

"""Real servers and a real HTTP client for end-to-end tests, on loopback only.

* :func:`serve_in_thread` -- werkzeug's threaded server in this process
* :func:`run_gunicorn` -- gunicorn with several sync workers in a subprocess
* :func:`run_redis` -- a throwaway ``redis-server``
* :class:`RawUpload` -- an HTTP request whose body the test sends piece by piece, so
  uploads are throttled on purpose instead of hoping for timing
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from werkzeug.serving import make_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` with werkzeug's threaded server; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


class Gunicorn:
    """A running gunicorn: its port, its master process and its workers."""

    def __init__(self, proc: subprocess.Popen[Any], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def worker_pids(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(p) for p in f.read().split()]


@contextlib.contextmanager
def gunicorn_process(
    app_spec: str,
    *,
    workers: int = 3,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    preexec_fn: Any = None,
) -> Iterator[Gunicorn]:
    """Run ``gunicorn -w workers app_spec`` on a free loopback port, all workers booted."""
    port = free_port()
    # ROOT: the package under test, demo_app and tests.support (app specs name tests.support.x).
    paths = [ROOT, os.environ.get("PYTHONPATH", "")]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
         "--graceful-timeout", "2", *args, app_spec],
        cwd=ROOT,
        env=full_env,
        preexec_fn=preexec_fn,
    )  # fmt: skip
    try:
        wait_for_port(port, proc=proc, timeout=30)
        server = Gunicorn(proc, port)
        # Workers boot after the master binds; wait until they all exist.
        deadline = time.monotonic() + 30
        while len(server.worker_pids()) < workers and time.monotonic() < deadline:
            time.sleep(0.02)
        yield server
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after 15 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_gunicorn(
    app_spec: str,
    *,
    workers: int = 3,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[str]:
    """:func:`gunicorn_process` for tests that need only the base URL."""
    with gunicorn_process(app_spec, workers=workers, env=env, args=args) as server:
        yield server.url


@contextlib.contextmanager
def run_redis() -> Iterator[tuple[str, subprocess.Popen[Any]]]:
    """Start a throwaway redis-server; yields ``(url, process)``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (.ci/run installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.kill()
        proc.wait()


def new_upload_id() -> str:
    return uuid.uuid4().hex


def multipart_body(
    parts: list[tuple[str, str | None, bytes]], boundary: str = "uMbOuNdArY7x2"
) -> tuple[bytes, str]:
    """Build a body from ``(name, filename or None, data)``; returns ``(body, content type)``."""
    out = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename is not None:
            head += "Content-Type: application/octet-stream\r\n"
        # Appended apart, not concatenated: a 256 MiB part is not copied before the join.
        out += [head.encode() + b"\r\n", data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class Client:
    """A cookie-keeping HTTP client on ``http.client`` (one connection per request)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cookies: dict[str, str] = {}

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def remember(self, response: http.client.HTTPResponse) -> None:
        for value in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            all_headers = dict(headers or {})
            if self.cookies:
                all_headers["Cookie"] = self.cookie_header()
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            self.remember(response)
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def progress(self, upload_id: str, prefix: str = "/uploadmeter") -> dict[str, Any]:
        status, _, data = self.request("GET", f"{prefix}/progress?id={upload_id}")
        assert status == 200, (status, data)
        return json.loads(data)  # type: ignore[no-any-return]


class RawUpload:
    """One upload request whose body is sent when and as the test says.

    ::

        up = RawUpload(client, "/upload?uploadmeter_id=" + uid, body, content_type)
        up.send(65536)        # the next 64 KiB
        up.send_rest()
        status, headers, data = up.finish()
    """

    def __init__(
        self,
        client: Client,
        path: str,
        body: bytes,
        content_type: str,
        *,
        headers: dict[str, str] | None = None,
        content_length: int | None = -1,
    ) -> None:
        self.client = client
        self.body = body
        self.sent = 0
        self.conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
        self.conn.putrequest("POST", path)
        self.conn.putheader("Content-Type", content_type)
        if content_length == -1:
            content_length = len(body)
        if content_length is not None:
            self.conn.putheader("Content-Length", str(content_length))
        if client.cookies:
            self.conn.putheader("Cookie", client.cookie_header())
        for name, value in (headers or {}).items():
            self.conn.putheader(name, value)
        self.conn.endheaders()

    def send(self, n: int) -> int:
        piece = self.body[self.sent : self.sent + n]
        self.conn.send(piece)
        self.sent += len(piece)
        return len(piece)

    def send_rest(self) -> None:
        self.send(len(self.body) - self.sent)

    def finish(self) -> tuple[int, dict[str, str], bytes]:
        response = self.conn.getresponse()
        self.client.remember(response)
        data = response.read()
        self.conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def abort(self) -> None:
        """Vanish mid-body, as a closed browser tab does."""
        self.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        self.conn.close()


def tcp_buffer_max(name: str) -> int:
    """The most Linux's TCP auto-tuning gives one socket's buffer: ``name`` is
    ``tcp_wmem`` (send) or ``tcp_rmem`` (receive)."""
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)

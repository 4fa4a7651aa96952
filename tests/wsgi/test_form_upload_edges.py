"""Form uploads at their edges, through real servers (issue 10, items 5, 7, 9, 11, 14, 16).

* the store away when an upload ends (Redis frozen, SQLite locked by another process): the
  outcome reaches the store once it is back, and a body that arrived whole never reads a
  false ``error`` while the app is still storing it;
* gunicorn's worker timeout stopping a slow upload is recorded;
* ``max_content_length`` holds for chunked bodies, tracked or not; a request with both
  ``Content-Length`` and ``Transfer-Encoding`` is refused before the app;
* a cancel after the app has read the whole body is refused (409), never ``cancelled``
  then ``done``;
* a connection reset under gunicorn is a disconnect after N bytes, not an app failure;
* a query that merely contains ``uploadmeter_id=`` inside another parameter is untracked.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, jsonify, request

from tests.support.hardening_support import (
    SECRET,
    RawHTTP,
    RedisServer,
    make_app,
    request_head,
    run_gunicorn,
    sha256,
)
from tests.support.servers import (
    Client,
    RawUpload,
    gunicorn_process,
    multipart_body,
    new_upload_id,
    serve_in_thread,
    wait_until,
)
from uploadmeter import RedisStore, UploadMeterMiddleware

FILE = random.Random(5).randbytes(300_000)
BODY, CTYPE = multipart_body([("title", None, b"edges"), ("f", "f.bin", FILE)])
LIMIT = 100_000


def env_for(dirs: tuple[str, str], tmp_path: Any, **extra: str) -> dict[str, str]:
    return {
        "UM_UPLOAD_DIR": dirs[0],
        "UM_SPOOL_DIR": dirs[1],
        "UM_STORE": f"sqlite://{tmp_path}/um.sqlite3",
        **extra,
    }


def finished(client: Client, upload_id: str) -> Any:
    record = client.progress(upload_id)
    return record["state"] in ("done", "error", "cancelled") and record


def chunked(data: bytes, size: int = 16 * 1024) -> bytes:
    pieces = [b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
              for i in range(0, len(data), size)]  # fmt: skip
    return b"".join(pieces) + b"0\r\n\r\n"


def raw_post(url: str, path: str, headers: dict[str, str], body: bytes, cookie: str = "") -> Any:
    """Send a whole request over a plain socket; the answer (the server may stop reading)."""
    raw = RawHTTP(url)
    raw.send(request_head(path, headers, cookie=cookie or None))
    with contextlib.suppress(OSError):  # the server may answer and close before the end
        raw.send(body)
    return raw.response()


# -- item 16: the query is parsed -------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["return_uploadmeter_id=1", "next=/x?uploadmeter_id=1", "a=1&xuploadmeter_id=abc"]
)
def test_a_parameter_merely_containing_the_name_leaves_the_post_untracked(
    query: str, dirs: tuple[str, str]
) -> None:
    meter = make_app(*dirs, store="memory://")
    with serve_in_thread(meter.flask_app) as url:  # type: ignore[attr-defined]
        client = Client(url)
        status, _, data = client.request("POST", f"/upload?{query}", BODY, {"Content-Type": CTYPE})
        assert status == 200, data
        assert json.loads(data)["files"][0]["sha256"] == sha256(FILE)
        # The real parameter is still read, and an empty one is still invalid.
        upload_id = new_upload_id()
        path = f"/upload?{query}&uploadmeter_id={upload_id}"
        assert client.request("POST", path, BODY, {"Content-Type": CTYPE})[0] == 200
        assert client.progress(upload_id)["state"] == "done"
        status, _, data = client.request(
            "POST", f"/upload?{query}&uploadmeter_id=", BODY, {"Content-Type": CTYPE}
        )
        assert status == 400 and b"upload id" in data


# -- item 9: the limit holds for every framing ------------------------------------------------


@contextlib.contextmanager
def limited_server(kind: str, dirs: tuple[str, str], tmp_path: Any) -> Iterator[str]:
    if kind == "werkzeug":
        meter = make_app(*dirs, store=f"sqlite://{tmp_path}/um.sqlite3", max_content_length=LIMIT)
        with serve_in_thread(meter.flask_app) as url:  # type: ignore[attr-defined]
            yield url
    else:
        env = env_for(dirs, tmp_path, UM_MAX_CONTENT_LENGTH=str(LIMIT))
        with run_gunicorn(
            "tests.support.hardening_support:gunicorn_app()", workers=2, env=env
        ) as server:
            yield server.url


def each_server_tracked_or_not(test: Any) -> Any:
    """Run ``test(kind, tracked, ...)`` under werkzeug's server and gunicorn, tracked or not."""
    test = pytest.mark.parametrize("tracked", [False, True])(test)
    test = pytest.mark.parametrize("kind", ["werkzeug", "gunicorn"])(test)
    return pytest.mark.gunicorn(test)


def upload_target(url: str, tracked: bool) -> tuple[Client, str, str]:
    """A client with its session cookie, a fresh id, and the path to post to."""
    client = Client(url)
    upload_id = new_upload_id()
    client.progress(upload_id)
    return client, upload_id, f"/upload?uploadmeter_id={upload_id}" if tracked else "/upload"


@each_server_tracked_or_not
def test_a_chunked_body_past_max_content_length_gets_413(
    kind: str, tracked: bool, dirs: tuple[str, str], tmp_path: Any
) -> None:
    with limited_server(kind, dirs, tmp_path) as url:
        client, upload_id, path = upload_target(url, tracked)
        headers = {"Content-Type": CTYPE, "Transfer-Encoding": "chunked"}
        status, _, data = raw_post(url, path, headers, chunked(BODY), client.cookie_header())
        assert status == 413, data
        assert not os.listdir(dirs[0])  # the app stored nothing
        if tracked:
            record = client.progress(upload_id)
            assert record["state"] == "error" and record["error"]["status"] == 413
            # The read that crossed the limit is counted, never handed to the app.
            assert LIMIT < record["bytes_received"] <= LIMIT + 64 * 1024
        # A chunked body within the limit still goes through whole.
        small, ctype = multipart_body([("f", "s.bin", FILE[:50_000])])
        status, _, data = raw_post(
            url, "/upload", {"Content-Type": ctype, "Transfer-Encoding": "chunked"}, chunked(small)
        )
        assert status == 200, data
        assert json.loads(data)["files"][0]["sha256"] == sha256(FILE[:50_000])


@each_server_tracked_or_not
def test_content_length_with_transfer_encoding_is_refused_before_the_app(
    kind: str, tracked: bool, dirs: tuple[str, str], tmp_path: Any
) -> None:
    with limited_server(kind, dirs, tmp_path) as url:
        client, upload_id, path = upload_target(url, tracked)
        headers = {"Content-Type": CTYPE, "Content-Length": "50", "Transfer-Encoding": "chunked"}
        status, _, data = raw_post(url, path, headers, chunked(BODY), client.cookie_header())
        assert status == 400, data
        assert not os.listdir(dirs[0])
        assert client.progress(upload_id)["state"] == "unknown"  # no record: refused first


# -- item 14: a reset under gunicorn is a disconnect ------------------------------------------


@pytest.mark.gunicorn
def test_a_connection_reset_under_gunicorn_is_a_disconnect_after_n_bytes(
    dirs: tuple[str, str], tmp_path: Any
) -> None:
    env = env_for(dirs, tmp_path)
    with run_gunicorn(
        "tests.support.hardening_support:plain_gunicorn_app()", workers=2, env=env
    ) as server:
        client = Client(server.url)
        upload_id = new_upload_id()
        client.progress(upload_id)
        raw = RawHTTP(server.url)
        head = {"Content-Type": CTYPE, "Content-Length": str(len(BODY))}
        raw.send(request_head(f"/upload?uploadmeter_id={upload_id}", head,
                              cookie=client.cookie_header()))  # fmt: skip
        sent = 8 * 8192  # whole reads of the app: every byte sent is read
        raw.send(BODY[:sent])
        wait_until(lambda: client.progress(upload_id)["bytes_received"] == sent)
        # Close with RST (SO_LINGER 0), not FIN: the worker's next read fails.
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        record = wait_until(lambda: finished(client, upload_id))
        assert record["state"] == "error", record
        assert record["error"] == {
            "status": 400,
            "message": f"The connection closed after {sent} of {len(BODY)} bytes.",
        }
        assert record["bytes_received"] == sent


# -- item 7: gunicorn's worker timeout is recorded --------------------------------------------


@pytest.mark.gunicorn
def test_a_worker_timeout_during_a_slow_upload_is_recorded(
    dirs: tuple[str, str], tmp_path: Any
) -> None:
    env = env_for(dirs, tmp_path)
    args = ("-k", "sync", "--timeout", "2", "--log-level", "critical")
    with gunicorn_process("tests.support.hardening_support:gunicorn_app()", workers=2, env=env,
                          args=args) as server:  # fmt: skip
        client = Client(server.url)
        upload_id = new_upload_id()
        client.progress(upload_id)
        upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
        deadline = time.monotonic() + 30
        record = client.progress(upload_id)
        # 40 KB/s: 300 KB take 7.5 s, far longer than the 2 s timeout allows.
        while record["state"] in ("starting", "uploading") and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the aborted worker's socket is gone
                upload.send(4096)
            time.sleep(0.1)
            record = client.progress(upload_id)
        assert record["state"] == "error", record
        assert record["error"]["status"] == 500
        assert record["error"]["message"].startswith(
            "The server stopped the request (worker timeout or shutdown) after "
        ), record
        assert upload.sent < len(BODY)
        assert record["bytes_received"] <= upload.sent
        where = f"after {record['bytes_received']} of {len(BODY)} bytes"
        assert where in record["error"]["message"]


# -- items 11 and 5: a body the app has read ---------------------------------------------------


class HeldApp:
    """A Flask app behind the middleware whose upload view, once it has the whole body,
    waits for the test (as an app storing a large file takes its time)."""

    def __init__(self, store: Any, **options: Any) -> None:
        self.body_read = threading.Event()
        self.proceed = threading.Event()
        app = Flask(__name__)

        @app.post("/upload")
        def upload() -> Any:
            data = request.files["f"].read()
            self.body_read.set()
            assert self.proceed.wait(20)
            return jsonify(sha256=sha256(data))

        self.meter = UploadMeterMiddleware(app.wsgi_app, secret_key=SECRET, store=store, **options)
        app.wsgi_app = self.meter  # type: ignore[method-assign]
        self.app = app


def test_a_cancel_after_the_app_has_the_body_is_refused_and_the_upload_ends_done() -> None:
    held = HeldApp("memory://")
    with serve_in_thread(held.app) as url:
        client = Client(url)
        upload_id = new_upload_id()
        client.progress(upload_id)
        upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
        answer: list[Any] = []
        upload.send_rest()
        waiter = threading.Thread(target=lambda: answer.append(upload.finish()))
        waiter.start()
        assert held.body_read.wait(10)

        status, _, data = client.request("POST", f"/uploadmeter/cancel?id={upload_id}")
        assert status == 409, data
        refused = json.loads(data)
        assert refused["error"]["message"] == (
            "Too late to cancel: the server has received the whole upload."
        )
        assert refused["state"] == "uploading" and refused["percentage"] == 100
        assert client.progress(upload_id)["state"] == "uploading"  # never "cancelled"

        held.proceed.set()
        waiter.join(10)
        assert answer[0][0] == 200
        assert json.loads(answer[0][2])["sha256"] == sha256(FILE)
        assert client.progress(upload_id)["state"] == "done"

        # Before the end of the body a cancel still stops the upload.
        held.body_read.clear()
        upload_id = new_upload_id()
        upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
        upload.send(len(BODY) // 2)
        wait_until(lambda: client.progress(upload_id)["bytes_received"] > 0)
        status, _, data = client.request("POST", f"/uploadmeter/cancel?id={upload_id}")
        assert status == 200 and json.loads(data)["state"] == "cancelled"
        with contextlib.suppress(OSError):
            upload.send_rest()
            upload.finish()
        assert not held.body_read.is_set()
        assert client.progress(upload_id)["state"] == "cancelled"


def test_a_whole_body_the_app_is_still_storing_never_reads_stale() -> None:
    stale_after = 1.0
    held = HeldApp("memory://", stale_after=stale_after)
    with serve_in_thread(held.app) as url:
        client = Client(url)
        upload_id = new_upload_id()
        client.progress(upload_id)
        upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
        upload.send_rest()
        answer: list[Any] = []
        waiter = threading.Thread(target=lambda: answer.append(upload.finish()))
        waiter.start()
        assert held.body_read.wait(10)
        # Polled for twice stale_after (the configured interval is the point of the wait).
        until = time.monotonic() + 2 * stale_after
        while time.monotonic() < until:
            record = client.progress(upload_id)
            assert record["state"] == "uploading", record
            assert record["bytes_received"] == len(BODY)
            time.sleep(0.1)
        held.proceed.set()
        waiter.join(10)
        assert answer[0][0] == 200
        assert client.progress(upload_id)["state"] == "done"


@pytest.mark.redis
def test_redis_frozen_when_the_upload_ends_the_outcome_lands_once_it_is_back() -> None:
    with RedisServer() as redis:
        held = HeldApp(RedisStore(redis.url, socket_timeout=0.3), update_interval=0.0)
        held.proceed.set()
        with serve_in_thread(held.app) as url:
            client = Client(url)
            upload_id = new_upload_id()
            client.progress(upload_id)
            upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
            upload.send(len(BODY) - 1000)
            wait_until(lambda: client.progress(upload_id)["bytes_received"] > 0)
            redis.freeze()
            try:
                upload.send_rest()
                status, _, data = upload.finish()
                assert status == 200, data
                # Frozen: polls cannot read the store (503, not a guess).
                assert client.request("GET", f"/uploadmeter/progress?id={upload_id}")[0] == 503
            finally:
                redis.thaw()
            record = wait_until(lambda: finished(client, upload_id))
            assert record["state"] == "done", record
            assert record["bytes_received"] == len(BODY)


@pytest.mark.gunicorn
def test_sqlite_locked_by_another_process_when_the_upload_ends_under_gunicorn(
    dirs: tuple[str, str], tmp_path: Any
) -> None:
    env = env_for(dirs, tmp_path, UM_SQLITE_BUSY_TIMEOUT="0.3", UM_STALE_AFTER="30")
    with run_gunicorn(
        "tests.support.hardening_support:gunicorn_app()", workers=2, env=env
    ) as server:
        client = Client(server.url)
        upload_id = new_upload_id()
        client.progress(upload_id)
        upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
        upload.send(len(BODY) - 1000)
        wait_until(lambda: client.progress(upload_id)["bytes_received"] > 0)
        with sqlite_held_by_another_process(f"{tmp_path}/um.sqlite3"):
            upload.send_rest()
            status, _, data = upload.finish()  # every write of the end failed: still 200
            assert status == 200, data
            assert json.loads(data)["files"][0]["sha256"] == sha256(FILE)
            assert client.progress(upload_id)["state"] == "uploading"  # WAL: the last write
        # The worker went back to waiting for requests; its outcome lands without one.
        record = wait_until(lambda: finished(client, upload_id))
        assert record["state"] == "done", record
        assert record["bytes_received"] == len(BODY)


@contextlib.contextmanager
def sqlite_held_by_another_process(path: str) -> Iterator[None]:
    """An exclusive transaction on ``path`` held by a separate Python process."""
    script = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
        "db.execute('COMMIT')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(10)

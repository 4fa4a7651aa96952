"""Faults: the upload survives the client, the store and the worker going away.

* a client that disconnects at 24 positions (werkzeug's server) and 6 more (gunicorn):
  the record ends in ``error`` with the exact byte count, no spooled file is left, no file
  descriptor leaks, the worker keeps serving;
* the Redis store frozen (SIGSTOP) or killed mid-upload: the upload completes, polls get
  503 instead of a traceback, a warning is logged, progress resumes when Redis is back;
* the SQLite store locked by another connection: writes wait and retry, never a 500;
  locked past the busy timeout, the upload still completes;
* a gunicorn worker SIGKILLed mid-upload: its record turns to ``error`` once stale, and
  the id can be used again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.hardening_support import (
    RedisServer,
    make_app,
    open_fds,
    run_gunicorn,
    sha256,
)
from tests.support.servers import (
    Client,
    RawUpload,
    multipart_body,
    new_upload_id,
    serve_in_thread,
    wait_until,
)
from uploadmeter import RedisStore, SQLiteStore

FILE_A = random.Random(1).randbytes(300_000)
FILE_B = random.Random(2).randbytes(200_000)
PARTS = [("title", None, "Grüße".encode()), ("a", "a.bin", FILE_A), ("b", "b.bin", FILE_B)]
BODY, CTYPE = multipart_body(PARTS)
PIECE = 64 * 1024


def disconnect_offsets(count: int, seed: int) -> list[int]:
    """Random offsets plus the interesting ones: in a header, at and after delimiters."""
    delimiters = [i for i in range(len(BODY)) if BODY.startswith(b"\r\n--uMbOuNdArY7x2", i)]
    special = [1, 60, *delimiters, *(d + 3 for d in delimiters), len(BODY) - 1]
    rng = random.Random(seed)
    return sorted(set(special + rng.sample(range(1, len(BODY)), count - len(special))))


def start_upload(client: Client, upload_id: str, body: bytes = BODY) -> RawUpload:
    assert client.progress(upload_id)["state"] == "unknown"  # fetches the session cookie
    return RawUpload(client, f"/upload?uploadmeter_id={upload_id}", body, CTYPE)


def progress_reaches(client: Client, upload_id: str, received: int) -> Any:
    return wait_until(lambda: (r := client.progress(upload_id))["bytes_received"] >= received and r)


def nothing_left(*directories: str) -> bool:
    """No file in ``directories`` once garbage is collected.

    werkzeug's form parser, cut short by a disconnect, leaves its spool file in a
    reference cycle (through the exception's traceback) until the next collection; the
    same happens without the middleware, so the test collects before looking.
    """
    gc.collect()
    return not any(os.listdir(d) for d in directories)


def finished(client: Client, upload_id: str) -> Any:
    record = client.progress(upload_id)
    return record["state"] in ("done", "error", "cancelled") and record


def send_until_progress(client: Client, upload: RawUpload, upload_id: str, beyond: int) -> Any:
    """Send 1 KiB at a time until a poll shows more than ``beyond`` bytes."""
    while upload.sent < len(upload.body) - 1024:
        upload.send(1024)
        record = client.progress(upload_id)
        if record["bytes_received"] > beyond:
            return record
    raise AssertionError(f"progress never passed {beyond} bytes")


def answers(url: str) -> bool:
    """Whether the Redis server at ``url`` answers a PING."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url, socket_timeout=0.3)
    try:
        return bool(client.ping())
    except redis_py.RedisError:
        return False
    finally:
        client.close()


def check_complete(response: tuple[int, dict[str, str], bytes]) -> None:
    status, _, data = response
    assert status == 200, data
    answer = json.loads(data)
    assert [(f["field"], f["sha256"]) for f in answer["files"]] == [
        ("a", sha256(FILE_A)),
        ("b", sha256(FILE_B)),
    ]


# -- client disconnects -------------------------------------------------------------------


def test_client_disconnects_at_24_offsets_leave_nothing_behind(
    dirs: tuple[str, str], tmp_path: Any
) -> None:
    upload_dir, spool_dir = dirs
    db = f"{tmp_path}/um.sqlite3"
    meter = make_app(upload_dir, spool_dir, store=f"sqlite://{db}")
    offsets = disconnect_offsets(24, seed=7)
    assert len(offsets) >= 24
    with serve_in_thread(meter.flask_app) as url:  # type: ignore[attr-defined]
        client = Client(url)
        client.progress(new_upload_id())
        baseline = open_fds(ignore=db)
        for offset in offsets:
            upload_id = new_upload_id()
            upload = start_upload(client, upload_id)
            upload.send(offset)
            upload.abort()
            record = wait_until(lambda uid=upload_id: finished(client, uid))
            assert record["state"] == "error", (offset, record)
            assert record["error"]["status"] == 400
            # Every byte the client sent was counted: nothing lost, nothing invented.
            assert record["bytes_received"] == offset, (offset, record)
            assert f"after {offset} of {len(BODY)} bytes" in record["error"]["message"]
            assert all(f["state"] != "uploading" for f in record["fields"]), record
            wait_until(lambda: nothing_left(spool_dir, upload_dir))
        wait_until(lambda: open_fds(ignore=db) <= baseline)
        # The server still serves: a ping and a whole upload.
        assert client.request("GET", "/ping")[0] == 200
        upload_id = new_upload_id()
        upload = start_upload(client, upload_id)
        upload.send_rest()
        check_complete(upload.finish())
        assert wait_until(lambda: (r := client.progress(upload_id))["state"] == "done" and r)[
            "bytes_received"
        ] == len(BODY)


@pytest.mark.gunicorn
def test_client_disconnects_under_gunicorn_keep_the_worker_serving(
    dirs: tuple[str, str], tmp_path: Any
) -> None:
    upload_dir, spool_dir = dirs
    env = {
        "UM_UPLOAD_DIR": upload_dir,
        "UM_SPOOL_DIR": spool_dir,
        "UM_STORE": f"sqlite://{tmp_path}/um.sqlite3",
    }
    with run_gunicorn(
        "tests.support.hardening_support:gunicorn_app()", workers=1, env=env
    ) as server:
        (worker,) = server.worker_pids()
        client = Client(server.url)
        for offset in disconnect_offsets(24, seed=11)[::4][:6]:
            upload_id = new_upload_id()
            upload = start_upload(client, upload_id)
            upload.send(offset)
            upload.abort()
            record = wait_until(
                lambda uid=upload_id: (r := client.progress(uid))["state"] == "error" and r
            )
            assert record["bytes_received"] == offset
            wait_until(lambda: not os.listdir(spool_dir) and not os.listdir(upload_dir))
        assert server.worker_pids() == [worker]
        status, _, data = client.request("GET", "/ping")
        assert status == 200 and str(worker) in data.decode()
        upload = start_upload(client, new_upload_id())
        upload.send_rest()
        check_complete(upload.finish())


# -- store failures -----------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("fault", ["frozen", "killed"])
def test_upload_survives_the_redis_store_going_away(
    fault: str, dirs: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="uploadmeter")
    upload_dir, spool_dir = dirs
    with RedisServer() as redis:
        store = RedisStore(redis.url, socket_timeout=0.3)
        meter = make_app(upload_dir, spool_dir, store=store, update_interval=0.0)
        meter.settings = dataclasses.replace(meter.settings, store_retry=0.2)
        with serve_in_thread(meter.flask_app) as url:  # type: ignore[attr-defined]
            client = Client(url)
            upload_id = new_upload_id()
            upload = start_upload(client, upload_id)
            upload.send(PIECE)
            before = progress_reaches(client, upload_id, PIECE)["bytes_received"]

            if fault == "frozen":
                redis.freeze()
            else:
                redis.kill()
            upload.send(3 * PIECE)
            # Polls cannot read the store: a short 503, not a traceback.
            status, headers, data = client.request("GET", f"/uploadmeter/progress?id={upload_id}")
            assert status == 503, data
            assert headers["content-type"].startswith("application/json")
            wait_until(lambda: "progress store unavailable" in caplog.text)

            if fault == "frozen":
                redis.thaw()
            else:
                redis.start()  # same port, empty: the tracker writes the whole record again
            wait_until(lambda: answers(redis.url))
            # The tracker backs off for store_retry after a failure; past it, the next read
            # writes again.  Waiting out that configured interval is the point, not a hope.
            time.sleep(meter.settings.store_retry)
            resumed = send_until_progress(client, upload, upload_id, before + 3 * PIECE)
            assert resumed["state"] == "uploading"
            assert [f["name"] for f in resumed["fields"]][:2] == ["title", "a"]

            upload.send_rest()
            check_complete(upload.finish())
            final = wait_until(lambda: (r := client.progress(upload_id))["state"] == "done" and r)
            assert final["bytes_received"] == len(BODY)
            assert [f["bytes_received"] for f in final["fields"]] == [len(d) for _, _, d in PARTS]


@pytest.mark.redis
def test_a_whole_upload_succeeds_while_redis_is_down(dirs: tuple[str, str]) -> None:
    upload_dir, spool_dir = dirs
    with RedisServer() as redis:
        meter = make_app(upload_dir, spool_dir, store=RedisStore(redis.url, socket_timeout=0.3))
        with serve_in_thread(meter.flask_app) as url:  # type: ignore[attr-defined]
            client = Client(url)
            client.progress(new_upload_id())
            redis.kill()
            upload = RawUpload(client, f"/upload?uploadmeter_id={new_upload_id()}", BODY, CTYPE)
            upload.send_rest()
            check_complete(upload.finish())
            assert client.request("GET", "/ping")[0] == 200


@pytest.fixture
def sqlite_lock(tmp_path: Any) -> Iterator[Any]:
    """Hold an exclusive transaction on the store's file from another connection."""
    path = str(tmp_path / "um.sqlite3")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    class Lock:
        db_path = path

        def acquire(self) -> None:
            holder.execute("BEGIN EXCLUSIVE")

        def release(self) -> None:
            holder.execute("COMMIT")

    yield Lock()
    holder.close()


def test_sqlite_busy_writes_wait_and_retry(
    dirs: tuple[str, str], sqlite_lock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="uploadmeter")
    upload_dir, spool_dir = dirs
    store = SQLiteStore(sqlite_lock.db_path, busy_timeout=5.0)
    meter = make_app(upload_dir, spool_dir, store=store, update_interval=0.0)
    with serve_in_thread(meter.flask_app) as url:  # type: ignore[attr-defined]
        client = Client(url)
        upload_id = new_upload_id()
        upload = start_upload(client, upload_id)
        upload.send(PIECE)
        before = progress_reaches(client, upload_id, PIECE)["bytes_received"]

        sqlite_lock.acquire()
        released = threading.Event()

        def release() -> None:
            sqlite_lock.release()
            released.set()

        timer = threading.Timer(0.8, release)
        timer.start()
        upload.send(2 * PIECE)
        # WAL readers are not blocked: the poll answers 200 with what was last written.
        while not released.is_set():
            status, _, data = client.request("GET", f"/uploadmeter/progress?id={upload_id}")
            assert status == 200, data
        timer.join()
        progress_reaches(client, upload_id, before + 2 * PIECE)
        upload.send_rest()
        check_complete(upload.finish())
        final = wait_until(lambda: (r := client.progress(upload_id))["state"] == "done" and r)
        assert final["bytes_received"] == len(BODY)
    assert "unavailable" not in caplog.text  # the busy writes were retried, not dropped


def test_sqlite_locked_past_the_busy_timeout_degrades_never_500(
    dirs: tuple[str, str], sqlite_lock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="uploadmeter")
    upload_dir, spool_dir = dirs
    store = SQLiteStore(sqlite_lock.db_path, busy_timeout=0.2)
    meter = make_app(upload_dir, spool_dir, store=store, update_interval=0.0)
    with serve_in_thread(meter.flask_app) as url:  # type: ignore[attr-defined]
        client = Client(url)
        client.progress(new_upload_id())
        sqlite_lock.acquire()
        try:
            # The whole upload, claim and every write inside the lock: still 200.
            upload = RawUpload(client, f"/upload?uploadmeter_id={new_upload_id()}", BODY, CTYPE)
            upload.send_rest()
            check_complete(upload.finish())
            assert "progress store unavailable" in caplog.text
        finally:
            sqlite_lock.release()
        upload_id = new_upload_id()
        upload = start_upload(client, upload_id)
        upload.send_rest()
        check_complete(upload.finish())
        wait_until(lambda: client.progress(upload_id)["state"] == "done")


# -- a worker killed mid-upload -----------------------------------------------------------


@pytest.mark.gunicorn
def test_a_killed_workers_record_turns_to_error_once_stale(
    dirs: tuple[str, str], tmp_path: Any
) -> None:
    upload_dir, spool_dir = dirs
    env = {
        "UM_UPLOAD_DIR": upload_dir,
        "UM_SPOOL_DIR": spool_dir,
        "UM_STORE": f"sqlite://{tmp_path}/um.sqlite3",
        "UM_STALE_AFTER": "1.5",
    }
    # Two workers: one receives the upload, the other answers the polls.
    with run_gunicorn(
        "tests.support.hardening_support:gunicorn_app()", workers=2, env=env
    ) as server:
        client = Client(server.url)
        upload_id = new_upload_id()
        upload = start_upload(client, upload_id)
        upload.send(PIECE)
        live = progress_reaches(client, upload_id, PIECE)
        assert live["state"] == "uploading"

        worker = server.worker_serving(upload.conn.sock.getsockname()[1])  # type: ignore[union-attr]
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: len(pids := server.worker_pids()) == 2 and worker not in pids)
        record = wait_until(
            lambda: (r := client.progress(upload_id))["state"] != "uploading" and r, timeout=15
        )
        assert record["state"] == "error"
        assert record["error"]["status"] == 500
        assert "stopped reporting" in record["error"]["message"]
        assert record["bytes_received"] == live["bytes_received"]
        with contextlib.suppress(OSError):  # the dead worker's socket may be reset already
            upload.abort()

        # The id is free again, and the new worker serves it.
        upload = start_upload_again(client, upload_id)
        upload.send_rest()
        check_complete(upload.finish())
        assert wait_until(lambda: client.progress(upload_id)["state"] == "done")


def start_upload_again(client: Client, upload_id: str) -> RawUpload:
    return RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)

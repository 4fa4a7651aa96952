"""The ASGI middleware end to end: uvicorn (several workers) and hypercorn, on the default
store and on a real redis-server, with a throttled client and a poller on another
connection -- the checks of tests/integration/test_e2e.py, reused as they are."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_e2e import (
    BODY,
    CTYPE,
    PIECE,
    PidClient,
    check_progress,
    check_saved,
    # The same test, collected here with this module's ``live`` (uvicorn, hypercorn).
    test_another_session_can_neither_see_nor_cancel_a_live_upload,  # noqa: F401
    throttled_upload,
)
from tests.support.asgi_servers import run_hypercorn, run_uvicorn
from tests.support.servers import ROOT, Client, RawUpload, multipart_body, new_upload_id, wait_until

FACTORY = "tests.support.asgi_apps:make_starlette_app"


@pytest.fixture
def upload_dir(tmp_path: Any) -> str:
    path = tmp_path / "uploads"
    path.mkdir()
    return str(path)


def _env(upload_dir: str, tmp_path: Any, store: str | None) -> dict[str, str]:
    env = {
        "UM_UPLOAD_DIR": upload_dir,
        "TMPDIR": str(tmp_path),  # the default store's file lives here
        "UM_UPDATE_INTERVAL": "0",
        "UM_MAX_CONTENT_LENGTH": str(64 * 1024 * 1024),
    }
    if store:
        env["UM_STORE"] = store
    return env


@pytest.fixture(params=["uvicorn", "hypercorn"])
def live(request: Any, upload_dir: str, tmp_path: Any) -> Iterator[str]:
    """One worker of each server, on the default store (SQLite in TMPDIR)."""
    run = run_uvicorn if request.param == "uvicorn" else run_hypercorn
    with run(FACTORY, env=_env(upload_dir, tmp_path, None)) as server:
        yield server.url


def test_throttled_upload_reports_truthful_progress(live: str) -> None:
    seen, response = throttled_upload(Client(live), new_upload_id())
    check_progress(seen)
    check_saved(response)
    # The app's result reaches the record.
    upload_id = new_upload_id()
    client = Client(live)
    throttled_upload(client, upload_id)
    assert client.progress(upload_id)["result"] == {
        "files": ["α report.bin", "second.bin", "empty.txt"]
    }


def test_progress_answers_xml_and_refuses_bad_requests(live: str) -> None:
    client = Client(live)
    status, headers, data = client.request("GET", "/uploadmeter/progress?id=abcdefgh&format=xml")
    assert status == 200 and headers["content-type"] == "text/xml; charset=utf-8"
    assert b"<state>unknown</state>" in data
    assert headers["cache-control"] == "no-store"
    status, _, data = client.request(
        "GET", "/uploadmeter/progress?id=bad", headers={"Accept": "application/json"}
    )
    assert status == 400 and json.loads(data)["error"]["message"].startswith("The upload id")
    status, headers, _ = client.request("POST", "/uploadmeter/progress?id=abcdefgh")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, _, data = client.request("GET", "/uploadmeter/nothing")
    assert status == 404
    status, headers, data = client.request("GET", "/uploadmeter/static/uploadmeter.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    with open(os.path.join(ROOT, "uploadmeter", "ui", "static", "uploadmeter.js"), "rb") as f:
        assert data == f.read()
    etag = headers["etag"]
    status, _, data = client.request(
        "GET", "/uploadmeter/static/uploadmeter.js", headers={"If-None-Match": etag}
    )
    assert (status, data) == (304, b"")
    assert client.request("GET", "/uploadmeter/static/../_http.py")[0] == 404


def test_mounted_apps_get_their_root_path(live: str) -> None:
    status, _, data = Client(live).request("GET", "/uploadmeter/where/a/b?x=1")
    assert status == 200
    assert json.loads(data) == {
        "path": "/uploadmeter/where/a/b",
        "root_path": "/uploadmeter/where",
        "route_path": "/a/b",
        "mounted_at": "/uploadmeter/where",
    }


class EventReader:
    """``GET {prefix}/events`` on its own connection, read event by event."""

    def __init__(self, client: Client, upload_id: str) -> None:
        self.conn = http.client.HTTPConnection(client.host, client.port, timeout=20)
        self.conn.request(
            "GET", f"/uploadmeter/events?id={upload_id}", headers={"Cookie": client.cookie_header()}
        )
        self.response = self.conn.getresponse()
        self.comments = 0

    def next(self) -> dict[str, Any] | None:
        """The next event's record; ``None`` once the stream has ended."""
        data = None
        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.rstrip(b"\r\n")
            if line.startswith(b":"):
                self.comments += 1
            elif line.startswith(b"data: "):
                data = json.loads(line[6:])
            elif not line and data is not None:
                return data


def test_events_push_every_change_and_end_at_the_outcome(live: str) -> None:
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    events = EventReader(client, upload_id)
    assert events.response.status == 200
    assert events.response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    assert events.next()["state"] == "unknown"  # type: ignore[index]
    upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    seen: list[dict[str, Any]] = []
    last = 0
    while upload.sent < len(BODY):
        upload.send(PIECE)
        if upload.sent == len(BODY):
            break
        # Each piece is read, written to the store and pushed before the next is sent.
        while (record := events.next()) is not None and record["bytes_received"] <= last:
            pass
        assert record is not None and record["state"] == "uploading", record
        last = record["bytes_received"]
        seen.append(record)
    check_saved(upload.finish())
    while (record := events.next()) is not None:
        seen.append(record)
    assert events.next() is None  # the stream ended after the outcome
    check_progress(seen)


def test_events_refuse_a_bad_id_and_other_sessions_see_nothing(live: str) -> None:
    client = Client(live)
    status, _, data = client.request(
        "GET", "/uploadmeter/events?id=x", headers={"Accept": "application/json"}
    )
    assert status == 400 and json.loads(data)["error"]["status"] == 400
    # A client without a session gets one, and "unknown" at once.
    stranger = Client(live)
    status, headers, data = stranger.request("GET", "/uploadmeter/events?id=abcdefgh")
    assert status == 200 and "uploadmeter_session=" in headers["set-cookie"]
    assert data.startswith(b"retry: 500\n") and b'"state":"unknown"' in data


def test_cancel_stops_the_upload(live: str, upload_dir: str) -> None:
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    upload = RawUpload(
        client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE,
        headers={"Accept": "application/json"},
    )  # fmt: skip
    upload.send(PIECE * 6)
    wait_until(lambda: client.progress(upload_id)["bytes_received"] > PIECE)
    status, _, data = client.request("POST", f"/uploadmeter/cancel?id={upload_id}")
    assert status == 200 and json.loads(data)["state"] == "cancelled"
    # The app is told the client left at its next receive; the client gets the 400.
    try:
        upload.send_rest()
        status, _, data = upload.finish()
        assert status == 400, data
        assert json.loads(data)["error"]["message"] == "The upload was cancelled."
    except (BrokenPipeError, ConnectionResetError):
        pass
    record = wait_until(lambda: (r := client.progress(upload_id))["state"] == "cancelled" and r)
    assert record["error"]["message"] == "The upload was cancelled."
    assert record["bytes_received"] < len(BODY)
    assert os.listdir(upload_dir) == []
    # The id is free again once its upload ended.
    check_saved(throttled_upload(client, upload_id)[1])


def test_client_disconnect_mid_upload_ends_in_error(live: str, upload_dir: str) -> None:
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    upload.send(PIECE * 5)
    wait_until(lambda: client.progress(upload_id)["bytes_received"] > 0)
    upload.abort()
    record = wait_until(lambda: (r := client.progress(upload_id))["state"] == "error" and r)
    assert record["error"]["message"].startswith("The connection closed after")
    assert 0 < record["bytes_received"] < len(BODY)
    assert os.listdir(upload_dir) == []
    check_saved(throttled_upload(client, new_upload_id())[1])


def _raw_request(url: str, head: str, body: bytes = b"") -> bytes:
    """Send ``head`` and ``body`` on a socket (a thread sends; a server that answers early
    may close while it does) and return the status line and headers of the answer, plus
    its body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(head.encode() + body)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        sender.join(20)
        lines = [f"HTTP/1.1 {response.status} {response.reason}"]
        lines += [f"{k}: {v}" for k, v in response.getheaders()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def test_too_large_is_refused_before_the_body_is_sent(live: str) -> None:
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    answer = _raw_request(
        live,
        f"POST /upload?uploadmeter_id={upload_id} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {CTYPE}\r\nContent-Length: {100 * 1024 * 1024}\r\n"
        f"Accept: application/json\r\nCookie: {client.cookie_header()}\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"status":413' in answer
    record = client.progress(upload_id)
    assert record["state"] == "error" and record["error"]["status"] == 413


def test_a_chunked_body_is_cut_at_the_limit(live: str, upload_dir: str) -> None:
    """No Content-Length: the body is read up to max_content_length, then 413."""
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    big, ctype = multipart_body([("doc", "big.bin", b"x" * (65 * 1024 * 1024))])
    chunk = f"{len(big):x}\r\n".encode() + big + b"\r\n0\r\n\r\n"
    answer = _raw_request(
        live,
        f"POST /upload?uploadmeter_id={upload_id} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"
        f"Accept: application/json\r\nCookie: {client.cookie_header()}\r\n\r\n",
        chunk,
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    record = client.progress(upload_id)
    assert record["state"] == "error" and record["error"]["status"] == 413
    assert 64 * 1024 * 1024 < record["bytes_received"] <= len(big)
    assert os.listdir(upload_dir) == []


# -- several processes: uvicorn --workers 3, on the default store and on Redis ---------


def _workers_share(url: str) -> None:
    client = PidClient(url)
    client.answers = []
    seen, response = throttled_upload(client, new_upload_id())
    check_progress(seen)
    check_saved(response)
    # An async worker may answer the polls of its own upload, and which process accepts a
    # new connection is the kernel's choice: hold an upload mid-body and poll (a new
    # connection each) until two processes have seen it in flight -- at least one of them
    # is not the uploader, and read the record through the store.
    client.answers = []
    upload_id = new_upload_id()
    client.progress(upload_id)
    upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    upload.send(PIECE * 4)

    def processes_that_saw_it() -> set[str]:
        client.progress(upload_id)
        return {pid for pid, state in client.answers if state == "uploading"}

    during = wait_until(lambda: len(seen_by := processes_that_saw_it()) >= 2 and seen_by)
    upload.send_rest()
    status, headers, _ = upload.finish()
    assert status == 200
    assert during - {headers["x-worker-pid"]}, (headers["x-worker-pid"], client.answers)


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_three_workers_share_progress_on_the_default_store(
    server: str, upload_dir: str, tmp_path: Any
) -> None:
    run = run_uvicorn if server == "uvicorn" else run_hypercorn
    with run(FACTORY, workers=3, env=_env(upload_dir, tmp_path, None)) as live:
        _workers_share(live.url)
    directory = tmp_path / f"uploadmeter-{os.geteuid()}"
    assert os.stat(directory / "uploadmeter.sqlite3").st_mode & 0o777 == 0o600


@pytest.mark.redis
@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
def test_three_workers_share_progress_through_redis(
    server: str, upload_dir: str, tmp_path: Any, redis_url: str
) -> None:
    run = run_uvicorn if server == "uvicorn" else run_hypercorn
    with run(FACTORY, workers=3, env=_env(upload_dir, tmp_path, redis_url)) as live:
        _workers_share(live.url)
    import redis

    keys = redis.Redis.from_url(redis_url).keys("uploadmeter:upload:*")
    assert len(keys) == 2  # the two uploads' records, in Redis

"""End to end over real HTTP on loopback: real servers, a throttled client, a poller.

The client sends the body piece by piece and, after each piece, waits until a poll on a
second connection shows the server has read more: the upload is throttled on purpose,
so every run sees the same sequence of intermediate states.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import e2e_apps
from tests.support.servers import (
    Client,
    RawUpload,
    multipart_body,
    new_upload_id,
    run_gunicorn,
    serve_in_thread,
    wait_until,
)

PIECE = 128 * 1024
FILE_A = os.urandom(3 * 1024 * 1024 + 17)
FILE_B = os.urandom(700_001)
PARTS = [
    ("title", None, "Straße & <co>".encode()),
    ("doc", "α report.bin", FILE_A),
    ("doc", "second.bin", FILE_B),
    ("empty", "empty.txt", b""),
]
BODY, CTYPE = multipart_body(PARTS)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def throttled_upload(
    client: Client,
    upload_id: str,
    body: bytes = BODY,
    ctype: str = CTYPE,
    headers: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], tuple[int, dict[str, str], bytes]]:
    """Send ``body`` in pieces, polling after each until the server has read more."""
    # Also fetches the session cookie.  An id may be reused once its last upload ended.
    assert client.progress(upload_id)["state"] in ("unknown", "done", "error", "cancelled")
    upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", body, ctype, headers=headers)
    seen: list[dict[str, Any]] = []
    last = 0
    while upload.sent < len(body):
        upload.send(PIECE)
        if upload.sent == len(body):
            break
        record = wait_until(
            lambda last=last: (
                (r := client.progress(upload_id))["state"] == "uploading"
                and r["bytes_received"] > last
                and r
            )
        )
        last = record["bytes_received"]
        seen.append(record)
    response = upload.finish()
    seen.append(wait_until(lambda: (r := client.progress(upload_id))["state"] == "done" and r))
    return seen, response


def check_progress(seen: list[dict[str, Any]], body: bytes = BODY) -> None:
    received = [r["bytes_received"] for r in seen]
    assert received == sorted(received), "progress must never go backwards"
    percentages = [r["percentage"] for r in seen]
    assert percentages == sorted(percentages)
    assert len(set(percentages)) >= 10, percentages
    assert all(r["state"] in ("starting", "uploading") for r in seen[:-1])
    assert all(r["content_length"] == len(body) for r in seen)
    final = seen[-1]
    assert final["state"] == "done" and final["percentage"] == 100
    assert final["bytes_received"] == len(body)
    assert [
        (f["name"], f["filename"], f["bytes_received"], f["state"]) for f in final["fields"]
    ] == [(name, filename, len(data), "done") for name, filename, data in PARTS]
    assert final["error"] is None and final["finished_at"] >= final["started_at"]
    assert final["average_speed"] > 0


def check_saved(response: tuple[int, dict[str, str], bytes]) -> None:
    status, _, data = response
    assert status == 200, data
    answer = json.loads(data)
    assert answer["form"] == {"title": "Straße & <co>"}
    assert [(f["filename"], f["sha256"]) for f in answer["files"]] == [
        ("α report.bin", sha(FILE_A)),
        ("second.bin", sha(FILE_B)),
        ("empty.txt", sha(b"")),
    ]


@pytest.fixture
def upload_dir(tmp_path: Any) -> str:
    path = tmp_path / "uploads"
    path.mkdir()
    return str(path)


@pytest.fixture
def private_tmp(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's temp dir, so a test can prove nothing is left there."""
    path = tmp_path / "servertmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return str(path)


@pytest.fixture(params=["flask", "plain"])
def live(request: Any, upload_dir: str, tmp_path: Any) -> Iterator[str]:
    factory: Callable[..., Any] = (
        e2e_apps.make_flask_app if request.param == "flask" else e2e_apps.make_plain_app
    )
    store = f"sqlite://{tmp_path}/um.sqlite3"
    with serve_in_thread(
        factory(store=store, upload_dir=upload_dir, max_content_length=64 * 1024 * 1024)
    ) as url:
        yield url


def test_throttled_upload_reports_truthful_progress(live: str) -> None:
    seen, response = throttled_upload(Client(live), new_upload_id())
    check_progress(seen)
    check_saved(response)


def test_two_uploads_at_once_are_reported_separately(live: str) -> None:
    client = Client(live)
    small_body, small_ctype = multipart_body([("doc", "small.bin", FILE_B)])
    ids = new_upload_id(), new_upload_id()
    client.progress(ids[0])
    big = RawUpload(client, f"/upload?uploadmeter_id={ids[0]}", BODY, CTYPE)
    small = RawUpload(client, f"/upload?uploadmeter_id={ids[1]}", small_body, small_ctype)
    big.send(len(BODY) // 2)
    small.send_rest()
    assert small.finish()[0] == 200
    both = wait_until(
        lambda: (
            [client.progress(i) for i in ids]
            if client.progress(ids[1])["state"] == "done"
            else None
        )
    )
    assert both[0]["state"] == "uploading" and both[0]["percentage"] < 60
    assert both[1]["fields"][0]["bytes_received"] == len(FILE_B)
    big.send_rest()
    check_saved(big.finish())


def test_cancel_stops_the_upload_and_leaves_nothing(
    live: str, upload_dir: str, private_tmp: str
) -> None:
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    upload.send(PIECE * 6)
    wait_until(lambda: client.progress(upload_id)["bytes_received"] > PIECE)
    status, _, data = client.request("POST", f"/uploadmeter/cancel?id={upload_id}")
    assert status == 200 and json.loads(data)["state"] == "cancelled"
    # The worker notices at its next read; the client may be cut off while sending.
    try:
        upload.send_rest()
        status = upload.finish()[0]
        assert status == 400
    except (BrokenPipeError, ConnectionResetError):
        pass
    record = wait_until(lambda: (r := client.progress(upload_id))["state"] == "cancelled" and r)
    assert record["error"]["message"] == "The upload was cancelled."
    assert record["bytes_received"] < len(BODY)
    wait_until(lambda: os.listdir(upload_dir) == [] and os.listdir(private_tmp) == [])
    # The id is free again once its upload ended.
    _, response = throttled_upload(client, upload_id)
    check_saved(response)


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
    # The server goes on serving.
    check_saved(throttled_upload(client, new_upload_id())[1])


def test_reusing_an_id_in_flight_is_409_not_a_crash(live: str) -> None:
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    first = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    first.send(PIECE)
    wait_until(lambda: client.progress(upload_id)["state"] in ("starting", "uploading"))
    small_body, small_ctype = multipart_body([("doc", "x.bin", b"x")])
    second = RawUpload(
        client,
        f"/upload?uploadmeter_id={upload_id}",
        small_body,
        small_ctype,
        headers={"Accept": "application/json"},
    )
    second.send_rest()
    status, _, data = second.finish()
    assert status == 409
    assert json.loads(data)["error"]["message"] == "An upload with this id is already in progress."
    first.send_rest()
    check_saved(first.finish())
    assert client.progress(upload_id)["state"] == "done"


def test_too_large_is_refused_before_the_body_is_sent(live: str) -> None:
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    host, port = live.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /upload?uploadmeter_id={upload_id} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: {CTYPE}\r\nContent-Length: {100 * 1024 * 1024}\r\n"
            f"Accept: application/json\r\nCookie: {client.cookie_header()}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"status":413' in answer
    record = client.progress(upload_id)
    assert record["state"] == "error" and record["error"]["status"] == 413


# -- several processes: gunicorn workers on the default store, and Redis -----------------


class PidClient(Client):
    """Remembers which worker answered each poll, and what it said."""

    answers: list[tuple[str, str]]

    def progress(self, upload_id: str, prefix: str = "/uploadmeter") -> dict[str, Any]:
        status, headers, data = self.request("GET", f"{prefix}/progress?id={upload_id}")
        assert status == 200, (status, data)
        record: dict[str, Any] = json.loads(data)
        self.answers.append((headers["x-worker-pid"], record["state"]))
        return record


def gunicorn_upload(
    env: dict[str, str], factory: str = "tests.support.e2e_apps:make_flask_app()"
) -> None:
    with run_gunicorn(factory, workers=3, env=env) as url:
        client = PidClient(url)
        client.answers = []
        seen, response = throttled_upload(client, new_upload_id())
        check_progress(seen)
        check_saved(response)
        # A sync worker receiving an upload cannot answer anything else: every poll that
        # saw the upload in flight was answered by another process, through the store.
        uploader = response[1]["x-worker-pid"]
        during = {pid for pid, state in client.answers if state == "uploading"}
        assert during and uploader not in during, (uploader, client.answers)


@pytest.mark.gunicorn
def test_gunicorn_workers_share_progress_on_the_default_store(
    upload_dir: str, tmp_path: Any
) -> None:
    # No UM_STORE: the embedded default, an SQLite file in the user's private directory.
    env = {"UM_UPLOAD_DIR": upload_dir, "TMPDIR": str(tmp_path), "UM_UPDATE_INTERVAL": "0"}
    gunicorn_upload(env)
    directory = tmp_path / f"uploadmeter-{os.geteuid()}"
    assert os.stat(directory).st_mode & 0o777 == 0o700
    assert os.stat(directory / "uploadmeter.sqlite3").st_mode & 0o777 == 0o600


@pytest.mark.gunicorn
@pytest.mark.redis
def test_gunicorn_workers_share_progress_through_redis(upload_dir: str, redis_url: str) -> None:
    gunicorn_upload(
        {"UM_UPLOAD_DIR": upload_dir, "UM_STORE": redis_url, "UM_UPDATE_INTERVAL": "0"},
        "tests.support.e2e_apps:make_plain_app()",
    )
    import redis

    keys = redis.Redis.from_url(redis_url).keys("uploadmeter:upload:*")
    assert len(keys) == 1  # the finished record, kept for its ttl; no lock or cancel left


def test_another_session_can_neither_see_nor_cancel_a_live_upload(live: str) -> None:
    owner, stranger = Client(live), Client(live)
    upload_id = new_upload_id()
    owner.progress(upload_id)
    upload = RawUpload(owner, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    upload.send(PIECE * 4)
    wait_until(lambda: owner.progress(upload_id)["state"] == "uploading")
    assert stranger.progress(upload_id)["state"] == "unknown"
    status, _, data = stranger.request("POST", f"/uploadmeter/cancel?id={upload_id}")
    assert status == 404 and json.loads(data)["state"] == "unknown"
    assert owner.progress(upload_id)["state"] == "uploading"
    upload.send_rest()
    check_saved(upload.finish())
    assert owner.progress(upload_id)["state"] == "done"


def test_cancel_then_disconnect_stays_cancelled(live: str, upload_dir: str) -> None:
    # The worker is blocked waiting for bytes when the cancel arrives; then the browser
    # drops the request.  The worker sees a disconnect, but the user cancelled.
    client = Client(live)
    upload_id = new_upload_id()
    client.progress(upload_id)
    upload = RawUpload(client, f"/upload?uploadmeter_id={upload_id}", BODY, CTYPE)
    upload.send(PIECE * 3)
    wait_until(lambda: client.progress(upload_id)["state"] == "uploading")
    assert client.request("POST", f"/uploadmeter/cancel?id={upload_id}")[0] == 200
    upload.abort()
    wait_until(lambda: os.listdir(upload_dir) == [])
    # The worker's own final write has updated_at == finished_at; the cancel endpoint's
    # record (written first) has an older updated_at.  Wait for the worker's word.
    record = wait_until(
        lambda: (r := client.progress(upload_id))["updated_at"] >= (r["finished_at"] or 1e100) and r
    )
    assert record["state"] == "cancelled", record

"""The record writer (``uploadmeter.core.Records``): lifetimes per state on a real redis,
the cancel flag never outliving its record, the too-late rule, and ids reused after a
cancel -- the last also through the chunk and tus endpoints over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import redis

from tests.support.chunked_support import CHUNKS, ChunkClient, ChunkedFile, served
from tests.support.servers import multipart_body, wait_until
from uploadmeter.core import CANCELLED, DONE, PROCESSING, UPLOADING, UploadRecord
from uploadmeter.core._records import Records, cancel_key, record_key
from uploadmeter.core._settings import TrackerSettings
from uploadmeter.stores import open_store

TTL, STALE_AFTER = 30.0, 90.0
SESSION = "s.session"


@pytest.fixture
def book(redis_url: str) -> Iterator[tuple[Records, Callable[[str], float]]]:
    """Records on a real redis, and the remaining lifetime (seconds) of a store key."""
    store = open_store(redis_url)
    client = redis.Redis.from_url(redis_url)

    def lifetime(key: str) -> float:
        return float(client.pttl("uploadmeter:" + key)) / 1000

    yield Records(store, TrackerSettings(ttl=TTL, stale_after=STALE_AFTER)), lifetime
    client.close()
    store.close()


def near(seconds: float, expected: float) -> bool:
    return expected - 2 < seconds <= expected


def flag_and_record(lifetime: Callable[[str], float], uid: str) -> tuple[float, float, float]:
    """The remaining lifetimes of the cancel flag and of its record, read one after the
    other, and by how much the first may exceed the second while the flag still expires
    first: the time between the two reads (plus PTTL's millisecond)."""
    started = time.monotonic()
    flag = lifetime(cancel_key(SESSION, uid))
    kept = lifetime(record_key(SESSION, uid))
    return flag, kept, time.monotonic() - started + 0.001


def test_a_record_lives_stale_after_plus_ttl_in_flight_and_ttl_once_finished(
    book: tuple[Records, Callable[[str], float]],
) -> None:
    records, lifetime = book
    key = record_key(SESSION, "ttl-upload")
    record = UploadRecord("ttl-upload", UPLOADING)
    assert records.claim(SESSION, record)
    assert near(lifetime(key), STALE_AFTER + TTL)
    record.bytes_received = 10
    assert records.save(SESSION, record, check_cancel=True) is False
    assert near(lifetime(key), STALE_AFTER + TTL)
    record.state = DONE
    records.finish(SESSION, record)
    assert near(lifetime(key), TTL)
    assert lifetime(cancel_key(SESSION, "ttl-upload")) < 0  # no flag for an upload not cancelled


def test_a_cancel_flag_lives_exactly_as_long_as_its_record(
    book: tuple[Records, Callable[[str], float]],
) -> None:
    records, lifetime = book
    uid = "cancelled-upload"
    record = UploadRecord(uid, UPLOADING)
    assert records.claim(SESSION, record)
    cancelled = records.request_cancel(SESSION, uid)
    assert cancelled is not None and cancelled.state == CANCELLED
    assert records.cancel_requested(SESSION, uid)
    # While its worker may still be receiving: both keep the in-flight lifetime...
    flag, kept, slack = flag_and_record(lifetime, uid)
    assert near(flag, STALE_AFTER + TTL) and near(kept, STALE_AFTER + TTL)
    assert flag <= kept + slack
    # ... and the worker's final write shortens both.
    record.state = CANCELLED
    records.finish(SESSION, record)
    flag, kept, slack = flag_and_record(lifetime, uid)
    assert near(flag, TTL) and near(kept, TTL) and flag <= kept + slack


def test_a_cancel_after_the_body_was_received_is_refused(
    book: tuple[Records, Callable[[str], float]],
) -> None:
    records, _ = book
    record = UploadRecord("late-cancel", UPLOADING)
    assert records.claim(SESSION, record)
    assert records.body_received(SESSION, record) is False
    answered = records.request_cancel(SESSION, "late-cancel")
    assert answered is not None and answered.state == UPLOADING  # unchanged: too late
    assert not records.cancel_requested(SESSION, "late-cancel")
    stored = records.load(SESSION, "late-cancel")
    assert stored is not None and stored.state == UPLOADING
    # A processing task still honours a cancel.
    record.state = PROCESSING
    records.save(SESSION, record)
    answered = records.request_cancel(SESSION, "late-cancel")
    assert answered is not None and answered.state == CANCELLED
    assert records.cancel_requested(SESSION, "late-cancel")


def test_a_cancel_before_the_body_was_received_wins(
    book: tuple[Records, Callable[[str], float]],
) -> None:
    records, _ = book
    record = UploadRecord("early-cancel", UPLOADING)
    assert records.claim(SESSION, record)
    assert records.request_cancel(SESSION, "early-cancel") is not None
    assert records.body_received(SESSION, record) is True
    assert records.save(SESSION, record, check_cancel=True) is True  # nothing written
    stored = records.load(SESSION, "early-cancel")
    assert stored is not None and stored.state == CANCELLED


def test_an_id_is_refused_while_in_flight_and_reusable_after_a_cancel(
    book: tuple[Records, Callable[[str], float]],
) -> None:
    records, _ = book
    uid = "reused-upload"
    assert records.claim(SESSION, UploadRecord(uid, UPLOADING))
    assert not records.claim(SESSION, UploadRecord(uid, UPLOADING))  # a double submit
    records.cancel(SESSION, uid, records.load(SESSION, uid))
    assert records.claim(SESSION, UploadRecord(uid, UPLOADING))
    assert not records.cancel_requested(SESSION, uid)  # the earlier cancel stays with it
    assert records.request_cancel(SESSION, "no-such-upload") is None


def test_an_id_is_reusable_once_a_cancelled_record_expired(redis_url: str) -> None:
    records = Records(open_store(redis_url), TrackerSettings(ttl=0.2, stale_after=0.3))
    uid = "expired-cancel"
    assert records.claim(SESSION, UploadRecord(uid, UPLOADING))
    records.cancel(SESSION, uid)
    wait_until(lambda: records.load(SESSION, uid) is None, timeout=5)
    # The flag went with its record: nothing is left to cancel the next upload.
    assert not records.cancel_requested(SESSION, uid)
    assert records.claim(SESSION, UploadRecord(uid, UPLOADING))
    assert not records.cancel_requested(SESSION, uid)


# -- through the endpoints -----------------------------------------------------------------


def read_all(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The application behind the middleware: reads the whole upload."""
    data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(data)).encode()]


def cancel_chunked(c: ChunkClient) -> str:
    f = ChunkedFile.random(4096, 2048)
    assert c.post_chunk(f, 1)[0] == 200
    assert c.request("DELETE", CHUNKS + "?identifier=" + f.identifier)[0] == 200
    return f.identifier


def cancel_tus(c: ChunkClient) -> str:
    v = {"Tus-Resumable": "1.0.0"}
    status, headers, _ = c.request("POST", "/uploadmeter/tus", b"", {**v, "Upload-Length": "100"})
    assert status == 201
    url = headers["location"]
    patch = {**v, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    assert c.request("PATCH", url, b"x" * 10, patch)[0] == 204
    assert c.request("DELETE", url, headers=v)[0] == 204
    return url.rsplit("/", 1)[1]


@pytest.mark.parametrize("cancel", [cancel_chunked, cancel_tus], ids=["chunked", "tus"])
def test_a_cancelled_resumable_upload_does_not_cancel_a_later_upload_with_its_id(
    tmp_path: Any, cancel: Callable[[ChunkClient], str]
) -> None:
    # Before the record writer, a DELETE stored the cancelled record for ttl but its flag
    # for stale_after + ttl: once the record was gone the flag cancelled the next upload.
    options = {"ttl": 1.0, "stale_after": 3.0}
    with served(str(tmp_path), inner=read_all, meter_options=options) as server:
        c = server.client()
        upload_id = cancel(c)
        assert c.progress(upload_id)["state"] == "cancelled"
        wait_until(lambda: c.progress(upload_id)["state"] == "unknown", timeout=10)
        data = b"y" * 200_000
        body, content_type = multipart_body([("file", "again.bin", data)])
        status, _, answer = c.request(
            "POST", "/upload?uploadmeter_id=" + upload_id, body, {"Content-Type": content_type}
        )
        assert (status, answer) == (200, str(len(body)).encode())
        record = c.progress(upload_id)
        assert record["state"] == "done" and record["bytes_received"] == len(body)

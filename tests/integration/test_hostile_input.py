"""Hostile input: what a client can send, and what it must never get back.

Bad ids, forged cookies, markup in names, floods of parts, lying lengths, chunked bodies
and trickles each get the right status and a short message -- never a traceback, a
broken JSON or XML document, an unbounded record, or a leaked file.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import time
import tracemalloc
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from werkzeug.test import Client as WSGIClient

from tests.support.hardening_support import RawHTTP, make_app, request_head
from tests.support.servers import Client, multipart_body, new_upload_id, serve_in_thread, wait_until
from uploadmeter import MemoryStore, UploadMeterMiddleware
from uploadmeter.core import DONE, MultipartObserver, TrackerSettings, UploadRecord, UploadTracker
from uploadmeter.core._observer import MAX_HEADER_BYTES, MAX_NAME_LENGTH
from uploadmeter.wsgi import MeteredInput

FILE = hashlib.sha256(b"seed").digest() * 4000  # 128 KB
BODY, CTYPE = multipart_body([("title", None, b"hello"), ("doc", "doc.bin", FILE)])


class RecordingStore(MemoryStore):
    """A memory store that remembers every key written."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []

    def set(self, key: str, value: str, ttl: float) -> None:
        self.written.append(key)
        super().set(key, value, ttl)

    def add(self, key: str, value: str, ttl: float) -> bool:
        self.written.append(key)
        return super().add(key, value, ttl)


class CountingApp:
    """A WSGI app that drains the body and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.calls += 1
        while environ["wsgi.input"].read(65536):
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


@pytest.fixture
def live(dirs: tuple[str, str]) -> Iterator[tuple[str, UploadMeterMiddleware]]:
    meter = make_app(*dirs, store=MemoryStore(), update_interval=0.0)
    with serve_in_thread(meter.flask_app) as url:  # type: ignore[attr-defined]
        yield url, meter


def assert_short_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    assert len(response.data) < 400 and b"Traceback" not in response.data
    body: dict[str, Any] = json.loads(response.data)
    assert body["error"]["status"] == status and body["error"]["message"]
    return body


# -- ids ------------------------------------------------------------------------------------

BAD_IDS = [
    "",
    "short",
    "a" * 7,
    "a" * 129,
    "a" * 20_000,
    "abc def123",
    "abcdefgh!",
    "../../../etc/passwd",
    "abcdefgh\x00",
    "abcdefgh\r\nX-Injected: 1",
    "ünïcödé-id",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "abcdefgh%2F",
    "upload:session:abcdefgh",
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=range(len(BAD_IDS)))
def test_malformed_ids_get_400_and_touch_nothing(bad: str) -> None:
    store, app = RecordingStore(), CountingApp()
    client = WSGIClient(UploadMeterMiddleware(app, secret_key="k", store=store))
    query = "uploadmeter_id=" + quote(bad, safe="")
    response = client.post(f"/upload?{query}", data=BODY, content_type=CTYPE)
    assert_short_error(response, 400)
    for path in ("/uploadmeter/progress", "/uploadmeter/cancel"):
        method = client.get if path.endswith("progress") else client.post
        assert_short_error(method(f"{path}?id={quote(bad, safe='')}"), 400)
    assert app.calls == 0 and store.written == []
    # The same id in the header (where the header can carry it at all).
    if bad and "\r" not in bad and "\x00" not in bad and bad.isascii():
        response = client.post(
            "/upload", data=BODY, content_type=CTYPE, headers={"X-Upload-ID": bad}
        )
        assert_short_error(response, 400)
        assert app.calls == 0 and store.written == []


def test_a_huge_query_string_is_handled() -> None:
    store, app = RecordingStore(), CountingApp()
    client = WSGIClient(UploadMeterMiddleware(app, secret_key="k", store=store))
    query = "&".join(f"uploadmeter_id={'x' * 50}{i}" for i in range(2000))
    response = client.post(f"/upload?{query}", data=BODY, content_type=CTYPE)
    # The first value counts: a valid id, so the upload is tracked and reaches the app.
    assert response.status_code == 200 and app.calls == 1
    assert_short_error(client.get(f"/uploadmeter/progress?id={'y' * 100_000}"), 400)


# -- cookies --------------------------------------------------------------------------------


def tampered(cookie: str) -> list[str]:
    name, _, value = cookie.partition("=")
    token, _, signature = value.rpartition(".")
    # The first character: all six of its bits are signature (the last one's low bits are
    # base64 padding, so changing it can leave the signature valid).
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    altered = token[:-1] + ("x" if token[-1] != "x" else "y")
    return [
        f"{name}={token}.{flipped}",  # signature altered
        f"{name}={altered}.{signature}",  # token altered
        f"{name}={token}",  # signature stripped
        f"{name}=",
        f"{name}={'z' * 8000}",
        f"{name}=a.b.c.d",
        f"{name}=%00%ff",
        f"{name}=ünï.cödé",
    ]


def test_tampered_or_foreign_cookies_see_and_cancel_nothing() -> None:
    store = MemoryStore()
    meter = UploadMeterMiddleware(CountingApp(), secret_key="server key", store=store)
    client = WSGIClient(meter)
    upload_id = new_upload_id()
    response = client.post(f"/upload?uploadmeter_id={upload_id}", data=BODY, content_type=CTYPE)
    assert response.status_code == 200
    cookie_header = response.headers["Set-Cookie"].split(";", 1)[0]
    assert client.get(f"/uploadmeter/progress?id={upload_id}").json["state"] == "done"

    foreign = UploadMeterMiddleware(CountingApp(), secret_key="another key", store=store)
    foreign_cookie = (
        WSGIClient(foreign)
        .get("/uploadmeter/progress?id=whatever1")
        .headers["Set-Cookie"]
        .split(";", 1)[0]
    )
    for cookie in [*tampered(cookie_header), foreign_cookie]:
        stranger = WSGIClient(meter, use_cookies=False)
        headers = {"Cookie": cookie}
        poll = stranger.get(f"/uploadmeter/progress?id={upload_id}", headers=headers)
        assert poll.status_code == 200 and poll.json["state"] == "unknown", cookie
        assert poll.json["fields"] == [] and poll.json["bytes_received"] == 0
        assert "Set-Cookie" in poll.headers  # a fresh session, not the forged one
        cancel = stranger.post(f"/uploadmeter/cancel?id={upload_id}", headers=headers)
        assert cancel.status_code == 404, cookie
        # A forged cookie cannot block or hijack an upload either: it gets its own session.
        other = stranger.post(
            f"/upload?uploadmeter_id={upload_id}", data=BODY, content_type=CTYPE, headers=headers
        )
        assert other.status_code == 200
    # The owner's record is untouched.
    record = client.get(f"/uploadmeter/progress?id={upload_id}").json
    assert record["state"] == "done" and record["bytes_received"] == len(BODY)


# -- markup in names ---------------------------------------------------------------------------

NASTY = [
    ('a<b>&c"d', 'a<b>&c\\"d'),  # (as werkzeug decodes it, as sent in the header)
    ("]]></field><x>", "]]></field><x>"),
    ('"},{"name":"evil', '\\"},{\\"name\\":\\"evil'),
    ("<?xml version='1.0'?><!DOCTYPE x>", "<?xml version='1.0'?><!DOCTYPE x>"),
    ("&amp;&#0;&lt;", "&amp;&#0;&lt;"),
    ("emoji 🧨 and \u2028 line sep", "emoji 🧨 and \u2028 line sep"),
    ("ctrl\x01\x0b\x1f chars", "ctrl\x01\x0b\x1f chars"),
]


def nasty_body() -> tuple[bytes, str]:
    boundary = "nAsTyBoUnDaRy"
    out = b""
    for i, (_, sent) in enumerate(NASTY):
        disposition = f'form-data; name="{sent}"'
        if i % 2:
            disposition += f'; filename="{sent}.txt"'
        out += (
            (
                f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: text/{sent[:5]}\r\n\r\n"
            ).encode()
            + b"data"
            + str(i).encode()
            + b"\r\n"
        )
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def test_markup_in_names_comes_back_escaped_in_json_and_xml() -> None:
    meter = UploadMeterMiddleware(CountingApp(), secret_key="k", store=MemoryStore())
    client = WSGIClient(meter)
    body, ctype = nasty_body()
    upload_id = new_upload_id()
    assert (
        client.post(
            f"/upload?uploadmeter_id={upload_id}", data=body, content_type=ctype
        ).status_code
        == 200
    )

    def shown(text: str) -> str:  # what the record may show: control characters replaced
        return "".join("\ufffd" if ord(c) < 32 and c not in "\t\n\r" else c for c in text)

    expected_names = [shown(decoded) for decoded, _ in NASTY]
    expected_files = [
        shown(decoded) + ".txt" if i % 2 else None for i, (decoded, _) in enumerate(NASTY)
    ]

    poll = client.get(f"/uploadmeter/progress?id={upload_id}")
    record = json.loads(poll.data)  # parses
    assert record["state"] == "done"
    assert [f["name"] for f in record["fields"]] == expected_names
    assert [f["filename"] for f in record["fields"]] == expected_files
    assert [f["bytes_received"] for f in record["fields"]] == [5] * len(NASTY)

    xml = client.get(f"/uploadmeter/progress?id={upload_id}&format=xml")
    assert xml.mimetype in ("text/xml", "application/xml")
    root = ET.fromstring(xml.data)  # parses: every name escaped, nothing invalid
    fields = root.find("fields")
    assert fields is not None
    assert [f.get("name") for f in fields] == expected_names
    assert [f.get("filename") or None for f in fields] == expected_files
    assert b"<x>" not in xml.data and b"<!DOCTYPE" not in xml.data


# -- floods ---------------------------------------------------------------------------------


def flood_body(parts: int) -> tuple[bytes, str]:
    fields = [
        (
            f"f{i}-" + ("n" * 5000 if i % 1000 == 0 else ""),
            f"{'x' * 3000}.txt" if i % 999 == 0 else None,
            b"v",
        )
        for i in range(parts)
    ]
    return multipart_body(fields, boundary="fLoOdBoUnDaRy")


@pytest.mark.parametrize("max_form_parts", [20_000, 1000], ids=["app-accepts", "app-413"])
def test_ten_thousand_tiny_parts_keep_the_record_bounded(
    dirs: tuple[str, str], max_form_parts: int
) -> None:
    store = MemoryStore()
    meter = make_app(*dirs, store=store, max_form_parts=max_form_parts)
    client = WSGIClient(meter.flask_app)  # type: ignore[attr-defined]
    body, ctype = flood_body(10_000)
    upload_id = new_upload_id()
    response = client.post(f"/upload?uploadmeter_id={upload_id}", data=body, content_type=ctype)
    poll = client.get(f"/uploadmeter/progress?id={upload_id}")
    record = poll.json
    if max_form_parts == 20_000:
        assert response.status_code == 200
        assert response.json["fields"] + len(response.json["files"]) == 10_000
        assert record["state"] == "done"
    else:
        assert response.status_code == 413
        assert record["state"] == "error" and record["error"]["status"] == 413
    assert record["field_count"] == (10_000 if max_form_parts == 20_000 else record["field_count"])
    assert len(record["fields"]) == 256  # max_tracked_fields
    assert all(len(f["name"]) <= MAX_NAME_LENGTH for f in record["fields"])
    assert all(len(f["filename"] or "") <= MAX_NAME_LENGTH for f in record["fields"])
    assert len(poll.data) < 64 * 1024, len(poll.data)
    assert ET.fromstring(client.get(f"/uploadmeter/progress?id={upload_id}&format=xml").data)


# -- lying lengths, chunked bodies, trickles (real server) -------------------------------------


def fresh_session(url: str) -> tuple[Client, str]:
    client = Client(url)
    client.progress(new_upload_id())
    return client, client.cookie_header()


def finished(client: Client, upload_id: str) -> Any:
    record = client.progress(upload_id)
    return record["state"] in ("done", "error", "cancelled") and record


def nothing_left(*directories: str) -> bool:
    gc.collect()  # see test_faults.nothing_left
    return not any(os.listdir(d) for d in directories)


def test_content_length_shorter_than_the_body(live: tuple[str, Any], dirs: tuple[str, str]) -> None:
    url, _ = live
    client, cookie = fresh_session(url)
    upload_id = new_upload_id()
    declared = len(BODY) - 100  # the closing delimiter and part of the file are cut off
    raw = RawHTTP(url)
    raw.send(
        request_head(
            f"/upload?uploadmeter_id={upload_id}",
            {"Content-Type": CTYPE, "Content-Length": str(declared)},
            cookie=cookie,
        )
    )
    raw.send(BODY)
    status, _, data = raw.response()
    assert status in (200, 400), data  # whatever the app decides; never a 500
    assert b"Traceback" not in data
    record = wait_until(lambda: finished(client, upload_id))
    assert record["content_length"] == declared
    assert record["bytes_received"] == declared  # the server read what it was told, no more
    assert sum(f["bytes_received"] for f in record["fields"]) <= declared
    assert record["fields"][-1]["state"] != "uploading"
    wait_until(lambda: nothing_left(*dirs))


def test_content_length_longer_than_the_body(live: tuple[str, Any], dirs: tuple[str, str]) -> None:
    url, _ = live
    client, cookie = fresh_session(url)
    upload_id = new_upload_id()
    declared = len(BODY) + 1000
    raw = RawHTTP(url)
    raw.send(
        request_head(
            f"/upload?uploadmeter_id={upload_id}",
            {"Content-Type": CTYPE, "Content-Length": str(declared)},
            cookie=cookie,
        )
    )
    raw.send(BODY)
    raw.end_body()  # the promised 1000 bytes never come
    status, _, data = raw.response()
    assert status == 400, data
    record = wait_until(lambda: finished(client, upload_id))
    assert record["state"] == "error"
    assert record["bytes_received"] == len(BODY)
    assert f"after {len(BODY)} of {declared} bytes" in record["error"]["message"]
    wait_until(lambda: nothing_left(*dirs))


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", " "])
def test_a_garbage_content_length_is_never_a_500(length: str) -> None:
    app = CountingApp()
    meter = UploadMeterMiddleware(app, secret_key="k", store=MemoryStore())
    environ_overrides = {"CONTENT_LENGTH": length}
    response = WSGIClient(meter).post(
        f"/upload?uploadmeter_id={new_upload_id()}",
        data=BODY,
        content_type=CTYPE,
        environ_overrides=environ_overrides,
    )
    assert response.status_code < 500


def chunked(data: bytes, size: int) -> list[bytes]:
    return [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    ]


def test_chunked_upload_reports_bytes_without_a_percentage(live: tuple[str, Any]) -> None:
    url, _ = live
    client, cookie = fresh_session(url)
    upload_id = new_upload_id()
    raw = RawHTTP(url)
    raw.send(
        request_head(
            f"/upload?uploadmeter_id={upload_id}",
            {"Content-Type": CTYPE, "Transfer-Encoding": "chunked"},
            cookie=cookie,
        )
    )
    pieces = chunked(BODY, 16 * 1024)
    # werkzeug's DechunkedInput fills the app's whole 64 KiB read before returning.
    raw.send(b"".join(pieces[:5]))
    record = wait_until(
        lambda: (r := client.progress(upload_id))["bytes_received"] >= 64 * 1024 and r
    )
    assert record["state"] == "uploading"
    assert record["content_length"] is None and record["percentage"] is None
    assert record["eta"] is None
    assert record["fields"][0]["name"] == "title"
    for piece in pieces[5:]:
        raw.send(piece)
    raw.send(b"0\r\n\r\n")
    status, _, data = raw.response()
    assert status == 200, data
    assert json.loads(data)["files"][0]["sha256"] == hashlib.sha256(FILE).hexdigest()
    final = wait_until(lambda: finished(client, upload_id))
    assert final["state"] == "done" and final["bytes_received"] == len(BODY)
    assert final["content_length"] is None
    assert [f["bytes_received"] for f in final["fields"]] == [5, len(FILE)]


def test_a_trickled_upload_is_counted_exactly(live: tuple[str, Any]) -> None:
    url, _ = live
    client, cookie = fresh_session(url)
    upload_id = new_upload_id()
    raw = RawHTTP(url)
    raw.send(
        request_head(
            f"/upload?uploadmeter_id={upload_id}",
            {"Content-Type": CTYPE, "Content-Length": str(len(BODY))},
            cookie=cookie,
        )
    )
    # Headers and every delimiter arrive a few bytes at a time.
    head = BODY.index(b"\r\n\r\n", BODY.index(b'filename="doc.bin"')) + 8
    tail = len(BODY) - 100
    for i in range(0, head, 3):
        raw.send(BODY[i : min(i + 3, head)])
    raw.send(BODY[head:tail])
    for i in range(tail, len(BODY), 2):
        raw.send(BODY[i : i + 2])
    status, _, data = raw.response()
    assert status == 200, data
    final = wait_until(lambda: finished(client, upload_id))
    assert final["state"] == "done"
    assert [f["bytes_received"] for f in final["fields"]] == [5, len(FILE)]


class OneByteAtATime(io.RawIOBase):
    """A slowloris as the server's input stream sees it: one byte per read."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos >= len(self._data) or not len(buffer):
            return 0
        buffer[0] = self._data[self._pos]
        self._pos += 1
        return 1


def trickle_peak(body: bytes, boundary: bytes) -> tuple[int, MultipartObserver]:
    """Peak memory (bytes) allocated while an app reads ``body`` one byte per read."""
    observer = MultipartObserver(boundary)
    tracker = UploadTracker(
        MemoryStore(), "s", UploadRecord(id="trickle01", content_length=len(body)),
        TrackerSettings(), observer,
    )  # fmt: skip
    stream = MeteredInput(OneByteAtATime(body), tracker, content_length=len(body))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        while stream.read(65536):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tracker.finish(DONE)
    return peak, observer


def test_slowloris_headers_stop_the_observer_at_the_cap_with_bounded_memory() -> None:
    # A part whose header block never ends, one byte per read: observing stops at the
    # 16 KiB cap, and memory does not grow with what keeps arriving.
    head = b'--B0uNd\r\nContent-Disposition: form-data; name="f"\r\nX-Pad: '
    peaks = []
    for size in (50_000, 150_000):
        peak, observer = trickle_peak(head + b"a" * size, b"B0uNd")
        assert observer.stopped is not None and "16 KiB" in observer.stopped
        peaks.append(peak)
    assert peaks[0] < 8 * MAX_HEADER_BYTES, peaks
    assert peaks[1] < peaks[0] + 16 * 1024, peaks  # flat: 3x the bytes, same peak


def test_slowloris_body_without_delimiters_keeps_memory_flat() -> None:
    peaks = []
    for repeat in (3000, 9000):
        data = b"\r\n--B0uNd-ish " * repeat  # near misses all the way
        body, _ = multipart_body([("f", "f.bin", data)], boundary="B0uNd")
        peak, observer = trickle_peak(body, b"B0uNd")
        assert observer.stopped is None
        assert [f.bytes_received for f in observer.fields] == [len(data)]
        peaks.append(peak)
    assert peaks[0] < 128 * 1024, peaks
    assert peaks[1] < peaks[0] + 16 * 1024, peaks


# -- slow uploads ---------------------------------------------------------------------------


def test_a_slow_upload_costs_a_bounded_number_of_writes_and_still_sees_a_cancel() -> None:
    """1 GiB at 10 Mbit/s (14 minutes), one read every 0.2 s, on a simulated clock."""
    store = RecordingStore()
    size = 1 << 30
    tracker = UploadTracker(
        store, "s", UploadRecord(id="slowupload1", content_length=size), TrackerSettings()
    )
    start = now = time.monotonic()
    speed = 10e6 / 8
    received = 0
    while received < size:
        now += 0.2
        received = min(size, int(speed * (now - start)))
        assert not tracker.progress(received, now)
    writes = store.written.count("upload:s:slowupload1")
    assert writes <= 150, writes  # was one every 2 s: 412
    # The cancel flag is still read within a heartbeat (2 s), between writes.
    store.set("cancel:s:slowupload1", "1", 60)
    seen_at = None
    for step in range(1, 20):
        if tracker.progress(size, now + step * 0.2):
            seen_at = step * 0.2
            break
    assert seen_at is not None and seen_at <= 2.2, seen_at

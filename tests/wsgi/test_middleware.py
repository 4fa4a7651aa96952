"""The middleware through its public WSGI interface, in process.

End-to-end behaviour over real HTTP lives in test_e2e.py; these tests pin down the
contract: what passes through untouched, what the app reads, what the endpoints answer.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.test import Client, EnvironBuilder

from tests.support.servers import multipart_body
from uploadmeter import MemoryStore, UploadMeterMiddleware, current_upload

Environ = dict[str, Any]

FILE = bytes(range(256)) * 2000  # 512 KB, every byte value
BODY, CTYPE = multipart_body([("title", None, b"Q3 report"), ("doc", "r.bin", FILE)])


def meter(app: Any, **options: Any) -> UploadMeterMiddleware:
    options.setdefault("store", MemoryStore())
    return UploadMeterMiddleware(app, secret_key="test secret", **options)


def upload_environ(
    query: str = "uploadmeter_id=abcdef123456", body: bytes = BODY, **kw: Any
) -> Environ:
    builder = EnvironBuilder(
        path="/upload",
        method="POST",
        query_string=query,
        input_stream=io.BytesIO(body),
        content_type=kw.pop("content_type", CTYPE),
        content_length=len(body),
        **kw,
    )
    return builder.get_environ()


def call(app: Any, environ: Environ) -> tuple[str, list[tuple[str, str]], bytes]:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    iterable = app(environ, start_response)
    try:
        data = b"".join(iterable)
    finally:
        close = getattr(iterable, "close", None)
        if close:
            close()
    return captured["status"], captured["headers"], data


def poll(app: Any, headers: list[tuple[str, str]], upload_id: str = "abcdef123456") -> Any:
    """Poll the progress endpoint with the session cookie an upload response set."""
    cookie = dict(headers)["Set-Cookie"].split(";", 1)[0]
    environ = EnvironBuilder(
        path="/uploadmeter/progress", query_string=f"id={upload_id}", headers={"Cookie": cookie}
    ).get_environ()
    return json.loads(call(app, environ)[2])


def reader(pattern: Callable[[Any], bytes]) -> Callable[..., Iterable[bytes]]:
    """A bare WSGI app that reads its body with ``pattern`` and echoes it."""

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        data = pattern(environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [data]

    return app


def read_all(size: int) -> Callable[[Any], bytes]:
    def pattern(stream: Any) -> bytes:
        out = b""
        while chunk := stream.read(size):
            out += chunk
        return out

    return pattern


def readinto_all(stream: Any) -> bytes:
    out = bytearray()
    buf = bytearray(4097)
    while n := stream.readinto(buf):
        out += buf[:n]
    return bytes(out)


def mixed(stream: Any) -> bytes:
    out = stream.readline() + stream.read(1) + stream.readline(5)
    out += b"".join(stream.readlines(100))  # the rest, line by line
    return out + stream.read()


@pytest.mark.parametrize(
    "pattern",
    [
        read_all(1),
        read_all(7),
        read_all(4096),
        read_all(65536),
        lambda s: s.read(),
        lambda s: s.read(None),
        readinto_all,
        lambda s: b"".join(iter(s)),
        mixed,
    ],
    ids=[
        "read1",
        "read7",
        "read4096",
        "read64k",
        "read()",
        "read(None)",
        "readinto",
        "iter",
        "mixed",
    ],
)
def test_the_app_reads_exactly_the_original_bytes(pattern: Callable[[Any], bytes]) -> None:
    app = meter(reader(pattern))
    status, headers, echoed = call(app, upload_environ())
    assert status == "200 OK"
    assert echoed == BODY
    record = poll(app, headers)
    assert record["state"] == "done"
    assert [f["bytes_received"] for f in record["fields"]] == [9, len(FILE)]


def test_flask_request_files_keeps_working_byte_for_byte() -> None:
    flask_app = Flask(__name__)

    @flask_app.post("/upload")
    def upload() -> Any:
        handle = current_upload(request.environ)
        assert handle is not None
        handle.set_result(saved=request.files["doc"].filename)
        return {"title": request.form["title"], "doc": request.files["doc"].read().hex()}

    flask_app.wsgi_app = meter(flask_app.wsgi_app)  # type: ignore[method-assign]
    client = flask_app.test_client()
    response = client.post("/upload?uploadmeter_id=abcdef123456", data=BODY, content_type=CTYPE)
    assert response.json == {"title": "Q3 report", "doc": FILE.hex()}
    record = client.get("/uploadmeter/progress?id=abcdef123456").json
    assert record["state"] == "done" and record["percentage"] == 100
    assert record["result"] == {"saved": "r.bin"}
    assert record["fields"] == [
        {
            "name": "title",
            "filename": None,
            "content_type": None,
            "bytes_received": 9,
            "state": "done",
        },
        {
            "name": "doc",
            "filename": "r.bin",
            "content_type": "application/octet-stream",
            "bytes_received": len(FILE),
            "state": "done",
        },
    ]


def test_non_multipart_requests_pass_through_untouched() -> None:
    seen: dict[str, Any] = {}

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        seen["environ"], seen["input"] = environ, environ["wsgi.input"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    wrapped = meter(app)
    environ = EnvironBuilder(method="POST", json={"a": 1}).get_environ()
    original_input = environ["wsgi.input"]
    status, headers, _ = call(wrapped, environ)
    assert status == "200 OK"
    assert seen["environ"] is environ and seen["input"] is original_input
    assert "uploadmeter.upload" not in environ
    assert not [h for h in headers if h[0] == "Set-Cookie"]  # not an HTML page


def test_untracked_multipart_passes_through_unwrapped() -> None:
    seen: dict[str, Any] = {}

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        seen["input"] = environ["wsgi.input"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["wsgi.input"].read()]

    environ = upload_environ(query="")
    original_input = environ["wsgi.input"]
    _, _, echoed = call(meter(app), environ)
    assert seen["input"] is original_input and echoed == BODY


def test_html_pages_get_the_session_cookie_once() -> None:
    def page(environ: Environ, start_response: Any) -> Iterable[bytes]:
        kind = "text/html" if environ["PATH_INFO"] == "/" else "application/json"
        start_response("200 OK", [("Content-Type", kind + "; charset=utf-8")])
        return [b"<form></form>"]

    client = Client(meter(page))  # on by default: a first visit gets its session
    first = client.get("/")
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith("uploadmeter_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "Set-Cookie" not in client.get("/").headers
    assert "Set-Cookie" not in Client(meter(page)).get("/api").headers  # not HTML
    assert "Set-Cookie" not in Client(meter(page)).post("/").headers  # not a GET
    https = Client(meter(page)).get("/", base_url="https://localhost")
    assert "Secure" in https.headers["Set-Cookie"]
    # A cookie with a bad signature (an old secret, a forgery) is replaced.
    forged = Client(meter(page))
    forged.set_cookie("uploadmeter_session", "c.forged.signature")
    assert forged.get("/").headers["Set-Cookie"].startswith("uploadmeter_session=")
    assert "Set-Cookie" not in Client(meter(page, set_cookie_on_pages=False)).get("/").headers


def test_session_endpoint_sets_the_cookie_when_absent() -> None:
    calls: list[str] = []

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    client = Client(meter(app, set_cookie_on_pages=False))
    first = client.get("/uploadmeter/session")
    assert first.status_code == 204 and first.headers["Cache-Control"] == "no-store"
    assert first.headers["Set-Cookie"].startswith("uploadmeter_session=")
    again = client.get("/uploadmeter/session")
    assert again.status_code == 204 and "Set-Cookie" not in again.headers
    assert client.post("/uploadmeter/session").status_code == 405
    assert calls == []  # never reaches the app


@pytest.mark.parametrize(
    "query",
    [
        "uploadmeter_id=short",
        "uploadmeter_id=" + "a" * 129,
        "uploadmeter_id=has%20space1",
        "uploadmeter_id=%3Cscript%3Ealert",
        "uploadmeter_id=",
        "uploadmeter_id=../../etc/passwd",
    ],
)
def test_bad_ids_get_400_with_a_clear_message(query: str) -> None:
    app_called = []
    wrapped = meter(lambda e, s: app_called.append(1) or [])
    status, _, data = call(wrapped, upload_environ(query, headers={"Accept": "application/json"}))
    assert status.startswith("400")
    assert json.loads(data)["error"]["message"].startswith("The upload id must be")
    assert not app_called


def test_bad_ids_get_html_for_browsers() -> None:
    status, headers, data = call(
        meter(lambda e, s: []), upload_environ("uploadmeter_id=x", headers={"Accept": "text/html"})
    )
    assert status.startswith("400") and dict(headers)["Content-Type"].startswith("text/html")
    assert b"<h1>400 Bad Request</h1>" in data


def test_header_ids_are_accepted() -> None:
    app = meter(reader(lambda s: s.read()))
    for header in ("X-Upload-ID", "X-Progress-ID"):
        upload_id = f"id-from-{header}"
        _, headers, _ = call(app, upload_environ(query="", headers={header: upload_id}))
        assert poll(app, headers, upload_id)["state"] == "done"


def test_too_large_is_413_before_any_body_is_read() -> None:
    class Untouchable(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise AssertionError("the body must not be read")

    app_called = []
    wrapped = meter(lambda e, s: app_called.append(1) or [], max_content_length=1000)
    environ = upload_environ(headers={"Accept": "application/json"})
    environ["wsgi.input"] = Untouchable()
    status, headers, data = call(wrapped, environ)
    assert status.startswith("413") and not app_called
    assert json.loads(data)["error"]["status"] == 413
    record = poll(wrapped, headers)
    assert record["state"] == "error" and record["error"]["status"] == 413


def test_too_large_without_a_length_stops_at_the_limit() -> None:
    # A chunked body: no Content-Length, so the limit is enforced while reading.
    flask_app = Flask(__name__)
    flask_app.post("/upload")(lambda: {"n": len(request.files["doc"].read())})
    flask_app.wsgi_app = meter(flask_app.wsgi_app, max_content_length=100_000)  # type: ignore[method-assign]
    environ = upload_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    status, _, _ = call(flask_app, environ)
    assert status.startswith("413")


def test_the_progress_endpoint_answers_json_and_xml_without_reaching_the_app() -> None:
    app_called = []
    client = Client(meter(lambda e, s: app_called.append(1) or []))
    unknown = client.get("/uploadmeter/progress?id=notseenyet")
    assert unknown.status_code == 200 and unknown.headers["Cache-Control"] == "no-store"
    assert unknown.json["state"] == "unknown" and unknown.json["percentage"] is None
    xml = client.get("/uploadmeter/progress?id=notseenyet&format=xml")
    assert xml.mimetype == "text/xml" and xml.headers["Cache-Control"] == "no-store"
    root = ET.fromstring(xml.data)
    assert root.tag == "progress" and root.find("clientId") is None  # JSF: not seen yet
    by_accept = client.get("/uploadmeter/progress?id=notseenyet", headers={"Accept": "text/xml"})
    assert by_accept.mimetype == "text/xml"
    assert client.get("/uploadmeter/progress?id=bad").status_code == 400
    assert client.post("/uploadmeter/progress?id=notseenyet").status_code == 405
    assert client.get("/uploadmeter/cancel?id=notseenyet").status_code == 405
    assert client.get("/uploadmeter/nothing-here").status_code == 404
    assert not app_called


def test_xml_carries_the_same_data_as_json() -> None:
    client = Client(meter(reader(lambda s: s.read())))
    client.get("/uploadmeter/progress?id=abcdef123456")  # get the session cookie
    response = client.post("/upload?uploadmeter_id=abcdef123456", data=BODY, content_type=CTYPE)
    assert response.status_code == 200
    data = client.get("/uploadmeter/progress?id=abcdef123456").json
    root = ET.fromstring(client.get("/uploadmeter/progress?id=abcdef123456&format=xml").data)
    assert root.findtext("percentage") == "100" and root.findtext("clientId") == "abcdef123456"
    assert root.findtext("state") == "done"
    assert int(root.findtext("bytesReceived") or 0) == data["bytes_received"] == len(BODY)
    fields = root.find("fields")
    assert fields is not None
    assert [f.attrib["name"] for f in fields] == ["title", "doc"]
    assert [int(f.attrib["bytesReceived"]) for f in fields] == [9, len(FILE)]


def test_progress_is_private_to_the_session() -> None:
    wrapped = meter(reader(lambda s: s.read()))
    owner, stranger = Client(wrapped), Client(wrapped)
    owner.get("/uploadmeter/progress?id=abcdef123456")
    owner.post("/upload?uploadmeter_id=abcdef123456", data=BODY, content_type=CTYPE)
    assert owner.get("/uploadmeter/progress?id=abcdef123456").json["state"] == "done"
    assert stranger.get("/uploadmeter/progress?id=abcdef123456").json["state"] == "unknown"
    assert stranger.post("/uploadmeter/cancel?id=abcdef123456").status_code == 404
    # A forged cookie is as good as none.
    forged = Client(wrapped)
    forged.set_cookie("uploadmeter_session", "c.forged.signature")
    assert forged.get("/uploadmeter/progress?id=abcdef123456").json["state"] == "unknown"
    # Cancelling a finished upload changes nothing.
    late = owner.post("/uploadmeter/cancel?id=abcdef123456")
    assert late.status_code == 409 and late.json["state"] == "done"


def test_an_app_session_hook_replaces_the_cookie() -> None:
    wrapped = meter(
        reader(lambda s: s.read()), session_id=lambda environ: environ.get("HTTP_X_USER")
    )
    alice = Client(wrapped)
    alice.post(
        "/upload?uploadmeter_id=abcdef123456",
        data=BODY,
        content_type=CTYPE,
        headers={"X-User": "alice"},
    )
    same_user_elsewhere = Client(wrapped)  # another browser, same app session
    assert (
        same_user_elsewhere.get(
            "/uploadmeter/progress?id=abcdef123456", headers={"X-User": "alice"}
        ).json["state"]
        == "done"
    )
    assert (
        Client(wrapped)
        .get("/uploadmeter/progress?id=abcdef123456", headers={"X-User": "bob"})
        .json["state"]
        == "unknown"
    )


def outcome(app: Any, body: bytes = BODY) -> dict[str, Any]:
    client = Client(meter(app))
    client.get("/uploadmeter/progress?id=abcdef123456")
    client.post("/upload?uploadmeter_id=abcdef123456", data=body, content_type=CTYPE)
    return client.get("/uploadmeter/progress?id=abcdef123456").json  # type: ignore[no-any-return]


def test_app_errors_end_the_upload_in_error() -> None:
    def crash(environ: Environ, start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"].read(100)
        raise RuntimeError("boom")

    client = Client(meter(crash))
    client.get("/uploadmeter/progress?id=abcdef123456")
    with pytest.raises(RuntimeError):
        client.post("/upload?uploadmeter_id=abcdef123456", data=BODY, content_type=CTYPE)
    record = client.get("/uploadmeter/progress?id=abcdef123456").json
    assert record["state"] == "error" and record["error"]["status"] == 500


def test_an_app_rejection_is_an_error_with_its_status() -> None:
    def reject(environ: Environ, start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"].read()
        start_response("422 Unprocessable Entity", [("Content-Type", "text/plain")])
        return [b"no"]

    record = outcome(reject)
    assert record["state"] == "error" and record["error"]["status"] == 422


def test_the_app_can_fail_an_upload_with_its_own_message() -> None:
    flask_app = Flask(__name__)

    @flask_app.post("/upload")
    def upload() -> Any:
        request.files["doc"].read()
        current_upload(request.environ).fail("Only PDF files, please.", 415)  # type: ignore[union-attr]
        return "ok"

    record = outcome(flask_app)
    assert record["error"] == {"status": 415, "message": "Only PDF files, please."}


def test_answering_without_reading_the_body_is_not_done() -> None:
    def lazy(environ: Environ, start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"].read(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    record = outcome(lazy)
    assert (
        record["state"] == "error"
        and "before reading the whole upload" in record["error"]["message"]
    )


def test_malformed_multipart_gets_the_apps_400_never_a_500() -> None:
    flask_app = Flask(__name__)
    flask_app.post("/upload")(lambda: {"files": len(request.files), "form": len(request.form)})
    flask_app.wsgi_app = meter(flask_app.wsgi_app)  # type: ignore[method-assign]
    client = flask_app.test_client()
    for body in [
        b"--uMbOuNdArY7x2\r\ngarbage without end",
        b"\x00\xff" * 500,
        b"--uMbOuNdArY7x2\r\nContent-Disposition: form-data\r\n\r\nx\r\n--uMbOuNdArY7x2--",
    ]:
        response = client.post("/upload?uploadmeter_id=abcdef123456", data=body, content_type=CTYPE)
        assert response.status_code in (200, 400), response.status_code
        state = client.get("/uploadmeter/progress?id=abcdef123456").json["state"]
        assert state in ("done", "error")


def test_a_bare_lf_body_still_reaches_the_app_with_whole_request_progress() -> None:
    flask_app = Flask(__name__)
    flask_app.post("/upload")(lambda: {"doc": len(request.files["doc"].read())})
    flask_app.wsgi_app = meter(flask_app.wsgi_app)  # type: ignore[method-assign]
    client = flask_app.test_client()
    body = (
        b'--XyZ\nContent-Disposition: form-data; name="doc"; filename="a"\n\n'
        + b"q" * 5000
        + b"\n--XyZ--\n"
    )
    response = client.post(
        "/upload?uploadmeter_id=abcdef123456",
        data=body,
        content_type="multipart/form-data; boundary=XyZ",
    )
    assert response.json == {"doc": 5000}
    record = client.get("/uploadmeter/progress?id=abcdef123456").json
    assert record["state"] == "done" and record["bytes_received"] == len(body)
    assert record["fields"] == []


def test_a_secret_key_is_required() -> None:
    with pytest.raises(ValueError, match="secret_key"):
        UploadMeterMiddleware(lambda e, s: [], secret_key="")


class CountingStore(MemoryStore):
    """A MemoryStore that counts progress-record writes."""

    def __init__(self) -> None:
        super().__init__()
        self.record_writes = 0

    def set(self, key: str, value: str, ttl: float) -> None:
        self.record_writes += key.startswith("upload:")
        super().set(key, value, ttl)

    def add(self, key: str, value: str, ttl: float) -> bool:
        self.record_writes += key.startswith("upload:")
        return super().add(key, value, ttl)


def big_upload(store: CountingStore, **options: Any) -> dict[str, Any]:
    payload = b"\x00" * (48 * 1024 * 1024)
    body, ctype = multipart_body([("doc", "big.bin", payload)])

    def slow_reader(environ: Environ, start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        while stream.read(64 * 1024):
            pass
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = meter(slow_reader, store=store, **options)
    _, headers, _ = call(app, upload_environ(body=body, content_type=ctype))
    return poll(app, headers)  # type: ignore[no-any-return]


def test_store_writes_are_throttled_by_progress_step() -> None:
    # No time throttle at all: the 1 % step alone bounds the writes.
    store = CountingStore()
    record = big_upload(store, update_interval=0)
    assert record["state"] == "done" and record["fields"][0]["bytes_received"] == 48 * 1024 * 1024
    # the claim + at most one per 1 % + the final write
    assert 50 <= store.record_writes <= 103, store.record_writes


def test_store_writes_are_throttled_by_time() -> None:
    store = CountingStore()
    record = big_upload(store, update_interval=10)
    assert record["state"] == "done"
    # An in-process read of 48 MiB takes well under 10 s, and its first read is under 1 %:
    # the claim (``starting``), the last byte and the final state, nothing else.
    assert store.record_writes == 3, store.record_writes


@pytest.mark.parametrize(
    ("accept", "progress", "error"),
    [
        (None, "application/json", "application/json"),
        ("", "application/json", "application/json"),
        ("*/*", "application/json", "application/json"),
        ("application/json", "application/json", "application/json"),
        ("text/html", "application/json", "text/html"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "application/json", "text/html"),
        ("text/xml", "text/xml", "application/json"),
        ("application/xml", "text/xml", "application/json"),
        ("application/xml;q=0.5, application/json", "application/json", "application/json"),
        ("application/json;q=0.5, text/xml", "text/xml", "application/json"),
        ("text/*", "text/xml", "text/html"),
        ("image/png", "application/json", "application/json"),
    ],
)
def test_accept_negotiation_table(accept: str | None, progress: str, error: str) -> None:
    """One negotiation for every answer: progress in JSON or XML, errors in JSON or HTML."""
    client = Client(meter(lambda e, s: []))
    headers = {} if accept is None else {"Accept": accept}
    assert client.get("/uploadmeter/progress?id=notseenyet", headers=headers).mimetype == progress
    assert client.get("/uploadmeter/progress?id=bad", headers=headers).mimetype == error

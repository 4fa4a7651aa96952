"""The Flask extension (uploadmeter.flask) and the demo app built on it."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from flask import Flask, render_template_string, request  # noqa: E402

from tests.support.chunked_support import ChunkClient, ChunkedFile  # noqa: E402
from tests.support.servers import (  # noqa: E402
    ROOT,
    Client,
    RawUpload,
    multipart_body,
    new_upload_id,
    serve_in_thread,
    wait_until,
)
from uploadmeter import MemoryStore, SQLiteStore, UploadMeterMiddleware  # noqa: E402
from uploadmeter.flask import ConfigurationError, UploadMeter, current_upload  # noqa: E402
from uploadmeter.resumable import ChunkUploads, FileInfo, FileStore, TusUploads  # noqa: E402
from uploadmeter.ui import render_file_upload  # noqa: E402
from uploadmeter.wsgi._requests import session_for, session_of  # noqa: E402


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update({"SECRET_KEY": "test secret", "UPLOADMETER_STORE": "memory://", **config})
    return app


# -- setup and configuration ---------------------------------------------------------------


def test_constructor_wraps_wsgi_app() -> None:
    app = make_app()
    meter = UploadMeter(app)
    assert isinstance(app.wsgi_app, UploadMeterMiddleware)
    assert meter.middleware is app.wsgi_app  # outside an app context: the app given
    assert app.extensions["uploadmeter"].middleware is app.wsgi_app
    assert isinstance(meter.store, MemoryStore)


def test_pages_give_a_first_visit_its_session_by_default() -> None:
    """So a page's first upload requests, sent in parallel, share one session."""
    app = make_app()
    UploadMeter(app)
    app.add_url_rule("/", "page", lambda: "<!doctype html><p>page")
    app.add_url_rule("/api", "api", lambda: {"ok": True})
    client = app.test_client()
    assert client.get("/api").headers.get("Set-Cookie") is None  # JSON: not a page
    cookie = client.get("/").headers["Set-Cookie"]
    assert cookie.startswith("uploadmeter_session=") and "HttpOnly" in cookie
    assert client.get("/").headers.get("Set-Cookie") is None  # it has one now


def test_init_app_factory_pattern_serves_several_apps() -> None:
    meter = UploadMeter()
    first, second = make_app(UPLOADMETER_PREFIX="/one"), make_app(UPLOADMETER_PREFIX="/two")
    meter.init_app(first)
    meter.init_app(second)
    with first.app_context():
        assert meter.middleware.prefix == "/one"
    with second.app_context():
        assert meter.middleware.prefix == "/two"
    with pytest.raises(RuntimeError, match="app context"):
        meter.middleware  # noqa: B018 - no app given, none current


def test_config_reaches_the_middleware(tmp_path: Any) -> None:
    calls: list[dict[str, Any]] = []

    def hook(environ: dict[str, Any]) -> str | None:
        calls.append(environ)
        return "user-1"

    app = make_app(
        UPLOADMETER_STORE=f"sqlite://{tmp_path / 'um.sqlite3'}",
        UPLOADMETER_PREFIX="progress-api/",
        UPLOADMETER_MAX_CONTENT_LENGTH=1234,
        UPLOADMETER_TTL=60,
        UPLOADMETER_UPDATE_INTERVAL=0.5,
        UPLOADMETER_STALE_AFTER=30,
        UPLOADMETER_MAX_TRACKED_FIELDS=8,
        UPLOADMETER_SESSION_ID=hook,
        UPLOADMETER_COOKIE_NAME="um",
        UPLOADMETER_COOKIE_PATH="/app",
        UPLOADMETER_COOKIE_SAMESITE="Strict",
        UPLOADMETER_COOKIE_SECURE=True,
        UPLOADMETER_SET_COOKIE_ON_PAGES=False,
    )
    middleware = UploadMeter(app).middleware
    assert isinstance(middleware.store, SQLiteStore)
    assert middleware.prefix == "/progress-api"
    assert middleware.max_content_length == 1234
    assert middleware.settings.ttl == 60
    assert middleware.settings.update_interval == 0.5
    assert middleware.settings.stale_after == 30
    assert middleware.max_tracked_fields == 8
    cookie = middleware.sessions.settings
    assert (cookie.name, cookie.path, cookie.samesite, cookie.secure) == (
        "um",
        "/app",
        "Strict",
        True,
    )
    assert middleware.set_cookie_on_pages is False
    assert session_of(middleware.context, {}) == "app.user-1"
    assert calls


def test_max_content_length_defaults_to_flasks_own() -> None:
    app = make_app(MAX_CONTENT_LENGTH=10_000)
    assert UploadMeter(app).middleware.max_content_length == 10_000
    app = make_app(MAX_CONTENT_LENGTH=10_000, UPLOADMETER_MAX_CONTENT_LENGTH=500)
    assert UploadMeter(app).middleware.max_content_length == 500
    assert UploadMeter(make_app()).middleware.max_content_length is None


def test_secret_key_falls_back_to_the_apps_and_must_exist() -> None:
    app = make_app(SECRET_KEY=None, UPLOADMETER_SECRET_KEY="own key")
    UploadMeter(app)  # its own key is enough
    app = Flask(__name__)
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        UploadMeter(app)
    assert app.wsgi_app.__class__ is not UploadMeterMiddleware
    assert "uploadmeter" not in app.extensions


def test_cookies_signed_with_a_fallback_key_stay_valid() -> None:
    old = UploadMeter(make_app(SECRET_KEY="old key")).middleware
    _, set_cookie = session_for(old.context, {})
    assert set_cookie is not None
    cookie = set_cookie.split(";", 1)[0]
    rotated = UploadMeter(make_app(SECRET_KEY="new key", SECRET_KEY_FALLBACKS=["old key"]))
    assert rotated.middleware.sessions.find(cookie) is not None
    fresh = UploadMeter(make_app(SECRET_KEY="new key")).middleware
    assert fresh.sessions.find(cookie) is None


def test_resumable_endpoints_take_the_extension_as_their_meter(tmp_path: Any) -> None:
    """``ChunkUploads(meter, files)`` works with the Flask extension as with the middleware
    (both hand over their MeterContext); anything else is refused up front."""
    app = make_app()
    meter = UploadMeter(app)
    completed: list[tuple[str, str]] = []

    def on_complete(info: FileInfo) -> dict[str, str]:
        completed.append((info.filename, info.sha256))
        return {"saved": info.filename}

    files = FileStore(str(tmp_path / "files"))
    meter.middleware.mount("/chunks", ChunkUploads(meter, files, on_complete=on_complete))
    meter.middleware.mount("/tus", TusUploads(meter, files))
    f = ChunkedFile.random(5000, 2048)
    with serve_in_thread(app) as url:
        client = ChunkClient(url)
        client.start()
        client.upload(f)
        record = client.progress(f.identifier)
        status, headers, _ = client.request(
            "POST", "/uploadmeter/tus/", b"", {"Tus-Resumable": "1.0.0", "Upload-Length": "3"}
        )
    assert completed == [("data.bin", f.sha256)]
    assert record["state"] == "done" and record["result"]["saved"] == "data.bin"
    assert status == 201 and headers["location"]
    with pytest.raises(TypeError, match="MeterContext"):
        ChunkUploads(app, files)  # type: ignore[arg-type]


def test_second_init_is_refused() -> None:
    app = make_app()
    meter = UploadMeter(app)
    with pytest.raises(ConfigurationError, match="already"):
        meter.init_app(app)


# -- templates ------------------------------------------------------------------------------

CALL = """{% import "uploadmeter/macros.html" as uploadmeter -%}
{% call uploadmeter.file_upload("doc", multiple=True, accept=".pdf,.zip",
        upload_icon="/static/upload.png", style_class="progressBarDiv",
        progress_bar_style_class="progressBar", cell_style_class="progressBarCell",
        active_style_class="progressBarActiveCell") %}<p>File uploaded.</p>{% endcall %}"""


def test_macro_renders_the_same_markup_as_the_plain_renderer() -> None:
    app = make_app(UPLOADMETER_MAX_CONTENT_LENGTH=999)
    UploadMeter(app)
    with app.test_request_context("/"):
        html = render_template_string(CALL)
        bare = render_template_string(
            '{% import "uploadmeter/macros.html" as um %}{{ um.file_upload("x") }}'
        )
    assert html == render_file_upload(
        "doc",
        "<p>File uploaded.</p>",
        max_content_length=999,
        multiple=True,
        accept=".pdf,.zip",
        upload_icon="/static/upload.png",
        style_class="progressBarDiv",
        progress_bar_style_class="progressBar",
        cell_style_class="progressBarCell",
        active_style_class="progressBarActiveCell",
    )
    assert bare == render_file_upload("x", max_content_length=999)
    assert html.count('<span class="uploadmeter-cell passive progressBarCell"></span>') == 100


def test_macro_follows_config_and_mount_point() -> None:
    app = make_app(
        UPLOADMETER_PREFIX="/meter", UPLOADMETER_POLL_INTERVAL=0.25, UPLOADMETER_FIRST_POLL=0.1
    )
    UploadMeter(app)
    with app.test_request_context("/", base_url="http://example.test/mounted"):
        html = render_template_string(
            '{% import "uploadmeter/macros.html" as um %}{{ um.file_upload("doc") }}'
        )
    assert 'data-endpoint="/mounted/meter"' in html
    assert 'data-poll-interval="250"' in html
    assert 'data-first-poll="100"' in html
    assert 'src="/mounted/meter/static/uploadmeter.js?v=' in html


def test_app_templates_may_override_the_macros(tmp_path: Any) -> None:
    (tmp_path / "uploadmeter").mkdir()
    (tmp_path / "uploadmeter" / "macros.html").write_text(
        "{% macro file_upload(id) %}mine{% endmacro %}"
    )
    app = Flask(__name__, template_folder=str(tmp_path))
    app.config.update(SECRET_KEY="k", UPLOADMETER_STORE="memory://")
    UploadMeter(app)
    with app.test_request_context("/"):
        out = render_template_string(
            '{% import "uploadmeter/macros.html" as um %}{{ um.file_upload("doc") }}'
        )
    assert out == "mine"


def test_script_and_stylesheet_are_served() -> None:
    app = make_app()
    UploadMeter(app)
    client = app.test_client()
    js = client.get("/uploadmeter/static/uploadmeter.js")
    assert js.status_code == 200
    assert "javascript" in js.content_type
    css = client.get("/uploadmeter/static/uploadmeter.css")
    assert css.status_code == 200
    assert css.content_type.startswith("text/css")
    assert client.get("/uploadmeter/static/nope.js").status_code == 404


# -- current_upload() -----------------------------------------------------------------------


def upload_app() -> tuple[Flask, list[Any]]:
    seen: list[Any] = []
    app = make_app()
    UploadMeter(app)

    @app.post("/upload")
    def upload() -> Any:
        handle = current_upload()
        seen.append(handle)
        f = request.files.get("doc")
        if f is None or not f.filename:
            if handle is not None:
                handle.fail("Choose a file first.", status=422)
            return "no file", 200  # the failure is reported however the view answers
        data = f.read()
        if handle is not None:
            handle.set_result(filename=f.filename, sha256=hashlib.sha256(data).hexdigest())
        return "ok"

    return app, seen


def test_current_upload_reports_the_result_to_the_widget() -> None:
    app, seen = upload_app()
    data = os.urandom(300_000)
    with serve_in_thread(app) as url:
        client = Client(url)
        client.request("GET", "/uploadmeter/progress?id=warmup00")  # gets the session cookie
        uid = new_upload_id()
        body, ctype = multipart_body([("doc", "a.bin", data)])
        up = RawUpload(client, f"/upload?uploadmeter_id={uid}", body, ctype)
        up.send(len(body) // 2)
        wait_until(lambda: client.progress(uid)["bytes_received"] > 0)
        up.send_rest()
        assert up.finish()[0] == 200
        record = client.progress(uid)
    assert seen[0] is not None and seen[0].id == uid
    assert record["state"] == "done"
    assert record["result"] == {"filename": "a.bin", "sha256": hashlib.sha256(data).hexdigest()}


def test_current_upload_fail_shows_the_message() -> None:
    app, _ = upload_app()
    with serve_in_thread(app) as url:
        client = Client(url)
        uid = new_upload_id()
        body, ctype = multipart_body([("doc", "", b"")])
        up = RawUpload(client, f"/upload?uploadmeter_id={uid}", body, ctype)
        up.send_rest()
        assert up.finish()[0] == 200
        record = client.progress(uid)
    assert record["state"] == "error"
    assert record["error"] == {"status": 422, "message": "Choose a file first."}


def test_current_upload_is_none_when_untracked() -> None:
    app, seen = upload_app()
    body, ctype = multipart_body([("doc", "a.bin", b"data")])
    response = app.test_client().post("/upload", data=body, content_type=ctype)
    assert response.status_code == 200
    assert seen == [None]


# -- the demo app ---------------------------------------------------------------------------


def test_demo_factory_configuration(tmp_path: Any, monkeypatch: Any) -> None:
    from demo_app import create_app
    from demo_app.throttle import ReadThrottle

    monkeypatch.setenv("DEMO_MAX_UPLOAD_MB", "3")
    monkeypatch.setenv("DEMO_THROTTLE_KBPS", "512")
    monkeypatch.setenv("FLASK_UPLOADMETER_PREFIX", '"/demo-meter"')
    app = create_app({"UPLOADMETER_STORE": "memory://"}, instance_path=str(tmp_path))
    middleware = app.extensions["uploadmeter"].middleware
    assert middleware.max_content_length == 3_000_000
    assert middleware.prefix == "/demo-meter"
    assert isinstance(middleware.app, ReadThrottle)  # inside the meter, so it is measured
    assert middleware.app.rate == 512 * 1024
    assert app.config["UPLOAD_FOLDER"] == str(tmp_path / "uploads")
    page = app.test_client().get("/")
    assert b"Demo setting" in page.data and b"512 KiB/s" in page.data
    assert b"3.00 MB" in page.data

    # The generated secret key lives in the instance folder, shared by every worker.
    key = app.config["SECRET_KEY"]
    assert (tmp_path / "secret_key").read_text() == key
    again = create_app({"UPLOADMETER_STORE": "memory://"}, instance_path=str(tmp_path))
    assert again.config["SECRET_KEY"] == key


def test_demo_throttle_is_off_by_default(tmp_path: Any, monkeypatch: Any) -> None:
    from demo_app import create_app

    monkeypatch.delenv("DEMO_THROTTLE_KBPS", raising=False)
    monkeypatch.delenv("DEMO_MAX_UPLOAD_MB", raising=False)
    app = create_app({"UPLOADMETER_STORE": "memory://"}, instance_path=str(tmp_path))
    middleware = app.extensions["uploadmeter"].middleware
    assert middleware.app.__class__.__name__ != "ReadThrottle"
    assert middleware.max_content_length == 512_000_000
    assert b"DEMO_THROTTLE_KBPS=4096" in app.test_client().get("/").data


def test_demo_saves_safe_unique_names_and_hashes(tmp_path: Any) -> None:
    from demo_app.storage import UploadFolder

    folder = UploadFolder(str(tmp_path / "uploads"))
    first = folder.save(io.BytesIO(b"one"), "../../etc/passwd")
    second = folder.save(io.BytesIO(b"two"), "../../etc/passwd")
    odd = folder.save(io.BytesIO(b""), "<img src=x onerror=alert(1)>.png")
    nameless = folder.save(io.BytesIO(b"x"), "...")
    assert (first.name, second.name) == ("etc_passwd", "etc_passwd-2")
    assert odd.name == "img_srcx_onerroralert1.png"
    assert odd.original == "<img src=x onerror=alert(1)>.png"
    assert nameless.name == "upload"
    assert first.sha256 == hashlib.sha256(b"one").hexdigest()
    assert (tmp_path / "uploads" / "etc_passwd-2").read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path / "uploads")) == [
        ".meta",
        "etc_passwd",
        "etc_passwd-2",
        "img_srcx_onerroralert1.png",
        "upload",
    ]
    listed = {f.name: f for f in folder.files()}
    assert listed["etc_passwd"] == first
    assert listed["img_srcx_onerroralert1.png"].size == 0


def test_demo_keeps_nothing_when_saving_fails(tmp_path: Any) -> None:
    from demo_app.storage import UploadFolder

    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 1000:
                raise OSError("disk gone")
            return super().read(min(size or 1000, 1000))

    folder = UploadFolder(str(tmp_path / "uploads"))
    with pytest.raises(OSError, match="disk gone"):
        folder.save(Broken(b"x" * 5000), "a.bin")
    assert os.listdir(tmp_path / "uploads") == [".meta"]


def test_demo_concurrent_saves_with_one_name_never_overwrite(tmp_path: Any) -> None:
    from demo_app.storage import UploadFolder

    folder = UploadFolder(str(tmp_path / "uploads"))
    names: list[str] = []
    barrier = threading.Barrier(8)

    def save(i: int) -> None:
        barrier.wait()
        names.append(folder.save(io.BytesIO(str(i).encode() * 1000), "same.txt").name)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names) == sorted(["same.txt"] + [f"same-{n}.txt" for n in range(2, 9)])
    contents = {(tmp_path / "uploads" / n).read_bytes()[:1] for n in names}
    assert len(contents) == 8


def test_demo_read_throttle_holds_the_rate() -> None:
    from demo_app.throttle import ThrottledInput

    data = os.urandom(256 * 1024)
    stream = ThrottledInput(io.BytesIO(data), rate=1024 * 1024)  # 1 MiB/s: 0.25 s
    start = time.monotonic()
    out = b""
    while chunk := stream.read(100_000):
        assert len(chunk) <= 64 * 1024
        out += chunk
    elapsed = time.monotonic() - start
    assert out == data
    assert elapsed >= 0.24
    buf = bytearray(10)
    assert ThrottledInput(io.BytesIO(b"abc"), rate=1e9).readinto(buf) == 3
    assert ThrottledInput(io.BytesIO(b"a\nb"), rate=1e9).readline() == b"a\n"
    assert ThrottledInput(io.BytesIO(data), rate=1e9).read() == data


def test_demo_upload_without_javascript_redirects_to_files(tmp_path: Any) -> None:
    from demo_app import create_app

    app = create_app({"UPLOADMETER_STORE": "memory://"}, instance_path=str(tmp_path))
    client = app.test_client()
    body, ctype = multipart_body([("document", "notes.txt", b"hello")])
    response = client.post("/upload", data=body, content_type=ctype)
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/files")
    files = client.get("/files")
    assert b"notes.txt" in files.data
    assert hashlib.sha256(b"hello").hexdigest().encode() in files.data
    assert b"Saved notes.txt." in files.data
    download = client.get("/files/notes.txt")
    assert download.data == b"hello"
    assert "attachment" in download.headers["Content-Disposition"]
    assert client.get("/files/.meta").status_code == 404

    empty, ctype = multipart_body([("document", "", b"")])
    response = client.post("/upload", data=empty, content_type=ctype, follow_redirects=True)
    assert b"Choose a file first." in response.data


def test_views_download_files_and_hand_out_signed_links(tmp_path: Any) -> None:
    from pathlib import Path

    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-" + bytes(range(256)) * 40)
    targets = {"quarterly": Path(report)}
    app = make_app(UPLOADMETER_DOWNLOAD_RESOLVER=targets.get)
    meter = UploadMeter(app)

    @app.get("/report")
    def get_report() -> Any:
        return meter.download(Path(report))

    @app.get("/share")
    def share() -> Any:
        return {"url": meter.signed_url("quarterly", expires_in=60, single_use=True)}

    client = app.test_client()
    whole = client.get("/report")
    assert whole.status_code == 200 and whole.data == report.read_bytes()
    part = client.get("/report", headers={"Range": "bytes=5-9"})
    assert part.status_code == 206 and part.data == report.read_bytes()[5:10]

    url = client.get("/share").json["url"]
    assert str(report) not in url and "report.pdf" not in url  # never the real path
    stranger = app.test_client()  # no session needed
    got = stranger.get(url)
    assert got.status_code == 200 and got.data == report.read_bytes()
    assert stranger.get(url).status_code == 410  # single use


def test_signed_links_need_a_resolver() -> None:
    app = make_app()
    meter = UploadMeter(app)
    with app.test_request_context("/"), pytest.raises(ConfigurationError, match="RESOLVER"):
        meter.signed_url("anything")


def test_mount_and_public_names() -> None:
    """The extension mounts like the middleware; the top level exports what apps use."""
    import uploadmeter
    from uploadmeter.processing import ProcessingTask

    app = make_app()
    meter = UploadMeter(app)

    def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"mounted " + environ["SCRIPT_NAME"].encode()]

    meter.mount("/hello", hello)
    assert app.test_client().get("/uploadmeter/hello/x").data == b"mounted /uploadmeter/hello"
    assert uploadmeter.ProcessingTask is ProcessingTask and "ProcessingTask" in uploadmeter.__all__
    assert "MultipartObserver" not in uploadmeter.__all__
    assert not hasattr(uploadmeter, "MultipartObserver")


def test_demo_uses_public_api_only() -> None:
    """The demo reaches no extension internals (``state(app).middleware``, extensions)."""
    folder = os.path.join(ROOT, "demo_app")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                text = f.read()
            assert ".state(" not in text and 'extensions["uploadmeter"]' not in text, name

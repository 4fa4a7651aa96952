"""The progress component in a real browser: Debian's chromium driven by Playwright.

The demo app runs on loopback with its server-side read throttle, so each upload takes a
known few seconds and the stages can be watched.  Every rendered percentage is recorded
in the page by a MutationObserver on the bar (no sampling from the test).  Screenshots
of each stage go to ``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from demo_app.views import filesize
from tests.support.browser_support import (
    make_file,
    run_demo,
    running_chromium,
    screenshot,
    sha256_of,
)
from tests.support.servers import run_gunicorn, serve_in_thread, wait_until
from uploadmeter.core import PROCESSING, UploadRecord

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

MB = 1_000_000
STAGE_TIMEOUT_MS = 20_000

# Records every state the bar is drawn in: percentage, active segments, label.
RECORD_JS = """(id) => {
  const bar = document.getElementById(id + "_progressBar");
  const label = document.getElementById(id + "_progressBarlabel");
  const stage2 = document.getElementById(id + "_stage2");
  const seen = (window.__seen = window.__seen || {})[id] = [];
  const snap = () => seen.push({
    pct: Number(bar.getAttribute("aria-valuenow")),
    active: bar.querySelectorAll("span.active").length,
    passive: bar.querySelectorAll("span.passive").length,
    label: label.textContent,
    stage2: !stage2.hidden,
  });
  new MutationObserver(snap).observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
}"""

STAGES_JS = """(id) => ["_stage1", "_stage2", "_stage3", "_error"]
  .filter((s) => !document.getElementById(id + s).hidden)"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with running_chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 720})
    page = context.new_page()
    page.dialogs = []  # type: ignore[attr-defined]
    page.errors = []  # type: ignore[attr-defined]
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()
    assert page.errors == [], page.errors  # no script error on any page


def stages(page: Any, widget: str) -> list[str]:
    return page.evaluate(STAGES_JS, widget)  # type: ignore[no-any-return]


def seen(page: Any, widget: str) -> list[dict[str, Any]]:
    return page.evaluate("(id) => window.__seen[id]", widget)  # type: ignore[no-any-return]


def server_record(page: Any, widget: str) -> dict[str, Any]:
    """The widget's upload as the progress endpoint reports it to this browser."""
    return page.evaluate(  # type: ignore[no-any-return]
        """async (id) => {
          const w = UploadMeter.widget(document.getElementById(id + "_component"));
          const r = await fetch("/uploadmeter/progress?id=" + w.uploadId);
          return r.json();
        }""",
        widget,
    )


def wait_percent(page: Any, widget: str, low: int, high: int = 99) -> None:
    page.wait_for_function(
        """([id, low, high]) => {
          const bar = document.getElementById(id + "_progressBar");
          const pct = Number(bar.getAttribute("aria-valuenow"));
          return !document.getElementById(id + "_stage2").hidden && pct >= low && pct <= high;
        }""",
        arg=[widget, low, high],
        timeout=STAGE_TIMEOUT_MS,
    )


def check_bar_history(history: list[dict[str, Any]]) -> list[int]:
    """Every drawn state is consistent; returns the percentages in order."""
    pcts = [s["pct"] for s in history]
    for s in history:
        assert s["active"] == s["pct"], s
        assert s["active"] + s["passive"] == 100, s
        assert s["label"] == f"{s['pct']}%", s
    assert pcts == sorted(pcts), pcts
    return pcts


# -- the three stages -----------------------------------------------------------------------


def test_single_upload_goes_through_three_stages(page: Any, tmp_path: Any) -> None:
    source = make_file(tmp_path / "report.bin", 30 * MB)
    with run_demo(tmp_path, DEMO_THROTTLE_KBPS=6144) as demo:
        page.goto(demo.url + "/")
        assert stages(page, "document") == ["_stage1"]
        assert page.locator("#document_progressBar > span").count() == 100
        screenshot(page, "stage1-page")
        screenshot(page, "stage1-widget", "#document_component")

        page.set_input_files("#document", source)
        assert page.text_content("#document_hint") == "report.bin \u2014 30.0 MB"
        page.evaluate(RECORD_JS, "document")
        page.click("#document_upload")

        wait_percent(page, "document", 35, 70)
        assert stages(page, "document") == ["_stage2"]
        assert page.text_content("#document_fileNames") == "report.bin"
        assert re.fullmatch(r"[\d.]+ MB of 30\.0 MB", page.text_content("#document_bytes"))
        assert page.text_content("#document_speed").endswith("MB/s")
        assert page.text_content("#document_eta").endswith("left")
        bar = page.locator("#document_progressBar")
        assert bar.get_attribute("role") == "progressbar"
        assert bar.get_attribute("aria-valuemin") == "0"
        assert bar.get_attribute("aria-valuemax") == "100"
        screenshot(page, "stage2-widget", "#document_component")

        page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        assert stages(page, "document") == ["_stage3"]
        screenshot(page, "stage3-page")
        screenshot(page, "stage3-widget", "#document_component")

        pcts = check_bar_history(seen(page, "document"))
        intermediate = sorted({p for p in pcts if 0 < p < 100})
        assert len(intermediate) >= 4, pcts  # the bar really moved, in steps
        assert pcts[-1] == 100
        assert page.locator("#document_progressBar > span.active").count() == 100

        # stage 3: the caller's content, filled with the app's result
        stage3 = page.text_content("#document_stage3")
        assert "Uploaded report.bin (30.0 MB)" in stage3
        assert page.text_content("#document_stage3 [data-uploadmeter-result=saved]") == "report.bin"
        assert page.get_attribute("#document_stage3 a.link-button", "href").endswith("/files")

        # the server has exactly the bytes that were chosen
        assert demo.saved_files() == ["report.bin"]
        digest = sha256_of(source)
        assert sha256_of(f"{demo.upload_folder}/report.bin") == digest
        page.click("#document_stage3 a.link-button")
        page.wait_for_url("**/files")
        assert digest in page.text_content("table.files")
        screenshot(page, "files-page")


def test_upload_another_resets_the_widget(page: Any, tmp_path: Any) -> None:
    first = make_file(tmp_path / "one.bin", 2 * MB)
    second = make_file(tmp_path / "two.bin", 2 * MB)
    with run_demo(tmp_path) as demo:
        page.goto(demo.url + "/")
        page.set_input_files("#document", first)
        page.click("#document_upload")
        page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        page.click("#document_stage3 [data-uploadmeter-reset]")
        assert stages(page, "document") == ["_stage1"]
        assert page.locator("#document_progressBar > span.active").count() == 0
        assert page.input_value("#document") == ""

        page.set_input_files("#document", second)
        page.click("#document_upload")
        page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        assert "Uploaded two.bin" in page.text_content("#document_summary")
        assert demo.saved_files() == ["one.bin", "two.bin"]


# -- several at once ------------------------------------------------------------------------


def test_two_widgets_upload_at_the_same_time(page: Any, tmp_path: Any) -> None:
    single = make_file(tmp_path / "single.bin", 16 * MB)
    first = make_file(tmp_path / "first.bin", 8 * MB)
    second = make_file(tmp_path / "second.bin", 8 * MB)
    with run_demo(tmp_path, DEMO_THROTTLE_KBPS=4096) as demo:
        page.goto(demo.url + "/")
        page.evaluate(RECORD_JS, "document")
        page.evaluate(RECORD_JS, "batch")
        page.set_input_files("#document", single)
        page.set_input_files("#batch", [first, second])
        assert page.text_content("#batch_hint") == "2 files \u2014 16.0 MB"
        page.click("#document_upload")
        wait_percent(page, "document", 1)
        page.click("#batch_upload")

        # both bars in stage 2 and moving at one moment
        page.wait_for_function(
            """() => ["document", "batch"].every((id) => {
              const pct = Number(document.getElementById(id + "_progressBar")
                .getAttribute("aria-valuenow"));
              return !document.getElementById(id + "_stage2").hidden && pct > 0 && pct < 100;
            })""",
            timeout=STAGE_TIMEOUT_MS,
        )
        # per-file progress: the first file is complete while the second still travels
        page.wait_for_function(
            """() => {
              const rows = document.getElementById("batch_fields").children;
              return rows.length === 2 && rows[0].dataset.state === "done"
                && rows[1].dataset.state === "uploading";
            }""",
            timeout=STAGE_TIMEOUT_MS,
        )
        rows = page.locator("#batch_fields > li")
        assert rows.nth(0).locator(".uploadmeter-field-name").text_content() == "first.bin"
        assert rows.nth(1).locator(".uploadmeter-field-name").text_content() == "second.bin"
        info = rows.nth(1).locator(".uploadmeter-field-info").text_content()
        assert re.fullmatch(r"[\d.]+ (B|kB|MB) of 8\.00 MB", info), info
        screenshot(page, "two-at-once-page")
        screenshot(page, "two-at-once-multi-widget", "#batch_component")

        page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        page.wait_for_selector("#batch_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        screenshot(page, "two-at-once-done-page")
        for widget in ("document", "batch"):
            pcts = check_bar_history(seen(page, widget))
            assert len({p for p in pcts if 0 < p < 100}) >= 3, (widget, pcts)
        assert page.text_content("#batch_stage3 [data-uploadmeter-result=count]") == "2"
        assert "Uploaded 2 files (16.0 MB)" in page.text_content("#batch_summary")

        assert demo.saved_files() == ["first.bin", "second.bin", "single.bin"]
        for path in (single, first, second):
            name = path.rsplit("/", 1)[1]
            assert sha256_of(f"{demo.upload_folder}/{name}") == sha256_of(path)


# -- endings that are not a success -----------------------------------------------------------


def test_cancel_midway_shows_cancelled_and_keeps_nothing(page: Any, tmp_path: Any) -> None:
    source = make_file(tmp_path / "big.bin", 30 * MB)
    with run_demo(tmp_path, DEMO_THROTTLE_KBPS=3072) as demo:
        page.goto(demo.url + "/")
        page.set_input_files("#document", source)
        page.click("#document_upload")
        wait_percent(page, "document", 10, 60)
        page.click("#document_cancel")

        page.wait_for_selector("#document_error", state="visible", timeout=5_000)
        assert stages(page, "document") == ["_error"]
        assert page.get_attribute("#document_component", "data-state") == "cancelled"
        assert page.text_content("#document_errorTitle") == "Upload cancelled"
        screenshot(page, "cancelled-widget", "#document_component")

        # The server stopped reading, answered, and kept neither a file nor a part of one.
        statuses = wait_until(demo.log.uploads_finished, timeout=10)
        wait_until(demo.log.idle, timeout=10)
        assert statuses[0] is not None and statuses[0] >= 400, statuses
        assert demo.saved_files() == []
        record = server_record(page, "document")
        assert record["state"] == "cancelled", record
        assert 0 < record["bytes_received"] < 30 * MB


def test_too_large_upload_shows_the_413_message(page: Any, tmp_path: Any) -> None:
    source = make_file(tmp_path / "huge.bin", 12 * MB)
    with run_demo(tmp_path, UPLOADMETER_MAX_CONTENT_LENGTH=5 * MB) as demo:
        page.goto(demo.url + "/")
        page.set_input_files("#document", source)
        assert "over the 5.00 MB limit" in page.text_content("#document_hint")
        page.click("#document_upload")

        page.wait_for_selector("#document_error", state="visible", timeout=STAGE_TIMEOUT_MS)
        assert page.text_content("#document_errorTitle") == "File too large"
        message = page.text_content("#document_errorMessage")
        assert "larger than this server accepts" in message
        assert "The limit is 5.00 MB." in message
        assert page.get_attribute("#document_error", "data-status") == "413"
        screenshot(page, "too-large-widget", "#document_component")
        assert server_record(page, "document")["error"]["status"] == 413
        assert demo.saved_files() == []


def test_hostile_file_name_is_shown_as_text(page: Any, tmp_path: Any) -> None:
    name = "<img src=x onerror=alert(1)>.png"
    source = make_file(tmp_path / name, 6 * MB)
    with run_demo(tmp_path, DEMO_THROTTLE_KBPS=4096) as demo:
        page.goto(demo.url + "/")
        page.set_input_files("#document", source)
        assert page.text_content("#document_hint").startswith(name)
        page.click("#document_upload")
        wait_percent(page, "document", 1)
        assert page.text_content("#document_fileNames") == name
        page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        assert f"Uploaded {name} (6.00 MB)" in page.text_content("#document_summary")
        screenshot(page, "xss-name-widget", "#document_component")
        # Nothing was parsed as markup: the widget holds only its own icon-free elements.
        assert page.locator("#document_component img").count() == 0

        saved = demo.saved_files()
        assert saved == ["img_srcx_onerroralert1.png"]  # werkzeug's secure_filename
        page.goto(demo.url + "/files")
        assert f"sent as \u201c{name}\u201d" in page.text_content("table.files")
        assert page.locator("table.files img").count() == 0
        assert page.dialogs == []  # type: ignore[attr-defined]


# -- without JavaScript -----------------------------------------------------------------------


def test_form_still_uploads_without_javascript(browser: Any, tmp_path: Any) -> None:
    source = make_file(tmp_path / "plain.bin", 3 * MB)
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        with run_demo(tmp_path) as demo:
            page.goto(demo.url + "/")
            assert page.is_visible("#document_stage1")
            assert not page.is_visible("#document_stage2")
            page.set_input_files("#document", source)
            page.click("#document_upload")
            page.wait_for_url("**/files")
            assert "Saved plain.bin." in page.text_content(".flash")
            assert sha256_of(f"{demo.upload_folder}/plain.bin") == sha256_of(source)
            screenshot(page, "no-javascript-files-page")
    finally:
        context.close()


# -- the processing phase ---------------------------------------------------------------------


def test_processing_phase_is_shown_after_the_upload(page: Any, tmp_path: Any) -> None:
    """The app's work after the upload (uploadmeter.processing) reports on the same bar."""
    record = UploadRecord(
        id="processing-1",
        state=PROCESSING,
        bytes_received=21_000_000,
        content_length=21_000_000,
        processing={"phase": "compressing", "done": 42, "total": 100},
    ).to_json_dict()
    with run_demo(tmp_path) as demo:
        page.goto(demo.url + "/")
        page.evaluate(
            """(record) => {
              const w = UploadMeter.widget(document.getElementById("document_component"));
              w.files = [{name: "video.mov", size: 21000000}];
              w.total = 21000000;
              w.busy = true;
              w.renderStart();
              w.setPercent(100);
              w.renderProgress(record);
            }""",
            record,
        )
        assert page.text_content("#document_status") == "Processing: compressing \u2014 42%"
        assert page.get_attribute("#document_component", "data-state") == "processing"
        assert page.locator("#document_progressBar > span.active").count() == 42
        assert page.text_content("#document_progressBarlabel") == "42%"
        assert page.text_content("#document_bytes") == "Uploaded 21.0 MB"
        assert page.is_enabled("#document_cancel")  # processing tasks honour cancel
        screenshot(page, "processing-widget", "#document_component")


# -- two widgets in one form ------------------------------------------------------------------

SHARED_FORM_PAGE = """<!doctype html>
{% import "uploadmeter/macros.html" as um %}
<html lang="en"><head><meta charset="utf-8"><title>shared form</title>{{ um.assets() }}</head>
<body>
<form id="f" action="/upload?keep=1&amp;x=a%20b" method="get">
  <input name="note" value="hello">
  {% call um.file_upload("left", include_assets=False) %}<p>Left done</p>{% endcall %}
  {% call um.file_upload("right", include_assets=False) %}<p>Right done</p>{% endcall %}
</form>
</body></html>"""


@contextlib.contextmanager
def shared_form_app(received: list[dict[str, Any]]) -> Iterator[str]:
    from flask import Flask, render_template_string, request

    from uploadmeter.flask import UploadMeter, current_upload

    app = Flask(__name__)
    app.config.update(SECRET_KEY="shared", UPLOADMETER_STORE="memory://")
    UploadMeter(app)

    @app.get("/")
    def page() -> str:
        return render_template_string(SHARED_FORM_PAGE)

    @app.post("/upload")
    def upload() -> str:
        files = {k: f.filename for k, f in request.files.items(multi=True) if f.filename}
        sizes = {k: len(f.read()) for k, f in request.files.items(multi=True) if f.filename}
        received.append(
            {
                "files": files,
                "sizes": sizes,
                "note": request.form.get("note"),
                "args": dict(request.args),
            }
        )
        handle = current_upload()
        assert handle is not None
        handle.set_result(saved=", ".join(files.values()))
        return "ok"

    with serve_in_thread(app) as url:
        yield url


def test_two_widgets_in_one_form_each_send_their_own_files(page: Any, tmp_path: Any) -> None:
    left = make_file(tmp_path / "left.bin", 1 * MB)
    right = make_file(tmp_path / "right.bin", 2 * MB)
    received: list[dict[str, Any]] = []
    with shared_form_app(received) as url:
        page.goto(url + "/")
        page.set_input_files("#left", left)
        page.set_input_files("#right", right)
        page.click("#left_upload")
        # The form is back as the page made it, at once.
        form = page.evaluate(
            """() => { const f = document.getElementById("f");
              return [f.getAttribute("action"), f.getAttribute("method"),
                      f.getAttribute("enctype"), f.getAttribute("target"),
                      document.getElementById("right").disabled]; }"""
        )
        assert form == ["/upload?keep=1&x=a%20b", "get", None, None, False]
        page.wait_for_selector("#left_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        assert stages(page, "right") == ["_stage1"]
        assert page.evaluate("document.getElementById('right').files.length") == 1

        page.click("#right_upload")
        page.wait_for_selector("#right_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        assert "Right done" in page.text_content("#right_stage3")

    assert [r["files"] for r in received] == [{"left": "left.bin"}, {"right": "right.bin"}]
    assert [r["sizes"] for r in received] == [{"left": 1 * MB}, {"right": 2 * MB}]
    assert all(r["note"] == "hello" for r in received)
    for r in received:
        # the form's own query is kept, the tracking id added
        assert r["args"]["keep"] == "1" and r["args"]["x"] == "a b"
        assert len(r["args"]["uploadmeter_id"]) == 36


# -- several worker processes -------------------------------------------------------------------


@pytest.mark.gunicorn
def test_demo_under_gunicorn_with_three_workers(page: Any, tmp_path: Any) -> None:
    """Upload and polls land on different processes: the SQLite store and the secret key
    in the instance folder are shared by every worker."""
    source = make_file(tmp_path / "multi.bin", 12 * MB)
    instance = tmp_path / "instance"
    env = {
        "DEMO_THROTTLE_KBPS": "4096",
        "FLASK_UPLOADMETER_STORE": f'"sqlite://{tmp_path / "um.sqlite3"}"',
    }
    with run_gunicorn(f"demo_app:create_app(instance_path={str(instance)!r})", env=env) as url:
        page.goto(url + "/")
        page.evaluate(RECORD_JS, "document")
        page.set_input_files("#document", source)
        page.click("#document_upload")
        page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        pcts = check_bar_history(seen(page, "document"))
        assert len({p for p in pcts if 0 < p < 100}) >= 3, pcts
    assert sha256_of(str(instance / "uploads" / "multi.bin")) == sha256_of(source)


# Byte counts as every widget and the demo's pages show them: three significant digits,
# decimal units, halves rounded up as JavaScript's toFixed does.
BYTES_SHOWN = {
    0: "0 B",
    999: "999 B",
    1000: "1.00 kB",
    1005: "1.00 kB",  # 1.005 is 1.00499... as a float
    1125: "1.13 kB",  # an exact half: up
    9995: "9.99 kB",
    10_000: "10.0 kB",
    99_949: "99.9 kB",
    123_456: "123 kB",
    999_499: "999 kB",
    1_000_000: "1.00 MB",
    3_145_728: "3.15 MB",
    21_000_000: "21.0 MB",
    512_000_000: "512 MB",
    4_700_000_000: "4.70 GB",
    2_500_000_000_000: "2.50 TB",
    10**16: "10000 TB",
}


@pytest.mark.parametrize("path", ["/", "/large"])
def test_both_widgets_and_the_demo_format_bytes_alike(page: Any, tmp_path: Any, path: str) -> None:
    sizes = list(BYTES_SHOWN)
    with run_demo(tmp_path) as demo:
        page.goto(demo.url + path)
        page.wait_for_function("() => document.readyState === 'complete'")
        shown = page.evaluate("(ns) => ns.map(window.UploadMeterFormat.bytes)", sizes)
    assert shown == list(BYTES_SHOWN.values())
    assert [filesize(n) for n in sizes] == list(BYTES_SHOWN.values())

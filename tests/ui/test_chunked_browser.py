"""The resumable uploader in a real browser: chunked.html + uploadmeter-chunked.js on top of
the unmodified simple-uploader.js from npm (tests/js/node_modules, installed by
``npm ci --prefix tests/js``), driven in Debian's chromium through Playwright.

A gate in front of the server lets a set number of chunk POSTs through and holds the
rest, so the interruption happens at a known point; it also records every chunk request
the server receives, so "only the missing chunks are sent" is counted server-side.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.support.browser_support import make_file, running_chromium, screenshot, sha256_of
from tests.support.chunked_app import make_app, read_completions
from tests.support.chunked_support import serve_fast
from tests.support.servers import ROOT, wait_until
from uploadmeter.ui import component_settings, template_environment

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

MIB = 1024 * 1024
NODE_MODULES = os.path.join(ROOT, "tests", "js", "node_modules")
SCRIPTS = {
    "/js/uploader.js": os.path.join(NODE_MODULES, "simple-uploader.js", "dist", "uploader.js"),
    "/js/flow.js": os.path.join(NODE_MODULES, "@flowjs", "flow.js", "dist", "flow.js"),
}
UPLOADER_JS = SCRIPTS["/js/uploader.js"]

# A bare page for the npm clients with their default options (per-chunk tests answered
# 200/204, multipart chunks): only ``target`` is set.
RAW_PAGE = b"""<!doctype html><html lang=en><meta charset=utf-8><title>raw</title>
<input type=file id=file>
<script src="/js/uploader.js"></script><script src="/js/flow.js"></script>
<script>
window.done = [];
window.start = function (kind) {
  var opts = {target: "/uploadmeter/chunks"};
  var client = kind === "flow" ? new Flow(opts) : new Uploader(opts);
  client.on("fileSuccess", function (f, x, y) { window.done.push("success"); });
  client.on("fileError", function (f, x, y) { window.done.push("error"); });
  var files = document.getElementById("file").files;
  if (kind === "flow") client.addFiles(files); else client.addFiles(Array.from(files));
  client.upload();
  window.client = client;
};
</script>"""
TIMEOUT_MS = 60_000


class ChunkGate:
    """WSGI wrapper: records chunk requests; lets ``limit`` POSTs through, holds the rest."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.phase = 1
        self.requests: list[tuple[int, str, int]] = []  # (phase, method, chunkNumber)
        self.limit: int | None = None
        self.passed: list[int] = []
        self.held = 0
        self.release = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/uploadmeter/chunks/merge":
            with self.lock:
                self.requests.append((self.phase, "MERGE", 0))
        elif environ["PATH_INFO"] == "/uploadmeter/chunks":
            method = environ["REQUEST_METHOD"]
            query = parse_qs(environ.get("QUERY_STRING", ""))
            number = int((query.get("chunkNumber") or query.get("flowChunkNumber") or ["0"])[0])
            if method == "POST" and not number:
                number = self._number_from_form(environ)
            with self.lock:
                self.requests.append((self.phase, method, number))
                hold = (
                    method == "POST" and self.limit is not None and len(self.passed) >= self.limit
                )
                if hold:
                    self.held += 1
                elif method == "POST":
                    self.passed.append(number)
            if hold:
                # Never reaches the app, so a held chunk is never stored.
                self.release.wait(TIMEOUT_MS / 1000)
                with self.lock:
                    self.held -= 1
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"held by the test"]
        return self.app(environ, start_response)

    @staticmethod
    def _number_from_form(environ: dict[str, Any]) -> int:
        """chunkNumber of a multipart chunk (the clients put it before the file)."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        match = re.search(rb'name="(?:flow)?[cC]hunkNumber"\r\n\r\n(\d+)\r\n', body[:4096])
        return int(match.group(1)) if match else 0

    def posts(self, phase: int) -> list[int]:
        with self.lock:
            return [n for p, m, n in self.requests if p == phase and m == "POST"]

    def tests(self, phase: int) -> list[int]:
        with self.lock:
            return [n for p, m, n in self.requests if p == phase and m == "GET"]

    def merges(self, phase: int) -> int:
        with self.lock:
            return sum(1 for p, m, _ in self.requests if p == phase and m == "MERGE")


def page_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path in SCRIPTS:
        with open(SCRIPTS[path], "rb") as f:
            body = f.read()
        start_response("200 OK", [("Content-Type", "text/javascript")])
        return [body]
    if path == "/raw":
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [RAW_PAGE]
    if path != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    settings = component_settings(poll_interval=0.2)
    module = (
        template_environment()
        .get_template("uploadmeter/chunked.html")
        .make_module({"uploadmeter_settings": lambda: settings})
    )
    widget = module.chunked_upload("videos", uploader_js="/js/uploader.js", chunk_size=MIB)
    html = f"<!doctype html><html lang=en><meta charset=utf-8><title>chunked</title>{widget}"
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [html.encode()]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with running_chromium(SCRIPTS.values()) as chromium:
        yield chromium


@pytest.fixture
def site(tmp_path: Any) -> Iterator[tuple[str, ChunkGate, str]]:
    directory = str(tmp_path / "store")
    meter = make_app(
        "sqlite://" + str(tmp_path / "progress.sqlite3"),
        directory,
        inner=page_app,
        chunk_options={"instant_upload": "global"},
    )
    gate = ChunkGate(meter)
    with serve_fast(gate) as url:
        yield url, gate, directory
    gate.release.set()


def new_page(browser: Any, url: str) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_function("() => !!(window.UploadMeterChunked && window.Uploader)")
    return context, page, errors


def item_state(page: Any) -> str | None:
    return page.evaluate(  # type: ignore[no-any-return]
        "() => { const li = document.querySelector('.uploadmeter-chunked-file');"
        " return li && li.getAttribute('data-state'); }"
    )


def wait_state(page: Any, state: str) -> None:
    page.wait_for_function(
        "(s) => { const li = document.querySelector('.uploadmeter-chunked-file');"
        " return li && li.getAttribute('data-state') === s; }",
        arg=state,
        timeout=TIMEOUT_MS,
    )


def test_reload_resumes_with_only_missing_chunks_then_instant_upload(
    browser: Any, site: tuple[str, ChunkGate, str], tmp_path: Any
) -> None:
    url, gate, directory = site
    path = make_file(tmp_path / "film.bin", 50 * MIB + 12345)  # 50 chunks, 3 at a time
    digest = sha256_of(path)
    total = 50

    # Phase 1: 20 chunks get through, then the gate holds the three in flight.
    gate.limit = 20
    context, page, errors = new_page(browser, url)
    page.set_input_files("#videos", path)
    wait_until(lambda: len(gate.passed) == 20 and gate.held == 3, timeout=60)
    stored_before = set(gate.passed)
    size = os.path.getsize(path)
    stored_bytes = sum(MIB if n < total else size - (total - 1) * MIB for n in stored_before)
    page.wait_for_function(  # the bar shows what the server stored
        "(pct) => document.querySelector('.uploadmeter-chunked-file .uploadmeter-label')"
        ".textContent === pct + '%'",
        arg=stored_bytes * 100 // size,
        timeout=TIMEOUT_MS,
    )
    screenshot(page, "chunked-interrupted", "#videos_component")
    assert item_state(page) == "uploading"

    # The interruption: a reload drops the page and its requests; held chunks stay unsaved.
    page.reload()
    page.wait_for_function("() => !!(window.UploadMeterChunked && window.Uploader)")
    with gate.lock:
        gate.phase, gate.limit = 2, None
    gate.release.set()
    wait_until(lambda: gate.held == 0)

    # Phase 2: the same file again resumes: one test request, then only missing chunks.
    page.set_input_files("#videos", path)
    wait_state(page, "done")
    sent = gate.posts(2)
    assert sorted(sent) == sorted(set(range(1, total + 1)) - stored_before)
    assert len(sent) == len(set(sent)) == total - 20
    assert len(gate.tests(2)) == 1
    assert gate.merges(2) == 1  # the instant-upload question, answered 409 (incomplete)
    assert page.inner_text(".uploadmeter-chunked-file .uploadmeter-label") == "100%"
    assert page.locator(".uploadmeter-chunked-file .uploadmeter-cell.active").count() == 100
    completions = read_completions(directory)
    assert len(completions) == 1
    assert completions[0]["sha256"] == digest
    assert completions[0]["size"] == size
    with open(path, "rb") as f:
        assert completions[0]["md5"] == hashlib.md5(f.read()).hexdigest()
    screenshot(page, "chunked-done", "#videos_component")
    assert errors == []
    context.close()

    # Phase 3: another browser session uploads the same file: the server has it already.
    # A test GET changes nothing, so the script asks with a POST to /merge, no chunk sent.
    with gate.lock:
        gate.phase = 3
    context, page, errors = new_page(browser, url)
    page.set_input_files("#videos", path)
    wait_state(page, "done")
    assert gate.posts(3) == [] and gate.tests(3) == []
    assert gate.merges(3) == 1
    assert "already on the server" in page.inner_text(
        ".uploadmeter-chunked-file .uploadmeter-status"
    )
    completions = read_completions(directory)
    assert [c["instant"] for c in completions] == [False, True]
    assert errors == []
    context.close()


def test_several_files_pause_resume_and_cancel(
    browser: Any, site: tuple[str, ChunkGate, str], tmp_path: Any
) -> None:
    url, gate, directory = site
    first = make_file(tmp_path / "a.bin", 6 * MIB)
    second = make_file(tmp_path / "b.bin", 6 * MIB)
    gate.limit = 4  # both files start, then everything waits at the gate
    context, page, errors = new_page(browser, url)
    page.set_input_files("#videos", [first, second])
    items = page.locator(".uploadmeter-chunked-file")
    wait_until(lambda: len(gate.passed) == 4 and gate.held == 3, timeout=60)
    assert items.count() == 2
    assert page.locator(".uploadmeter-chunked-file .uploadmeter-bar").count() == 2

    a, b = items.nth(0), items.nth(1)
    a.locator(".uploadmeter-pause").click()
    assert a.get_attribute("data-state") == "paused"
    assert a.locator(".uploadmeter-resume").is_visible()
    b.locator(".uploadmeter-cancel").click()
    assert b.get_attribute("data-state") == "cancelled"
    wait_until(lambda: "DELETE" in {m for _, m, _ in gate.requests})
    with gate.lock:
        gate.phase, gate.limit = 2, None
    gate.release.set()
    wait_until(lambda: gate.held == 0)
    assert gate.posts(2) == []  # paused and cancelled: nothing is sent

    a.locator(".uploadmeter-resume").click()
    page.wait_for_function(
        "() => document.querySelector('.uploadmeter-chunked-file').dataset.state === 'done'",
        timeout=TIMEOUT_MS,
    )
    assert b.get_attribute("data-state") == "cancelled"
    (done,) = read_completions(directory)
    assert done["sha256"] == sha256_of(first)
    partial = [names for _, _, names in os.walk(os.path.join(directory, "partial")) if names]
    assert partial == []  # the cancelled file's chunks are gone
    screenshot(page, "chunked-two-files", "#videos_component")
    assert errors == []
    context.close()


@pytest.mark.parametrize("kind", ["simple-uploader", "flow"])
def test_npm_clients_with_default_options_resume_after_a_reload(
    browser: Any, site: tuple[str, ChunkGate, str], tmp_path: Any, kind: str
) -> None:
    url, gate, directory = site
    path = make_file(tmp_path / "doc.bin", 6 * MIB + 100)  # 6 chunks of the default 1 MiB
    gate.limit = 2
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/raw")
    page.set_input_files("#file", path)
    page.evaluate("(kind) => window.start(kind)", kind)
    wait_until(lambda: len(gate.passed) == 2 and gate.held == 3, timeout=60)
    stored_before = set(gate.passed)
    page.reload()
    with gate.lock:
        gate.phase, gate.limit = 2, None
    gate.release.set()
    wait_until(lambda: gate.held == 0)

    page.set_input_files("#file", path)
    page.evaluate("(kind) => window.start(kind)", kind)
    page.wait_for_function("() => window.done.length > 0", timeout=TIMEOUT_MS)
    assert page.evaluate("() => window.done") == ["success"]
    # Default mode: every chunk is tested; stored ones answer 200, the others 204.
    assert sorted(gate.tests(2)) == list(range(1, 7))
    assert sorted(gate.posts(2)) == sorted(set(range(1, 7)) - stored_before)
    (done,) = read_completions(directory)
    assert done["sha256"] == sha256_of(path)
    assert errors == []
    context.close()

"""The demo's processing and large files: uploads gzip-compressed in a thread pool with
progress in bytes compressed, and resumable chunked uploads on the "Large files" page.

Everything runs over real HTTP against the demo app on loopback (and in Debian's
chromium for the widget tests).  The compressor is slowed on purpose with the demo's
``DEMO_COMPRESS_KBPS`` setting, so its progress takes a known time and polls see
several intermediate percentages; waits are for states, never for time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.support.browser_support import (
    ARTIFACTS,
    Demo,
    make_file,
    run_demo,
    running_chromium,
    sha256_of,
)
from tests.support.servers import Client, multipart_body, new_upload_id, wait_until

MB = 1_000_000
MIB = 1024 * 1024
TIMEOUT = 15.0
TIMEOUT_MS = 20_000


def text_data(size: int, seed: int = 7) -> bytes:
    """CSV-like bytes: compressible, but not trivially (a mixed-up byte changes the gzip)."""
    rng = random.Random(seed)
    lines = []
    total = 0
    i = 0
    while total < size:
        line = f"{i},{rng.randrange(10**9)},{rng.choice(['alpha', 'beta', 'gamma'])}\n"
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines).encode()[:size]


def started(demo: Demo) -> Client:
    """A client with the demo's session cookie (as the widget's script fetches it)."""
    client = Client(demo.url)
    status, _, _ = client.request("GET", "/uploadmeter/progress?id=session-check")
    assert status == 200 and "uploadmeter_session" in client.cookies
    return client


def post_compress(client: Client, upload_id: str, name: str, data: bytes) -> dict[str, Any]:
    body, ctype = multipart_body([("archive", name, data)])
    status, _, answer = client.request(
        "POST", f"/compress?uploadmeter_id={upload_id}", body, {"Content-Type": ctype}
    )
    assert status == 200, answer
    return json.loads(answer)  # type: ignore[no-any-return]


def poll_until_finished(client: Client, upload_id: str) -> list[dict[str, Any]]:
    """Every record the progress endpoint answers, up to a final state."""
    records: list[dict[str, Any]] = []

    def finished() -> bool:
        records.append(client.progress(upload_id))
        return records[-1]["state"] in ("done", "error", "cancelled")

    wait_until(finished, timeout=TIMEOUT)
    return records


def processing_percentage(client: Client, upload_id: str) -> int:
    record = client.progress(upload_id)
    assert record["state"] == "processing", record
    return int(record["processing"]["percentage"])


def stored_names(demo: Demo) -> list[str]:
    """The uploads folder: files, hidden part files and metadata sidecars."""
    meta = os.path.join(demo.upload_folder, ".meta")
    sidecars = sorted(os.listdir(meta)) if os.path.isdir(meta) else []
    return demo.saved_files() + [".meta/" + n for n in sidecars]


# -- over HTTP ----------------------------------------------------------------------------------


def test_compressing_reports_bytes_compressed_and_serves_the_gzip(tmp_path: Any) -> None:
    data = text_data(2 * MIB)
    # 2 MiB at 1 MiB/s: about two seconds of processing, a record write every 0.2 s.
    with run_demo(tmp_path, DEMO_COMPRESS_KBPS=1024) as demo:
        client = started(demo)
        upload_id = new_upload_id()
        answer = post_compress(client, upload_id, "data.csv", data)
        assert answer == {"saved": "data.csv", "compressing": True}
        records = poll_until_finished(client, upload_id)

        working = [r for r in records if r["state"] == "processing"]
        for r in working:
            # The upload itself is complete; the bar now shows the server's work.
            assert r["bytes_received"] == r["content_length"] > len(data), r
            assert r["processing"]["phase"] == "compressing"
            assert r["processing"]["total"] == len(data)
            assert 0 <= r["processing"]["done"] <= len(data)
        pcts = [r["processing"]["percentage"] for r in working]
        assert pcts == sorted(pcts), pcts
        intermediate = sorted({p for p in pcts if 0 < p < 100})
        assert len(intermediate) >= 4, pcts  # real bytes, in many steps

        final = records[-1]
        assert final["state"] == "done", final
        assert {k: v for k, v in final["processing"].items() if k != "started_at"} == {
            "phase": "compressing",
            "done": len(data),
            "total": len(data),
            "percentage": 100,
        }
        result = final["result"]
        status, headers, gz = client.request("GET", result["url"])
        assert status == 200
        assert headers["content-type"] == "application/gzip"
        assert "content-encoding" not in headers  # the bytes are the .gz itself
        assert gzip.decompress(gz) == data
        assert result["url"] == "/files/data.csv.gz"
        assert result["compressed"] == "data.csv.gz" and result["saved"] == "data.csv"
        assert result["size"] == len(data) and result["compressed_size"] == len(gz)
        assert result["sha256"] == hashlib.sha256(gz).hexdigest()
        assert result["ratio"] == f"{len(gz) / len(data):.1%}"
        assert len(gz) < len(data) // 2

        # Both are listed, the .gz as what it is.
        assert demo.saved_files() == ["data.csv", "data.csv.gz"]
        _, _, page = client.request("GET", "/files")
        assert hashlib.sha256(gz).hexdigest().encode() in page
        assert hashlib.sha256(data).hexdigest().encode() in page
        assert b"gzip of data.csv" in page


def test_cancel_during_compression_keeps_nothing(tmp_path: Any) -> None:
    data = text_data(2 * MIB)
    # 256 KiB/s: eight seconds of work, cancelled a few hundred ms in.
    with run_demo(tmp_path, DEMO_COMPRESS_KBPS=256) as demo:
        client = started(demo)
        upload_id = new_upload_id()
        post_compress(client, upload_id, "doomed.csv", data)
        wait_until(lambda: processing_percentage(client, upload_id) > 0, timeout=TIMEOUT)
        status, _, body = client.request("POST", f"/uploadmeter/cancel?id={upload_id}")
        assert status == 200, body
        assert json.loads(body)["state"] == "cancelled"

        # The worker stops at its next progress write and removes the part file and the
        # upload; the sidecars go too.
        wait_until(lambda: stored_names(demo) == [], timeout=5)
        record = client.progress(upload_id)
        assert record["state"] == "cancelled", record
        assert record["error"]["status"] == 499
        assert 0 < record["processing"]["done"] < len(data)
        assert record["result"] is None


def test_queued_jobs_stay_alive_and_can_be_cancelled_or_fail(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """One worker: while it compresses the first file, the others wait their turn with
    their records kept fresh; one is cancelled while waiting, one cannot be read."""
    import demo_app.views
    from demo_app.processing import Compressor

    pool = Compressor(workers=1, heartbeat=0.1)
    monkeypatch.setattr(demo_app.views, "compressor", pool)
    try:
        with run_demo(tmp_path, DEMO_COMPRESS_KBPS=256) as demo:
            client = started(demo)
            first, waiting, broken = new_upload_id(), new_upload_id(), new_upload_id()
            post_compress(client, first, "first.csv", text_data(2 * MIB))
            wait_until(lambda: processing_percentage(client, first) > 0, timeout=TIMEOUT)
            post_compress(client, waiting, "waiting.csv", text_data(MIB, seed=8))
            post_compress(client, broken, "broken.csv", text_data(MIB, seed=9))
            os.unlink(os.path.join(demo.upload_folder, "broken.csv"))  # unreadable now

            # Waiting: 0 % and touched by the heartbeat, so never taken for stopped.
            seen = client.progress(waiting)
            assert seen["state"] == "processing" and seen["processing"]["percentage"] == 0
            wait_until(
                lambda: client.progress(waiting)["updated_at"] > seen["updated_at"] + 0.25,
                timeout=5,
            )
            assert processing_percentage(client, waiting) == 0

            status, _, _ = client.request("POST", f"/uploadmeter/cancel?id={waiting}")
            assert status == 200
            status, _, _ = client.request("POST", f"/uploadmeter/cancel?id={first}")
            assert status == 200

            # The worker moves on: the cancelled job is skipped, the broken one fails.
            failed = poll_until_finished(client, broken)[-1]
            assert failed["state"] == "error", failed
            assert failed["error"] == {
                "status": 500,
                "message": "Could not compress the file (No such file or directory); "
                "nothing was kept.",
            }
            assert client.progress(waiting)["state"] == "cancelled"
            assert client.progress(first)["state"] == "cancelled"
            wait_until(lambda: stored_names(demo) == [], timeout=5)
    finally:
        pool.shutdown()


def test_compress_without_javascript_and_bad_forms(tmp_path: Any) -> None:
    data = text_data(300_000)
    with run_demo(tmp_path) as demo:
        client = started(demo)
        body, ctype = multipart_body([("archive", "plain.csv", data)])
        status, headers, _ = client.request("POST", "/compress", body, {"Content-Type": ctype})
        assert status == 302 and headers["location"].endswith("/files")
        wait_until(lambda: "plain.csv.gz" in demo.saved_files(), timeout=TIMEOUT)
        _, _, gz = client.request("GET", "/files/plain.csv.gz")
        assert gzip.decompress(gz) == data
        _, _, page = client.request("GET", "/files")
        assert b"Saved plain.csv; its .gz appears here once compressed (reload)." in page

        # The widget's errors: no file, two files.
        none: list[tuple[str, str | None, bytes]] = [("archive", "", b"")]
        two: list[tuple[str, str | None, bytes]] = [("archive", "a", b"a"), ("archive", "b", b"b")]
        for parts, message in (
            (none, "Choose one file first."),
            (two, "Choose one file at a time."),
        ):
            upload_id = new_upload_id()
            body, ctype = multipart_body(parts)
            status, _, answer = client.request(
                "POST", f"/compress?uploadmeter_id={upload_id}", body, {"Content-Type": ctype}
            )
            assert status == 400 and json.loads(answer) == {"error": message}
            record = client.progress(upload_id)
            assert record["state"] == "error" and record["error"]["message"] == message
        assert demo.saved_files() == ["plain.csv", "plain.csv.gz"]


def test_folder_keeps_finished_chunked_files_under_unique_names(tmp_path: Any) -> None:
    """What the large files page does with a verified file: link it in, never move it."""
    from demo_app.storage import UploadFolder

    folder = UploadFolder(str(tmp_path / "uploads"))
    merged = tmp_path / "merged"  # stands for the FileStore's content-addressed file
    merged.write_bytes(b"chunked bytes")
    digest = hashlib.sha256(b"chunked bytes").hexdigest()
    first = folder.add(str(merged), "../../movie.mp4", digest)
    second = folder.add(str(merged), "../../movie.mp4", digest)
    assert (first.name, second.name) == ("movie.mp4", "movie-2.mp4")
    assert merged.read_bytes() == b"chunked bytes"  # the source is left alone
    assert (tmp_path / "uploads" / "movie-2.mp4").read_bytes() == b"chunked bytes"
    listed = {f.name: f for f in folder.files()}
    assert listed["movie.mp4"] == first and first.size == 13 and first.sha256 == digest
    assert first.original == "../../movie.mp4"  # shown as text, never used as a path

    folder.remove("movie.mp4")
    folder.remove("movie.mp4")  # gone already: fine
    assert sorted(os.listdir(tmp_path / "uploads")) == [".meta", "movie-2.mp4"]
    assert os.listdir(tmp_path / "uploads" / ".meta") == ["movie-2.mp4.json"]


# -- in the browser -----------------------------------------------------------------------------

# Every state the widget is drawn in: its state, the bar's percentage, the status line.
RECORD_JS = """(id) => {
  const root = document.getElementById(id + "_component");
  const bar = document.getElementById(id + "_progressBar");
  const status = document.getElementById(id + "_status");
  const seen = (window.__seen = window.__seen || {})[id] = [];
  const snap = () => {
    const entry = {state: root.dataset.state, pct: Number(bar.getAttribute("aria-valuenow")),
                   status: status.textContent};
    const last = seen[seen.length - 1];
    if (!last || last.state !== entry.state || last.pct !== entry.pct
        || last.status !== entry.status) seen.push(entry);
  };
  const watch = new MutationObserver(snap);
  watch.observe(root, {attributes: true, attributeFilter: ["data-state"]});
  watch.observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
  watch.observe(status, {childList: true, characterData: true, subtree: true});
}"""


def screenshot(page: Any, name: str, selector: str | None = None) -> str:
    """A PNG under ``test-artifacts/``, with CSS transitions finished (the bar's cells fade
    in 0.2 s; a screenshot taken at once would show them half drawn)."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name + ".png")
    target = page if selector is None else page.locator(selector)
    options = {"full_page": True} if selector is None else {}
    target.screenshot(path=path, animations="disabled", **options)
    return path


class ChunkLog:
    """WSGI wrapper: the chunk number and answer of every chunk POST."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.posts: list[tuple[int, int]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] != "/uploadmeter/chunks":
            return self.app(environ, start_response)
        number = int(parse_qs(environ.get("QUERY_STRING", ""))["chunkNumber"][0])

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            self.posts.append((number, int(status[:3])))  # list.append is atomic
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with running_chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == [], errors  # no script error on any page


@pytest.mark.browser
def test_widget_shows_compressing_after_the_upload_then_the_download(
    page: Any, tmp_path: Any
) -> None:
    source = tmp_path / "data.csv"
    source.write_bytes(text_data(6 * MB))
    # Upload at 4 MiB/s (1.5 s), then compress at 2 MiB/s (3 s).
    with run_demo(tmp_path, DEMO_THROTTLE_KBPS=4096, DEMO_COMPRESS_KBPS=2048) as demo:
        page.goto(demo.url + "/")
        assert page.text_content("#archive_upload").strip() == "Upload and compress"
        page.evaluate(RECORD_JS, "archive")
        page.set_input_files("#archive", str(source))
        page.click("#archive_upload")

        page.wait_for_function(
            """() => {
              const m = /^Processing: compressing \\u2014 (\\d+)%$/
                .exec(document.getElementById("archive_status").textContent);
              return m && Number(m[1]) >= 20 && Number(m[1]) <= 80;
            }""",
            timeout=TIMEOUT_MS,
        )
        assert page.get_attribute("#archive_component", "data-state") == "processing"
        assert page.text_content("#archive_bytes") == "Uploaded 6.00 MB"
        assert page.is_enabled("#archive_cancel")
        screenshot(page, "compress-processing-widget", "#archive_component")
        screenshot(page, "compress-processing-page")

        page.wait_for_selector("#archive_stage3", state="visible", timeout=TIMEOUT_MS)
        screenshot(page, "compress-done-widget", "#archive_component")
        screenshot(page, "compress-done-page")

        history: list[dict[str, Any]] = page.evaluate("(id) => window.__seen[id]", "archive")
        states = [h["state"] for h in history]
        # uploading first, then processing, then done: never back.
        assert states.index("processing") > states.index("uploading")
        first_processing = states.index("processing")
        assert "uploading" not in states[first_processing:], states
        assert states[-1] == "done"
        uploading = [h["pct"] for h in history if h["state"] == "uploading"]
        assert len({p for p in uploading if 0 < p < 100}) >= 2, history
        compressing = []
        for h in history:
            if h["state"] == "processing":
                m = re.fullmatch(r"Processing: compressing \u2014 (\d+)%", h["status"])
                assert m is not None and int(m.group(1)) == h["pct"], h
                compressing.append(h["pct"])
        assert compressing == sorted(compressing), history
        assert len({p for p in compressing if 0 < p < 100}) >= 3, history

        stage3 = " ".join(page.text_content("#archive_stage3").split())
        assert "Uploaded data.csv (6.00 MB)" in stage3
        assert "Compressed data.csv (6.00 MB) to data.csv.gz" in stage3
        href = page.get_attribute("#archive_stage3 a.link-button.primary", "href")
        assert href == demo.url + "/files/data.csv.gz"
        files_link = page.get_attribute("#archive_stage3 a.link-button:not(.primary)", "href")
        assert files_link == demo.url + "/files"
        status, _, gz = Client(demo.url).request("GET", href[len(demo.url) :])
        assert status == 200 and gzip.decompress(gz) == source.read_bytes()
        ratio = page.text_content("#archive_stage3 [data-uploadmeter-result=ratio]")
        assert ratio == f"{len(gz) / source.stat().st_size:.1%}"


@pytest.mark.browser
def test_large_files_page_uploads_in_chunks_with_pause_and_resume(page: Any, tmp_path: Any) -> None:
    source = make_file(tmp_path / "big.bin", 8 * MIB)
    # Each 1 MiB chunk is read at 2 MiB/s: about 1.5 s in all, three chunks at a time.
    with run_demo(tmp_path, DEMO_THROTTLE_KBPS=2048) as demo:
        chunks = ChunkLog(demo.app.wsgi_app)
        demo.app.wsgi_app = chunks
        page.goto(demo.url + "/large")
        page.wait_for_function("() => !!(window.Uploader && window.UploadMeterChunked)")
        assert page.text_content("nav a[aria-current=page]") == "Large files"
        screenshot(page, "large-files-empty-page")
        page.set_input_files("#large", source)
        item = "#large_files li.uploadmeter-chunked-file"
        page.wait_for_function(
            """(sel) => {
              const li = document.querySelector(sel);
              return li && li.dataset.state === "uploading"
                && parseInt(li.querySelector(".uploadmeter-label").textContent, 10) >= 10;
            }""",
            arg=item,
            timeout=TIMEOUT_MS,
        )
        page.click(f"{item} .uploadmeter-pause")
        assert page.get_attribute(item, "data-state") == "paused"
        assert page.text_content(f"{item} .uploadmeter-status") == "Paused"
        assert page.is_visible(f"{item} .uploadmeter-resume")
        screenshot(page, "large-files-paused-widget", "#large_component")
        page.click(f"{item} .uploadmeter-resume")

        page.wait_for_function(
            "(sel) => document.querySelector(sel).dataset.state === 'done'",
            arg=item,
            timeout=TIMEOUT_MS,
        )
        screenshot(page, "large-files-done-page")
        assert page.text_content(f"{item} .uploadmeter-label") == "100%"
        link = page.locator(f"{item} a.uploadmeter-chunked-link")
        assert link.text_content() == "Open"
        assert link.get_attribute("href") == "/files/big.bin"

        # Sent in 8 chunks (one cut off by the pause may be sent again), stored whole and
        # verified, listed with its SHA-256.
        assert sorted({n for n, status in chunks.posts if status == 200}) == list(range(1, 9))
        digest = sha256_of(source)
        assert demo.saved_files() == ["big.bin"]
        assert sha256_of(os.path.join(demo.upload_folder, "big.bin")) == digest
        page.goto(demo.url + "/files")
        row = page.locator("table.files tbody tr", has_text="big.bin")
        assert row.locator("code.hash").text_content() == digest
        assert row.locator("td.num").text_content() == "8.39 MB"
        screenshot(page, "large-files-files-page")

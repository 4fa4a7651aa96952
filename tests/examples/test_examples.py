"""Every app in examples/ (the files the docs include) started and used over real HTTP.

Each example is imported from its file with its folders in a temporary directory, served
by werkzeug's threaded server on loopback, and driven the way its docs page says: the
progress component's upload and poll, tuspy and Uppy for tus, resumable.js for chunks,
a signed link for downloads.  The npm clients run in Debian's chromium (no network: Uppy
is bundled at test time with the pinned esbuild, as in tests/integration/test_tus_clients.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.asgi_servers import serve_asgi_in_thread
from tests.support.browser_support import make_file, running_chromium, sha256_of
from tests.support.servers import (
    ROOT,
    Client,
    multipart_body,
    new_upload_id,
    serve_in_thread,
    wait_until,
)

EXAMPLES = os.path.join(ROOT, "examples")
NODE_MODULES = os.path.join(ROOT, "tests", "js", "node_modules")
RESUMABLE_JS = os.path.join(NODE_MODULES, "resumablejs", "resumable.js")
MIB = 1024 * 1024


def load_example(name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``examples/<name>.py`` afresh, its folders under ``tmp_path``."""
    for variable, folder in [
        ("UPLOAD_FOLDER", "uploads"),
        ("RESUMABLE_FOLDER", "resumable"),
        ("STATIC_FOLDER", "static"),
        ("FILES_FOLDER", "files"),
    ]:
        monkeypatch.setenv(variable, str(tmp_path / folder))
    os.makedirs(tmp_path / "static", exist_ok=True)
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", os.path.join(EXAMPLES, f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with running_chromium([RESUMABLE_JS]) as chromium:
        yield chromium


def upload_with_the_component(base: str, tmp_path: Any) -> None:
    """What the component's script does: session, tracked POST, poll until ``done``."""
    client = Client(base)
    status, headers, page = client.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'id="document_progressBar"' in page and b"/uploadmeter/static/uploadmeter.js" in page
    assert "uploadmeter_session" in client.cookies  # the page gave the session
    data = os.urandom(3 * MIB)
    body, content_type = multipart_body([("document", "report.pdf", data)])
    upload_id = new_upload_id()
    status, _, answer = client.request(
        "POST", f"/upload?uploadmeter_id={upload_id}", body, {"Content-Type": content_type}
    )
    assert status == 200, answer
    record = client.progress(upload_id)
    assert record["state"] == "done", record
    assert record["bytes_received"] == len(body) and record["percentage"] == 100
    saved = record["result"]["saved"]
    assert saved in answer.decode()
    with open(tmp_path / "uploads" / saved, "rb") as f:
        assert f.read() == data
    # Another browser session cannot read it.
    assert Client(base).progress(upload_id)["state"] == "unknown"


def test_flask_example(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example("flask_app", tmp_path, monkeypatch)
    with serve_in_thread(example.app) as base:
        upload_with_the_component(base, tmp_path)


def test_wsgi_example(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example("wsgi_app", tmp_path, monkeypatch)
    with serve_in_thread(example.application) as base:
        upload_with_the_component(base, tmp_path)


def test_fastapi_example(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example("fastapi_app", tmp_path, monkeypatch)
    with serve_asgi_in_thread(example.app) as base:
        upload_with_the_component(base, tmp_path)


def build_uppy(static: Any) -> None:
    """The IIFE bundle the tus example's page loads as ``static/uppy.js``."""
    entry = static / "uppy-entry.js"
    entry.write_text(
        "import Uppy from '@uppy/core'; import Tus from '@uppy/tus';"
        " window.Uppy = Uppy; window.UppyTus = Tus;\n"
    )
    subprocess.run(
        [os.path.join(NODE_MODULES, ".bin", "esbuild"), str(entry), "--bundle",
         "--format=iife", f"--outfile={static / 'uppy.js'}", "--log-level=warning"],
        env=dict(os.environ, NODE_PATH=NODE_MODULES),
        check=True,
    )  # fmt: skip


def kept_files(tmp_path: Any) -> dict[str, bytes]:
    folder = tmp_path / "uploads"
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


@pytest.mark.browser
def test_tus_example_with_tuspy_and_uppy(
    browser: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tusclient.client import TusClient

    example = load_example("tus_uppy", tmp_path, monkeypatch)
    build_uppy(tmp_path / "static")
    with serve_in_thread(example.app) as base:
        # tuspy: the endpoint is all it needs, in chunks so the upload really resumes.
        data = os.urandom(2 * MIB + 123)
        source = tmp_path / "tuspy.bin"
        source.write_bytes(data)
        uploader = TusClient(base + "/uploadmeter/tus/").uploader(str(source), chunk_size=MIB)
        uploader.upload()
        digest = hashlib.sha256(data).hexdigest()
        assert kept_files(tmp_path)[digest] == data
        # Uppy in chromium, on the example's own page.
        path = make_file(tmp_path / "uppy.bin", 3 * MIB)
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.set_input_files("#file", path)
        page.wait_for_function(
            "() => /^(done|error)/.test(document.getElementById('status').textContent)",
            timeout=60_000,
        )
        assert page.text_content("#status") == "done" and errors == []
        context.close()
        digest = sha256_of(path)
        with open(path, "rb") as f:
            assert kept_files(tmp_path)[digest] == f.read()


@pytest.mark.browser
def test_resumable_example_with_resumable_js(
    browser: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example("resumable_chunks", tmp_path, monkeypatch)
    shutil.copy(RESUMABLE_JS, tmp_path / "static" / "resumable.js")
    with serve_in_thread(example.app) as base:
        path = make_file(tmp_path / "big.bin", 5 * MIB + 77)  # five 1 MiB chunks, the last longer
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        page.set_input_files("#file", path)
        page.wait_for_function(
            "() => /^(done|error)/.test(document.getElementById('status').textContent)",
            timeout=60_000,
        )
        assert page.text_content("#status") == "done" and errors == []
        context.close()
        with open(path, "rb") as f:
            assert kept_files(tmp_path) == {sha256_of(path): f.read()}


def test_download_links_example(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example("download_links", tmp_path, monkeypatch)
    (tmp_path / "files").mkdir()
    content = os.urandom(100_000)
    (tmp_path / "files" / "report.bin").write_bytes(content)
    (tmp_path / "files" / "notes.txt").write_text("hello\n")
    with serve_in_thread(example.app) as base:
        browser_client = Client(base)
        status, headers, body = browser_client.request(
            "GET", "/files/report.bin", headers={"Range": "bytes=10-19"}
        )
        assert (status, body) == (206, content[10:20])
        assert Client(base).request("GET", "/files/missing.bin")[0] == 404
        # A tracked download: the same browser reads its progress.
        download_id = new_upload_id()
        status, _, body = browser_client.request(
            "GET", f"/files/report.bin?uploadmeter_id={download_id}"
        )
        assert (status, body) == (200, content)
        # The server writes the outcome once the response is closed, which may be just
        # after the client has read the last byte.
        record = wait_until(
            lambda: (r := browser_client.progress(download_id))["state"] != "uploading" and r
        )
        assert record["state"] == "done" and record["result"]["bytes"] == len(content)
        status, _, body = browser_client.request(
            "GET", "/selection.zip?name=report.bin&name=notes.txt"
        )
        assert status == 200 and body[:4] == b"PK\x03\x04"
        # A signed link works without the session, never names the file, and cannot be forged.
        status, _, answer = browser_client.request("POST", "/files/report.bin/link")
        assert status == 200
        url = json.loads(answer)["url"]
        assert "report" not in url
        path = urlsplit(url).path
        stranger = Client(base)
        status, headers, body = stranger.request("GET", path)
        assert (status, body) == (200, content)
        assert "report.bin" in headers["content-disposition"]
        head, _, token = path.rpartition("/")
        tampered = f"{head}/{'B' if token[0] == 'A' else 'A'}{token[1:]}"
        assert stranger.request("GET", tampered)[0] == 403

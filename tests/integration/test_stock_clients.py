"""The unmodified npm chunk clients on default options, on a first visit, lose nothing.

resumable.js 1.1.0, @flowjs/flow.js 2.14.1 and simple-uploader.js 0.6.0 (tests/js, pinned)
are constructed with only ``target: "/uploadmeter/chunks"`` on a page of a Flask app that
uses ``UploadMeter(app)`` with default settings, served by gunicorn with three workers,
in Debian's chromium.  Each upload runs in a new browser context (no cookie yet): the
page, then a 6.5 MiB random file in the clients' default 1 MiB chunks (6 chunks, three
in parallel).  Every ``fileSuccess`` must match exactly one ``on_complete`` with the
file's SHA-256, and no upload may fail.

Before the page set the session cookie, the parallel first test requests were each given
a session of their own, the chunks landed in several sessions, and about 40 % of the
uploads were reported successful although ``on_complete`` never ran.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.asgi_servers import run_uvicorn
from tests.support.browser_support import make_file, running_chromium, sha256_of
from tests.support.chunked_app import read_completions
from tests.support.servers import run_gunicorn
from tests.support.stock_clients_app import SCRIPTS

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

MIB = 1024 * 1024
SIZE = 6 * MIB + MIB // 2
UPLOADS = 20
UPLOAD_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with running_chromium(SCRIPTS.values()) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def site(tmp_path_factory: Any) -> Iterator[tuple[str, str]]:
    with serve_site(tmp_path_factory, "wsgi") as found:
        yield found


@pytest.fixture(scope="module")
def uploads() -> int:
    """Uploads per client."""
    return UPLOADS


@contextlib.contextmanager
def serve_site(
    tmp_path_factory: Any, shell: str, store: str | None = None
) -> Iterator[tuple[str, str]]:
    """The clients' page and ``ChunkUploads`` on three workers: the Flask app under
    gunicorn (``"wsgi"``), or its ASGI twin under uvicorn (``"asgi"``)."""
    base = tmp_path_factory.mktemp("stock-clients")
    files, tmpdir = base / "files", base / "tmp"
    tmpdir.mkdir()
    env = {"UPLOADMETER_TEST_FILES": str(files), "TMPDIR": str(tmpdir)}  # the default store
    if store:
        env["UM_STORE"] = store
    if shell == "asgi":
        with run_uvicorn("tests.support.asgi_resumable_apps:chunk_site", workers=3, env=env) as srv:
            yield srv.url, str(files)
        return
    with run_gunicorn("tests.support.stock_clients_app:create_app()", workers=3, env=env) as url:
        yield url, str(files)


def upload_once(browser: Any, url: str, kind: str, path: str) -> list[Any]:
    """One first visit: a new context loads the page, then the client sends the file.
    Returns the client's events (``[{"event": "success"}]`` when it reports success)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url + "/")
        page.set_input_files("#file", path)  # a path: a buffer would cost seconds
        page.evaluate("(kind) => window.start(kind)", kind)
        try:
            page.wait_for_function("() => window.outcome.length > 0", timeout=UPLOAD_TIMEOUT_MS)
        except playwright_api.TimeoutError:
            return [{"event": "timeout"}]
        return page.evaluate("() => window.outcome")  # type: ignore[no-any-return]
    finally:
        context.close()


@pytest.mark.parametrize("kind", ["resumable", "flow", "simple-uploader"])
def test_stock_client_on_defaults_loses_no_upload(
    browser: Any, site: tuple[str, str], uploads: int, kind: str, tmp_path: Any
) -> None:
    url, directory = site
    already = len(read_completions(directory))
    sent: list[tuple[str, list[Any]]] = []
    for i in range(uploads):
        path = make_file(tmp_path / f"{kind}-{i}.bin", SIZE)
        digest = sha256_of(path)
        events = upload_once(browser, url, kind, path)
        os.unlink(path)
        sent.append((digest, events))
    completed = collections.Counter(c["sha256"] for c in read_completions(directory)[already:])
    succeeded = [digest for digest, events in sent if events == [{"event": "success"}]]
    lost = [d for d in succeeded if completed[d] != 1]  # success, but no (or two) on_complete
    failed = [events for _, events in sent if events != [{"event": "success"}]]
    unexpected = set(completed) - {digest for digest, _ in sent}
    summary = (
        f"{kind}: {len(succeeded)} of {uploads} reported success, {len(lost)} of them lost "
        f"(no on_complete with that SHA-256), {len(failed)} failed {failed[:3]}, "
        f"{len(unexpected)} unexpected completions"
    )
    print(summary)
    assert (len(succeeded), lost, unexpected) == (uploads, [], set()), summary
    assert all(completed[digest] == 1 for digest, _ in sent), summary

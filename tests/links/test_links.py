"""Signed links and shares: session-less downloads served by the middleware's mount.

Over real HTTP: UploadMeterMiddleware with DownloadLinks mounted at /uploadmeter/d, clients
without cookies (a download manager, a colleague).  The single-use mark is also raced on
every store backend (memory, SQLite, Redis).
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Response

from tests.support.download_support import open_zip, post_json, run_download_app, together
from tests.support.servers import Client, new_upload_id, serve_in_thread, wait_until
from uploadmeter import MemoryStore, RedisStore, SQLiteStore, UploadMeterMiddleware
from uploadmeter.downloads import Downloader, Item
from uploadmeter.links import (
    DownloadLinks,
    LinkInvalid,
    LinkRevoked,
    LinkSigner,
    LinkUsed,
)
from uploadmeter.stores import ProgressStore

CONTENT = bytes(range(256)) * 64


@dataclass
class Site:
    base: str
    links: DownloadLinks
    files: dict[str, Any]
    store: ProgressStore

    def get(self, url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return Client(self.base).request("GET", url, headers=headers)

    def post(self, url: str, form: str = "", **headers: str) -> tuple[int, dict[str, str], bytes]:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return Client(self.base).request("POST", url, body=form.encode(), headers=headers)


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """The links mounted on each shell's middleware, the same way."""
    folder = tmp_path_factory.mktemp("files")
    (folder / "q3-report.pdf").write_bytes(CONTENT)
    files: dict[str, Any] = {
        "report": Item(folder / "q3-report.pdf", "季度报告.pdf"),
        "notes": Item("meeting notes\n", "notes.txt"),
        "gone": folder / "deleted.pdf",
    }

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response("the app")(environ, start_response)

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the app"})

    store = MemoryStore()
    meter: Any
    if request.param == "asgi":
        from uploadmeter.asgi import UploadMeterMiddleware as AsgiMeter

        meter = AsgiMeter(asgi_app, secret_key="cookie key", store=store)
    else:
        meter = UploadMeterMiddleware(app, secret_key="cookie key", store=store)
    links = DownloadLinks(
        resolver=lambda target: files[target],  # KeyError -> 404
        secret_key=["old key", "new key"],
        store=meter.store,
        downloader=Downloader(root=folder),
    )
    meter.mount("/d", links)
    if request.param == "asgi":
        from tests.support.asgi_servers import serve_asgi_in_thread

        with serve_asgi_in_thread(meter) as base:
            yield Site(base, links, files, store)
        return
    with serve_in_thread(meter) as base:
        yield Site(base, links, files, store)


# -- signed links ------------------------------------------------------------------------


def test_signed_link_downloads_without_session_and_hides_the_target(site: Site) -> None:
    url = site.links.signed_url("report", expires_in=60)
    assert url.startswith("/uploadmeter/d/l/")
    # An opaque token, no path: neither the target nor the file it resolves to.
    assert "report" not in url and "q3-report" not in url

    status, headers, body = site.get(url)
    assert (status, body) == (200, CONTENT)
    assert parse_options_header(headers["content-disposition"])[1]["filename"] == "季度报告.pdf"
    assert headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in headers  # nothing session-bound about it

    status, headers, body = site.get(url, Range="bytes=256-511")
    assert (status, body) == (206, CONTENT[256:512])
    status, _, _ = site.get(url, **{"If-None-Match": headers["etag"]})
    assert status == 304


def test_signed_url_with_script_root_and_external() -> None:
    links = DownloadLinks(lambda t: t, "k", MemoryStore(), base_path="/uploadmeter/d")
    environ = {
        "SCRIPT_NAME": "/app",
        "wsgi.url_scheme": "https",
        "HTTP_HOST": "files.example.com",
        "SERVER_NAME": "files.example.com",
        "SERVER_PORT": "443",
    }
    assert links.signed_url("x", environ=environ).startswith("/app/uploadmeter/d/l/")
    assert links.signed_url("x", environ=environ, external=True).startswith(
        "https://files.example.com/app/uploadmeter/d/l/"
    )


def test_signed_url_from_an_asgi_scope_or_request() -> None:
    links = DownloadLinks(lambda t: t, "k", MemoryStore(), base_path="/uploadmeter/d")
    scope = {
        "type": "http",
        "root_path": "/app",
        "scheme": "https",
        "headers": [(b"host", b"files.example.com")],
        "server": ("10.0.0.1", 8443),
    }
    assert links.signed_url("x", environ=scope).startswith("/app/uploadmeter/d/l/")
    assert links.share_url("s1", environ=scope, external=True) == (
        "https://files.example.com/app/uploadmeter/d/s/s1"
    )

    class Request:  # Starlette's, FastAPI's, ...: the scope is .scope
        pass

    request = Request()
    request.scope = dict(scope, headers=[])  # type: ignore[attr-defined]
    assert links.signed_url("x", environ=request, external=True).startswith(
        "https://10.0.0.1:8443/app/uploadmeter/d/l/"
    )


@pytest.mark.parametrize("accept", ["application/json", "text/html"])
def test_tampered_and_foreign_links_are_403(site: Site, accept: str) -> None:
    url = site.links.signed_url("notes")
    token = url.rsplit("/", 1)[1]
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    foreign = LinkSigner("somebody else's key", site.store).create("notes").token
    for bad in [flipped, token[:-8], foreign, "garbage", token + "x"]:
        status, _, body = site.get(f"/uploadmeter/d/l/{bad}", Accept=accept)
        assert status == 403, bad
        assert b"Traceback" not in body
        if accept == "application/json":
            assert json.loads(body) == {
                "error": {"status": 403, "message": "This link is not valid."}
            }
        else:
            assert body.startswith(b"<!doctype html>")
            assert b"This link is not valid." in body


def test_key_rotation(site: Site) -> None:
    old = LinkSigner("old key", site.store).create("notes")  # made before the rotation
    assert site.get(f"/uploadmeter/d/l/{old.token}")[2] == b"meeting notes\n"
    new = site.links.signer.create("notes")  # the app signs with the newest key
    assert LinkSigner("new key", site.store).verify(new.token).target == "notes"
    with pytest.raises(LinkInvalid):
        LinkSigner("old key", site.store).verify(new.token)


def test_expired_link_is_410(site: Site) -> None:
    url = site.links.signed_url("notes", expires_in=0.3)

    def expired() -> Any:
        status, _, body = site.get(url, Accept="application/json")
        return status == 410 and json.loads(body)

    body = wait_until(expired, timeout=5)
    assert body["error"] == {"status": 410, "message": "This link has expired."}


def test_single_use_link(site: Site) -> None:
    url = site.links.signed_url("notes", single_use=True)
    head = Client(site.base).request("HEAD", url)
    assert head[0] == 200  # looking does not use it up
    assert site.get(url)[0] == 200
    status, _, body = site.get(url, Accept="application/json")
    assert (status, json.loads(body)["error"]["message"]) == (410, "This link was already used.")


def test_single_use_link_raced_over_http(site: Site) -> None:
    url = site.links.signed_url("notes", single_use=True)
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    lock = threading.Lock()

    def fetch() -> None:
        barrier.wait()
        status = site.get(url)[0]
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(statuses) == [200] + [410] * 7


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_single_use_is_atomic_on_every_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "memory":
        store: ProgressStore = MemoryStore()
    elif backend == "sqlite":
        store = SQLiteStore(str(tmp_path / "links.sqlite3"))
    else:
        store = RedisStore(request.getfixturevalue("redis_url"))
    signer = LinkSigner("k", store)
    link = signer.create("t", single_use=True)
    barrier = threading.Barrier(10)
    wins: list[bool] = []

    def use() -> None:
        verified = signer.verify(link.token)
        barrier.wait()
        try:
            signer.use(verified)
            wins.append(True)
        except LinkUsed:
            wins.append(False)

    threads = [threading.Thread(target=use) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(wins) == [False] * 9 + [True]
    with pytest.raises(LinkUsed):
        signer.verify(link.token)
    store.close()


def test_revoked_link_is_410(site: Site) -> None:
    url = site.links.signed_url("notes")
    assert site.get(url)[0] == 200
    assert site.links.signer.revoke(url.rsplit("/", 1)[1]) is True
    status, _, body = site.get(url, Accept="application/json")
    assert (status, json.loads(body)["error"]["message"]) == (410, "This link was revoked.")


def test_link_to_a_missing_file_is_404_and_not_used_up(site: Site) -> None:
    for target in ["gone", "never-existed"]:
        url = site.links.signed_url(target, single_use=True)
        status, _, body = site.get(url, Accept="application/json")
        assert status == 404, body
        site.links.signer.verify(url.rsplit("/", 1)[1])  # still valid: nothing was sent


def test_unknown_paths_and_methods(site: Site) -> None:
    status, _, body = site.get("/uploadmeter/d/nothing", Accept="application/json")
    assert (status, json.loads(body)["error"]["message"]) == (404, "No such download link.")
    status, headers, _ = Client(site.base).request("DELETE", "/uploadmeter/d/l/abc")
    assert status == 405 and "GET" in headers["allow"]


# -- shares ------------------------------------------------------------------------------


def _share_path(site: Site, share_id: str) -> str:
    return site.links.share_url(share_id)


def test_share_with_code(site: Site) -> None:
    share = site.links.share("report", code=True, filename="Q3 report.pdf")
    assert share.code and len(share.code) == 6
    path = _share_path(site, share.id)

    status, headers, body = site.get(path)
    assert status == 200
    assert b"Q3 report.pdf" in body and b"name=code" in body
    assert headers["x-robots-tag"] == "noindex"

    status, _, body = site.post(path, "code=WRONG1")
    assert status == 403
    assert b"The extraction code is not right. 4 attempt(s) left." in body

    status, headers, _ = site.post(path, f"code={share.code.lower()}")  # case does not matter
    assert status == 303
    link = urlsplit(headers["location"]).path
    assert link.startswith("/uploadmeter/d/l/")
    status, headers, body = site.get(link)
    assert (status, body) == (200, CONTENT)
    assert parse_options_header(headers["content-disposition"])[1]["filename"] == "Q3 report.pdf"

    info = site.links.shares.get(share.id)
    assert (info.views, info.downloads, info.code) == (1, 1, None)


def test_share_code_guesses_are_rate_limited(site: Site) -> None:
    share = site.links.share("notes", code="SECRET")
    path = _share_path(site, share.id)
    for left in range(4, -1, -1):
        status, _, body = site.post(path, "code=guess1", Accept="application/json")
        assert status == 403
        assert json.loads(body)["error"]["message"].endswith(f"{left} attempt(s) left.")
    # Even the right code waits now: counting every attempt is what makes the limit atomic.
    status, headers, body = site.post(path, "code=SECRET", Accept="application/json")
    assert status == 429
    assert int(headers["retry-after"]) > 0
    status, headers, body = site.post(path, "code=SECRET")
    assert status == 429 and b"Too many attempts" in body
    # Other shares are not affected.
    other = site.links.share("notes", code="SECRET")
    assert site.post(_share_path(site, other.id), "code=SECRET")[0] == 303


def test_share_without_code_json_api_and_limits(site: Site) -> None:
    share = site.links.share("notes", max_downloads=1)
    path = _share_path(site, share.id)
    status, _, body = site.get(path, Accept="application/json")
    assert json.loads(body) == {
        "id": share.id,
        "filename": None,
        "expires_at": share.expires_at,
        "code_required": False,
    }
    status, _, body = site.post(path, Accept="application/json")
    url = json.loads(body)["url"]
    assert site.get(url)[2] == b"meeting notes\n"
    assert site.get(url)[0] == 410  # with a limit, the link handed out is single-use
    status, _, body = site.post(path, Accept="application/json")
    assert (status, json.loads(body)["error"]["message"]) == (
        410,
        "This share reached its download limit.",
    )


def test_share_revoked_expired_unknown(site: Site) -> None:
    share = site.links.share("notes")
    assert site.links.shares.revoke(share.id)
    status, _, body = site.get(_share_path(site, share.id), Accept="application/json")
    assert (status, json.loads(body)["error"]["message"]) == (410, "This share was revoked.")

    short = site.links.share("notes", expires_in=0.3)

    def expired() -> Any:
        status, _, body = site.get(_share_path(site, short.id), Accept="application/json")
        return status == 410 and json.loads(body)

    assert wait_until(expired, timeout=5)["error"]["message"] == "This share has expired."
    status, _, body = site.get(_share_path(site, "no-such-share"), Accept="text/html")
    assert status == 404 and b"There is no such share." in body


def test_revoking_a_share_revokes_the_links_it_handed_out(site: Site) -> None:
    share = site.links.share("notes")
    status, _, body = site.post(_share_path(site, share.id), Accept="application/json")
    url = json.loads(body)["url"]
    assert site.get(url)[0] == 200
    site.links.shares.revoke(share.id)
    status, _, body = site.get(url, Accept="application/json")
    assert (status, json.loads(body)["error"]["message"]) == (410, "This share was revoked.")


def test_revoke_by_id_once(site: Site) -> None:
    link = site.links.signer.create("notes")
    assert site.links.signer.revoke(link.id) is True
    assert site.links.signer.revoke(link.token) is False  # already revoked
    with pytest.raises(LinkRevoked):
        site.links.signer.verify(link.token)


def test_oversized_share_form_is_a_short_413(site: Site) -> None:
    share = site.links.share("notes", code="SECRET")
    form = "code=" + "A" * 600_000  # past werkzeug's form memory limit
    status, _, body = site.post(_share_path(site, share.id), form, Accept="application/json")
    assert status == 413
    assert json.loads(body)["error"]["status"] == 413


def test_share_code_rules() -> None:
    links = DownloadLinks(lambda t: t, "k", MemoryStore())
    with pytest.raises(ValueError):
        links.share("x", code="abc")  # too short to survive guessing
    assert links.share("x", code=False).code_required is False
    assert links.share("x", code=True).code_required is True


# -- several gunicorn workers on the default SQLite store ---------------------------------


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("workers")
    with run_download_app(tmp, tmp, tmp / "gunicorn.log") as base:
        yield base


@pytest.mark.gunicorn
def test_single_use_link_is_honoured_once_across_workers(workers: str) -> None:
    url = post_json(workers, "/make/link?target=notes&single_use=1")["url"]
    results = together(workers, 3, "GET", url)
    assert len({headers["x-worker-pid"] for _, headers, _ in results}) == 3  # 3 processes
    assert sorted(status for status, _, _ in results) == [200, 410, 410]
    assert [body for status, _, body in results if status == 200] == [b"meeting notes\n"]
    assert Client(workers).request("GET", url)[0] == 410


@pytest.mark.gunicorn
def test_share_code_rate_limit_holds_across_workers(workers: str) -> None:
    path = post_json(workers, "/make/share?target=notes&code=SECRET7")["url"]
    form = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    statuses = []
    for _ in range(2):  # 6 wrong guesses, 3 at a time, each in its own worker
        results = together(workers, 3, "POST", path, body="code=WRONG99", **form)
        assert len({headers["x-worker-pid"] for _, headers, _ in results}) == 3
        statuses += [status for status, _, _ in results]
    assert sorted(statuses) == [403] * 5 + [429]
    status, _, body = Client(workers).request("POST", path, b"code=SECRET7", form)
    assert status == 429, body  # the right code too, until the window passes


# -- the demo ----------------------------------------------------------------------------


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Any]:
    from tests.support.browser_support import run_demo

    with run_demo(tmp_path) as running:
        from demo_app.storage import UploadFolder

        assert "downloads" in running.app.blueprints  # create_app wires the page
        folder = UploadFolder(running.upload_folder)
        os.makedirs(folder.root, exist_ok=True)
        folder.save(io.BytesIO(CONTENT), "二维码.png")
        folder.save(io.BytesIO(b"notes\n"), "notes.txt")
        yield running


def test_demo_downloads(demo: Any) -> None:
    client = Client(demo.url)
    status, _, page = client.request("GET", "/downloads/")
    assert status == 200
    assert "二维码.png".encode() in page and b'name="name" value="png"' in page

    status, headers, body = client.request(
        "GET", "/downloads/file/png", headers={"Range": "bytes=0-99"}
    )
    assert (status, body) == (206, CONTENT[:100])
    assert parse_options_header(headers["content-disposition"])[1]["filename"] == "二维码.png"
    for bad in ["/downloads/file/.meta", "/downloads/file/nope", "/downloads/zip?name=.meta"]:
        assert client.request("GET", bad)[0] == 404, bad

    uid = new_upload_id()
    status, headers, body = client.request(
        "GET", f"/downloads/zip?name=png&name=notes.txt&uploadmeter_id={uid}"
    )
    assert status == 200
    archive = open_zip(body)
    assert archive.namelist() == ["二维码.png", "notes.txt"]
    assert archive.read("二维码.png") == CONTENT
    record = wait_until(lambda: (r := client.progress(uid))["state"] == "done" and r)
    assert record["processing"]["done"] == 2
    assert record["result"]["filename"] == "uploads.zip"

    status, _, body = client.request("POST", "/downloads/link/png")
    url = json.loads(body)["url"]
    assert url.startswith(demo.url + "/uploadmeter/d/l/")
    assert Client(demo.url).request("GET", urlsplit(url).path)[2] == CONTENT  # no cookie

    status, _, body = client.request(
        "POST",
        "/downloads/share/notes.txt",
        body=b"code=on&days=2",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    shared = json.loads(body)
    colleague = Client(demo.url)
    path = urlsplit(shared["url"]).path
    assert colleague.request("GET", path)[0] == 200
    status, headers, _ = colleague.request(
        "POST",
        path,
        body=f"code={shared['code']}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 303
    assert colleague.request("GET", urlsplit(headers["location"]).path)[2] == b"notes\n"


@pytest.mark.browser
def test_demo_downloads_in_chromium(demo: Any, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.support.browser_support import launch_chromium, screenshot

    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(accept_downloads=True)
            page = context.new_page()
            page.goto(demo.url + "/downloads/")

            # One file: Chromium takes the UTF-8 name from filename*.
            with page.expect_download() as one:
                page.get_by_role("link", name="二维码.png").click()
            assert one.value.suggested_filename == "二维码.png"
            assert Path(one.value.path()).read_bytes() == CONTENT

            page.get_by_role("button", name="Select all").click()
            with page.expect_download() as zipped:
                page.get_by_role("button", name="Download selected as zip").click()
            assert zipped.value.suggested_filename == "uploads.zip"
            archive = open_zip(Path(zipped.value.path()).read_bytes())
            assert sorted(archive.namelist()) == ["notes.txt", "二维码.png"]
            page.get_by_text("Done: uploads.zip is in your downloads.").wait_for()
            assert page.get_by_role("progressbar").get_attribute("aria-valuenow") == "100"
            assert "2 of 2 files" in page.locator("#dl-status").inner_text()
            screenshot(page, "downloads-zip-done", "#dl-progress")

            page.locator(".dl-actions").first.get_by_role("button", name="Share").click()
            code = page.locator("[data-role=share-code]").first
            code.wait_for()
            assert code.inner_text().startswith("Extraction code: ")
            screenshot(page, "downloads-page")
            share_url = page.get_by_label("Share link").first.input_value()

            # The colleague: a fresh browser context, no session, only the link and code.
            colleague = browser.new_context(accept_downloads=True).new_page()
            colleague.goto(share_url)
            colleague.get_by_label("Extraction code").fill("WRONG9")
            colleague.get_by_role("button", name="Download").click()
            colleague.get_by_text("The extraction code is not right.").wait_for()
            colleague.get_by_label("Extraction code").fill(code.inner_text().split(": ")[1])
            with colleague.expect_download() as shared:
                colleague.get_by_role("button", name="Download").click()
            assert shared.value.suggested_filename == "二维码.png"
            screenshot(colleague, "downloads-share-page")
        finally:
            browser.close()


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text/html"),
        ("*/*", "text/html"),
        ("application/json", "application/json"),
        ("text/html", "text/html"),
        ("text/html;q=0.5, application/json", "application/json"),
        ("application/*", "application/json"),
        ("image/png", "text/html"),
    ],
)
def test_share_page_is_html_unless_json_is_preferred(
    site: Site, accept: str | None, expected: str
) -> None:
    share = site.links.share("notes")
    headers = {} if accept is None else {"Accept": accept}
    status, got, _ = site.get(site.links.share_url(share.id), **headers)
    assert status == 200 and got["content-type"].split(";")[0] == expected


def test_links_mounted_like_every_endpoint_build_urls_under_the_mount() -> None:
    """One mounting idiom: ``meter.mount(path, DownloadLinks(...))`` as for ChunkUploads,
    and the links it makes resolve under that prefix and path."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response("the app")(environ, start_response)

    meter = UploadMeterMiddleware(app, secret_key="cookie key", prefix="/um")
    links = DownloadLinks(
        {"notes": Item("meeting notes\n", "notes.txt")}.__getitem__, "k", meter.store
    )
    meter.mount("/files", links)
    url = links.signed_url("notes")
    share_url = links.share_url(links.share("notes").id)
    assert url.startswith("/um/files/l/") and share_url.startswith("/um/files/s/")
    with serve_in_thread(meter) as base:
        assert Client(base).request("GET", url)[::2] == (200, b"meeting notes\n")
        assert Client(base).request("GET", share_url, headers={"Accept": "text/html"})[0] == 200

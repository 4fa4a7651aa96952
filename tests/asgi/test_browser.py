"""The component on a FastAPI page in Debian's chromium: stage 1 -> 2 -> 3 under uvicorn,
the upload read at a set rate by the app (the demo's server-side throttle), every drawn
percentage recorded in the page; and one browser session shared by a WSGI app and an
ASGI app on one Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.asgi_servers import run_uvicorn
from tests.support.browser_support import make_file, running_chromium, screenshot, sha256_of
from tests.support.servers import run_gunicorn
from tests.ui.test_browser import RECORD_JS, check_bar_history, seen, stages, wait_percent

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser

MB = 1_000_000
STAGE_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with running_chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 720})
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()
    assert page.errors == [], page.errors


def test_fastapi_page_goes_through_three_stages(page: Any, tmp_path: Any) -> None:
    upload_dir = tmp_path / "uploads"
    upload_dir.mkdir()
    source = make_file(tmp_path / "report.bin", 12 * MB)
    env = {
        "UM_UPLOAD_DIR": str(upload_dir),
        "UM_STORE": f"sqlite://{tmp_path}/um.sqlite3",
        "UM_THROTTLE_KBPS": "3072",
        "UM_UPDATE_INTERVAL": "0.2",
    }
    with run_uvicorn("tests.support.asgi_apps:make_fastapi_page_app", env=env) as server:
        page.goto(server.url + "/")
        assert stages(page, "document") == ["_stage1"]
        assert page.locator("#document_progressBar > span").count() == 100
        screenshot(page, "asgi-stage1-widget", "#document_component")

        page.set_input_files("#document", source)
        page.evaluate(RECORD_JS, "document")
        page.click("#document_upload")

        wait_percent(page, "document", 25, 75)
        assert stages(page, "document") == ["_stage2"]
        assert page.text_content("#document_fileNames") == "report.bin"
        screenshot(page, "asgi-stage2-widget", "#document_component")

        page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        assert stages(page, "document") == ["_stage3"]
        screenshot(page, "asgi-stage3-widget", "#document_component")
        pcts = check_bar_history(seen(page, "document"))
        assert len({p for p in pcts if 0 < p < 100}) >= 4, pcts
        assert pcts[-1] == 100
        saved = page.text_content("#document_stage3 [data-uploadmeter-result=saved]")
        assert saved == "report.bin"
        assert sha256_of(str(upload_dir / "report.bin")) == sha256_of(source)


@pytest.mark.redis
@pytest.mark.gunicorn
def test_one_browser_session_sees_its_asgi_upload_on_the_wsgi_app(
    page: Any, tmp_path: Any, redis_url: str
) -> None:
    """The widget uploads to the FastAPI page (uvicorn); the same browser session asks the
    WSGI app (gunicorn) on the same Redis, and sees the upload move and end."""
    upload_dir = tmp_path / "uploads"
    upload_dir.mkdir()
    source = make_file(tmp_path / "shared.bin", 8 * MB)
    env = {"UM_UPLOAD_DIR": str(upload_dir), "UM_STORE": redis_url, "UM_THROTTLE_KBPS": "2048"}
    with (
        run_uvicorn("tests.support.asgi_apps:make_fastapi_page_app", env=env) as asgi,
        run_gunicorn("tests.support.e2e_apps:make_plain_app()", workers=2, env=env) as wsgi,
    ):
        page.goto(asgi.url + "/")
        page.set_input_files("#document", source)
        page.click("#document_upload")
        wait_percent(page, "document", 10, 80)
        upload_id = page.evaluate(
            "UploadMeter.widget(document.getElementById('document_component')).uploadId"
        )

        def on_wsgi() -> dict[str, Any]:
            # The browser context's own requests: the same cookie jar as the page's.
            answer = page.context.request.get(f"{wsgi}/uploadmeter/progress?id={upload_id}")
            assert answer.status == 200
            return json.loads(answer.text())  # type: ignore[no-any-return]

        record = on_wsgi()
        assert record["state"] == "uploading" and 0 < record["percentage"] < 100, record
        page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
        record = on_wsgi()
        assert record["state"] == "done" and record["result"] == {"saved": "shared.bin"}
        assert record["bytes_received"] > 8 * MB

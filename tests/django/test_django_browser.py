"""The Django template tag in Debian's chromium: the test project's page (``{% load
uploadmeter %}``, ``{% csrf_token %}``, ``{% uploadmeter_file_upload %}``) through stages
1 -> 2 -> 3, with Django's CSRF check on and the server reading at a set rate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.wsgi import get_wsgi_application
from django.test import override_settings

import uploadmeter.django
from tests.support.browser_support import make_file, running_chromium, sha256_of
from tests.support.chunked_app import completion_log, read_completions
from tests.support.django_project.views import UPLOADER_JS
from tests.support.servers import serve_in_thread
from tests.ui.test_browser import (
    RECORD_JS,
    STAGE_TIMEOUT_MS,
    check_bar_history,
    seen,
    stages,
    wait_percent,
)
from uploadmeter.resumable import ChunkUploads, FileStore

pytestmark = pytest.mark.browser

MB = 1_000_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with running_chromium([UPLOADER_JS]) as chromium:
        yield chromium


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == []


@pytest.fixture
def site(tmp_path: Any) -> Iterator[str]:
    settings = {"STORE": f"sqlite://{tmp_path}/um.sqlite3", "UPDATE_INTERVAL": 0}
    # Django's reads of the file go at 2 MiB/s (the project's upload handler), so the
    # browser's bar has time to move.
    with (
        override_settings(UPLOADMETER=settings, THROTTLE_KBPS=2048),
        serve_in_thread(uploadmeter.django.wrap(get_wsgi_application())) as url,
    ):
        yield url


def test_template_tag_goes_through_three_stages_with_csrf(
    page: Any, site: str, tmp_path: Any
) -> None:
    source = make_file(tmp_path / "report.bin", 6 * MB)
    page.goto(site + "/")
    assert stages(page, "document") == ["_stage1"]
    assert page.locator("#document_progressBar > span").count() == 100

    page.set_input_files("#document", source)
    page.evaluate(RECORD_JS, "document")
    page.click("#document_upload")
    wait_percent(page, "document", 10, 90)
    assert stages(page, "document") == ["_stage2"]
    assert page.text_content("#document_fileNames") == "report.bin"

    page.wait_for_selector("#document_stage3", state="visible", timeout=STAGE_TIMEOUT_MS)
    assert stages(page, "document") == ["_stage3"]
    pcts = check_bar_history(seen(page, "document"))
    assert len({p for p in pcts if 0 < p < 100}) >= 4, pcts  # the bar moved, in steps
    assert pcts[-1] == 100
    # Stage 3 is the tag's body, rendered by Django (its context, its escaping), filled
    # with the view's result: the SHA-256 of what Django parsed into request.FILES.
    assert "Thanks & <welcome> SHA-256" in page.text_content("#document_stage3")
    sha256 = page.text_content("#document_stage3 [data-uploadmeter-result=sha256]")
    assert sha256 == sha256_of(source)

    # The hidden-iframe submit carried the form's CSRF token: without it Django refuses.
    page.click("#document_stage3 [data-uploadmeter-reset]")
    page.evaluate("document.querySelector('[name=csrfmiddlewaretoken]').remove()")
    page.set_input_files("#document", source)
    page.click("#document_upload")
    page.wait_for_selector("#document_error", state="visible", timeout=STAGE_TIMEOUT_MS)
    assert page.text_content("#document_errorMessage") == (
        "The application rejected the upload (403 Forbidden)."
    )


def test_chunked_uploader_tag_uploads_in_chunks(page: Any, tmp_path: Any) -> None:
    """``{% uploadmeter_chunked_upload %}`` on a Django page, its chunks to ChunkUploads
    mounted on the middleware ``wrap()`` returned, as the docs' wsgi.py does."""
    files = str(tmp_path / "files")
    settings = {"STORE": f"sqlite://{tmp_path}/um.sqlite3", "UPDATE_INTERVAL": 0}
    with override_settings(UPLOADMETER=settings):
        application = uploadmeter.django.wrap(get_wsgi_application())
        application.mount(
            "/chunks",
            ChunkUploads(application, FileStore(files), on_complete=completion_log(files)),
        )
        source = make_file(tmp_path / "clip.bin", 1_500_000)  # six 256 KiB chunks
        with serve_in_thread(application) as url:
            page.goto(url + "/large")
            page.wait_for_function("() => !!(window.UploadMeterChunked && window.Uploader)")
            page.set_input_files("#videos", source)
            page.wait_for_function(
                "() => document.querySelector('.uploadmeter-chunked-file')"
                "?.getAttribute('data-state') === 'done'",
                timeout=STAGE_TIMEOUT_MS,
            )
            assert page.inner_text(".uploadmeter-chunked-file .uploadmeter-label") == "100%"
    [completed] = read_completions(files)
    assert (completed["filename"], completed["size"]) == ("clip.bin", 1_500_000)
    assert completed["sha256"] == sha256_of(source) == sha256_of(completed["path"])

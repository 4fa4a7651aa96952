"""The npm resumable clients on default options against the ASGI shell under uvicorn
``--workers 3``: the tests of :mod:`tests.integration.test_tus_clients` and
:mod:`tests.integration.test_stock_clients` (chunks), run as they are on an ASGI twin of
their Flask app (:mod:`tests.support.asgi_resumable_apps`: the same page, the same
``TusUploads`` / ``ChunkUploads`` mounted with ``meter.mount``), on the default store and
on Redis, with fewer uploads per client than the WSGI runs (the same checks: nothing
lost, one ``on_complete`` per success, the record ``done`` with the file's SHA-256).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration import test_stock_clients as chunk_clients
from tests.integration import test_tus_clients as tus_clients

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.gunicorn  # several server processes (uvicorn --workers 3)

STORES = ["default", "redis"]


def _store(request: Any) -> str | None:
    """The store of a module-scoped site: the session's redis-server (the suite's one,
    as ``redis_url`` gives it to function-scoped tests), or the default store."""
    return str(request.getfixturevalue("redis_server")[0]) if request.param == "redis" else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from tests.support.browser_support import running_chromium
    from tests.support.stock_clients_app import SCRIPTS

    with running_chromium(SCRIPTS.values()) as chromium:
        yield chromium


@pytest.fixture(scope="module", params=STORES)
def tus_site(tmp_path_factory: Any, request: Any) -> Iterator[tuple[str, str, str]]:
    with tus_clients.serve_site(tmp_path_factory, "asgi", _store(request)) as found:
        yield found


@pytest.fixture(scope="module", params=STORES)
def chunk_site(tmp_path_factory: Any, request: Any) -> Iterator[tuple[str, str]]:
    with chunk_clients.serve_site(tmp_path_factory, "asgi", _store(request)) as found:
        yield found


UPLOADS = 3  # per client, store and test


@pytest.mark.browser
@pytest.mark.parametrize("kind", ["uppy", "tus-js-client"])
def test_tus_browser_clients_lose_nothing(
    browser: Any, tus_site: tuple[str, str, str], tmp_path: Any, kind: str
) -> None:
    tus_clients.test_browser_clients_on_a_first_visit_lose_nothing(
        browser, tus_site, UPLOADS, tmp_path, kind
    )


def test_tus_js_client_in_node_loses_nothing(tus_site: tuple[str, str, str], tmp_path: Any) -> None:
    tus_clients.test_tus_js_client_in_node_loses_nothing(tus_site, UPLOADS, tmp_path)


def test_tus_js_client_in_node_with_parallel_uploads_loses_nothing(
    tus_site: tuple[str, str, str], tmp_path: Any
) -> None:
    tus_clients.test_tus_js_client_in_node_with_parallel_uploads_loses_nothing(
        tus_site, 4, tmp_path
    )


def test_tus_js_client_in_node_stops_and_a_new_client_resumes(
    tus_site: tuple[str, str, str], tmp_path: Any
) -> None:
    tus_clients.test_tus_js_client_in_node_stops_and_a_new_client_resumes(tus_site, tmp_path)


@pytest.mark.browser
def test_resumable_js_on_defaults_loses_no_upload(
    browser: Any, chunk_site: tuple[str, str], tmp_path: Any
) -> None:
    chunk_clients.test_stock_client_on_defaults_loses_no_upload(
        browser, chunk_site, UPLOADS, "resumable", tmp_path
    )

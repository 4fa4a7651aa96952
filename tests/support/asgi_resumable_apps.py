"""The pages of the tus and chunk client tests, on the ASGI shell.

The same page, scripts and endpoints as :mod:`tests.support.tus_clients_app` and
:mod:`tests.support.stock_clients_app` (same environment variables), as a Starlette app
behind :class:`uploadmeter.asgi.UploadMeterMiddleware` on default settings, with
``TusUploads`` / ``ChunkUploads`` mounted exactly as under WSGI.  ``UM_STORE`` picks the
store (default: the default store, in ``TMPDIR``)::

    uvicorn --factory --workers 3 tests.support.asgi_resumable_apps:tus_site
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support import stock_clients_app, tus_clients_app
from tests.support.chunked_app import completion_log
from uploadmeter.asgi import UploadMeterMiddleware
from uploadmeter.resumable import ChunkUploads, FileStore

SECRET = "asgi-resumable-test"


def _site(page: str, scripts: dict[str, str]) -> Starlette:
    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def script(request: Request) -> Response:
        path = scripts.get(request.path_params["name"])
        if not path or not os.path.exists(path):
            return PlainTextResponse("no such script", status_code=404)
        return FileResponse(path, media_type="text/javascript")

    return Starlette(routes=[Route("/", index), Route("/js/{name}", script)])


def _meter(app: Starlette) -> UploadMeterMiddleware:
    return UploadMeterMiddleware(app, secret_key=SECRET, store=os.environ.get("UM_STORE"))


def tus_site() -> UploadMeterMiddleware:
    meter = _meter(_site(tus_clients_app.PAGE, tus_clients_app.client_scripts()))
    meter.mount("/tus", tus_clients_app.tus_endpoint(meter))
    return meter


def chunk_site() -> UploadMeterMiddleware:
    meter = _meter(_site(stock_clients_app.PAGE, stock_clients_app.SCRIPTS))
    directory = os.environ["UPLOADMETER_TEST_FILES"]
    chunks = ChunkUploads(meter, FileStore(directory), on_complete=completion_log(directory))
    meter.mount("/chunks", chunks)
    return meter

"""One upload view per ASGI framework, each through the framework's own upload API.

``make_app()`` builds the framework named by ``UM_FRAMEWORK`` (starlette, fastapi, quart,
litestar, django); with ``UM_METERED=1`` behind :class:`uploadmeter.asgi.UploadMeterMiddleware`.
``POST /upload`` answers what the framework parsed -- the form fields, and each file's
field, name, size and SHA-256, hashed from the framework's file object -- so a test
compares the answers with and without the middleware, byte for byte::

    uvicorn --factory tests.support.asgi_frameworks:make_app
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

# At module level: FastAPI resolves the view's annotations in the module's namespace.
from fastapi import FastAPI, File, Form, Request, UploadFile

from tests.support.asgi_apps import SECRET
from uploadmeter.asgi import UploadMeterMiddleware, current_upload
from uploadmeter.asgi._types import ASGIApp


def _file(field: str, filename: str | None, data: bytes) -> dict[str, Any]:
    return {
        "field": field,
        "filename": filename,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _answer(form: dict[str, str], files: list[dict[str, Any]], request: Any) -> dict[str, Any]:
    handle = current_upload(request)
    if handle is not None:
        handle.set_result(count=len(files))
    return {"form": form, "files": files, "tracked": handle is not None}


def starlette_app() -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.datastructures import UploadFile
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def upload(request: Request) -> JSONResponse:
        form, files = {}, []
        async with request.form(max_part_size=16 * 1024 * 1024) as data:
            for name, value in data.multi_items():
                if isinstance(value, UploadFile):
                    files.append(_file(name, value.filename, await value.read()))
                else:
                    form[name] = value
        return JSONResponse(_answer(form, files, request))

    return Starlette(routes=[Route("/upload", upload, methods=["POST"])])


def fastapi_app() -> ASGIApp:
    api = FastAPI()

    @api.post("/upload")
    async def upload(
        request: Request,
        title: str = Form(),
        doc: list[UploadFile] = File(),  # noqa: B008 - FastAPI's declared parameters
        empty: UploadFile = File(),  # noqa: B008
    ) -> dict[str, Any]:
        files = [_file("doc", f.filename, await f.read()) for f in doc]
        files.append(_file("empty", empty.filename, await empty.read()))
        return _answer({"title": title}, files, request)

    return api


def quart_app() -> ASGIApp:
    from quart import Quart, request

    app = Quart(__name__)

    @app.post("/upload")
    async def upload() -> dict[str, Any]:
        form = await request.form
        uploaded = await request.files
        files = [
            _file(name, storage.filename, storage.read())
            for name, storage in uploaded.items(multi=True)
        ]
        return _answer(form.to_dict(), files, request)

    return app  # type: ignore[return-value]


def litestar_app() -> ASGIApp:
    from litestar import Litestar, post
    from litestar.datastructures import UploadFile

    @post("/upload", status_code=200)
    async def upload(request: Request[Any, Any, Any]) -> dict[str, Any]:
        form, files = {}, []
        data = await request.form()
        for name, value in data.multi_items():
            if isinstance(value, UploadFile):
                files.append(_file(name, value.filename, await value.read()))
            else:
                form[name] = value
        # Litestar groups the parts by field, in an order that follows the process's
        # string hashing (PYTHONHASHSEED): by field, so two processes answer alike.
        files.sort(key=lambda f: f["field"])
        return _answer(form, files, request)

    return Litestar(route_handlers=[upload], request_max_body_size=64 * 1024 * 1024)


def upload_view(request: Any) -> Any:
    """Django's view: ``request.POST`` and ``request.FILES``."""
    from django.http import JsonResponse

    files = [
        _file(name, f.name, f.read()) for name in request.FILES for f in request.FILES.getlist(name)
    ]
    return JsonResponse(_answer(request.POST.dict(), files, request))


urlpatterns: list[Any] = []


def django_app() -> ASGIApp:
    import django
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler
    from django.urls import path

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="e2e django",
            ALLOWED_HOSTS=["127.0.0.1", "localhost"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATA_UPLOAD_MAX_MEMORY_SIZE=None,
            FILE_UPLOAD_MAX_MEMORY_SIZE=64 * 1024 * 1024,
        )
        urlpatterns[:] = [path("upload", upload_view)]
        django.setup()
    return ASGIHandler()  # type: ignore[return-value]


FRAMEWORKS = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "quart": quart_app,
    "litestar": litestar_app,
    "django": django_app,
}


def make_app() -> ASGIApp:
    app = FRAMEWORKS[os.environ["UM_FRAMEWORK"]]()
    if os.environ.get("UM_METERED") != "1":
        return app
    return UploadMeterMiddleware(
        app, secret_key=SECRET, store=os.environ.get("UM_STORE") or None, update_interval=0
    )

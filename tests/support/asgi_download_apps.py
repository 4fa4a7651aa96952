"""The download app of :mod:`tests.support.download_apps` on the ASGI shell (Starlette)::

    uvicorn --factory --workers 3 tests.support.asgi_download_apps:make_app

Settings from the environment: ``UM_FILES`` (the files), ``UM_STORE`` (default: the
middleware's SQLite file), ``UM_S3_ENDPOINT`` (an S3 store for ``/s3``).  Routes:

* ``GET /zip?uploadmeter_id=ID`` -- every file of ``$UM_FILES/zip`` as one zip, with progress;
* ``GET /file/NAME`` -- one file of ``$UM_FILES`` (Range, ETag, 304, 416, HEAD);
* ``GET /s3?bucket=B&key=K`` -- an object of the S3 store;
* ``GET /api/report`` -- ``report.bin`` from a FastAPI view;
* ``POST /make/link?target=T[&single_use=1][&external=1]``, ``POST /make/share?target=T&code=C``;
* ``{prefix}/d/...`` -- the links, mounted as under WSGI.

``X-Barrier: NAME:N`` holds a request until N requests carrying it arrived (the store
counts them), as in the WSGI app; ``X-Worker-PID`` says which worker answered.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tests.support.asgi_apps import with_pid
from tests.support.download_apps import TARGETS
from uploadmeter.asgi import UploadMeterMiddleware, download
from uploadmeter.asgi._types import ASGIApp, Receive, Scope, Send
from uploadmeter.downloads import S3Object
from uploadmeter.links import DownloadLinks
from uploadmeter.stores import ProgressStore


def make_app() -> ASGIApp:
    files = Path(os.environ.get("UM_FILES", "."))
    s3: list[Any] = []

    async def zip_all(request: Request) -> Any:
        return download(sorted((files / "zip").iterdir()), "all.zip", meter=meter)

    async def one_file(request: Request) -> Any:
        return download(files / request.path_params["name"], meter=meter)

    async def s3_object(request: Request) -> Any:
        if not s3:
            import boto3
            from botocore.config import Config

            s3.append(
                boto3.client(
                    "s3",
                    endpoint_url=os.environ["UM_S3_ENDPOINT"],
                    aws_access_key_id="test:tester",
                    aws_secret_access_key="testing",
                    region_name="us-east-1",
                    config=Config(s3={"addressing_style": "path"}),
                )
            )
        args = request.query_params
        return download(S3Object(s3[0], args["bucket"], args["key"]), meter=meter)

    async def make_link(request: Request) -> Any:
        args = request.query_params
        url = links.signed_url(
            args["target"],
            single_use=bool(args.get("single_use")),
            environ=request,  # the request's scope: its root path, and its host if external
            external=bool(args.get("external")),
        )
        return JSONResponse({"url": url})

    async def make_share(request: Request) -> Any:
        args = request.query_params
        share = links.share(args["target"], code=args["code"])
        return JSONResponse({"url": links.share_url(share.id)})

    api = FastAPI()  # FastAPI returns a Response subclass as it is: download()'s is one

    @api.get("/report")
    async def fastapi_report(tasks: BackgroundTasks) -> Any:
        tasks.add_task(lambda: None)
        return download(files / "report.bin", "report.bin", meter=meter)

    app = Starlette(
        routes=[
            Mount("/api", api),
            Route("/zip", zip_all),
            Route("/file/{name}", one_file, methods=["GET", "HEAD"]),
            Route("/s3", s3_object, methods=["GET", "HEAD"]),
            Route("/make/link", make_link, methods=["POST"]),
            Route("/make/share", make_share, methods=["POST"]),
        ]
    )
    meter = UploadMeterMiddleware(
        app,
        secret_key="download apps",
        store=os.environ.get("UM_STORE") or None,
        update_interval=float(os.environ.get("UM_UPDATE_INTERVAL", "0.02")),
    )
    links = DownloadLinks(TARGETS.__getitem__, "link key", meter.store)
    meter.mount("/d", links)
    return with_pid(_barrier(meter, meter.store))


def _barrier(app: ASGIApp, store: ProgressStore) -> ASGIApp:
    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        spec = dict(scope.get("headers", ())).get(b"x-barrier")
        if spec:
            name, _, parties = spec.decode().rpartition(":")
            key = f"test-barrier:{name}"
            await asyncio.to_thread(store.incr, key, 60)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if int(await asyncio.to_thread(store.get, key) or 0) >= int(parties):
                    break
                await asyncio.sleep(0.005)  # waiting for the other requests, not for time
        await app(scope, receive, send)

    return held

"""A download app for tests under gunicorn (several worker processes)::

    gunicorn -w 3 'tests.support.download_apps:make_app()'

On the middleware's default store (a private SQLite file), unless ``UM_STORE`` says
otherwise.  Routes:

* ``GET /zip?uploadmeter_id=ID`` -- every file of ``$UM_FILES`` as one zip, with progress;
* ``POST /make/link?target=T[&single_use=1]`` -- JSON ``{"url"}``: a signed link;
* ``POST /make/share?target=T&code=C`` -- JSON ``{"url"}``: a share with that code;
* ``{prefix}/d/...`` -- the links themselves, served by uploadmeter.

A request with ``X-Barrier: NAME:N`` waits (at most 10 s) until N requests carrying that
barrier have arrived, counted in the shared store: N sync workers then hold one each, so
the requests really run at once, in N different processes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.support.e2e_apps import with_pid
from uploadmeter import UploadMeterMiddleware
from uploadmeter.downloads import Item, download
from uploadmeter.links import DownloadLinks
from uploadmeter.stores import ProgressStore

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
TARGETS = {"notes": Item("meeting notes\n", "notes.txt")}


def make_app() -> WSGIApp:
    files = Path(os.environ.get("UM_FILES", "."))
    links: DownloadLinks | None = None

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        assert links is not None
        request = Request(environ)
        args = request.args
        if request.path == "/zip":
            response = download(sorted(files.iterdir()), "all.zip", environ=environ, meter=meter)
        elif request.path == "/make/link" and request.method == "POST":
            url = links.signed_url(
                args["target"], single_use=bool(args.get("single_use")), environ=environ
            )
            response = Response(json.dumps({"url": url}), mimetype="application/json")
        elif request.path == "/make/share" and request.method == "POST":
            share = links.share(args["target"], code=args["code"])
            url = links.share_url(share.id, environ=environ)
            response = Response(json.dumps({"url": url}), mimetype="application/json")
        else:
            response = Response("not found", status=404)
        return response(environ, start_response)

    meter = UploadMeterMiddleware(
        app,
        secret_key="download apps",
        store=os.environ.get("UM_STORE") or None,
        update_interval=float(os.environ.get("UM_UPDATE_INTERVAL", "0.02")),
    )
    links = DownloadLinks(TARGETS.__getitem__, "link key", meter.store)
    meter.mount("/d", links)
    return with_pid(_barrier(meter, meter.store))


def _barrier(app: WSGIApp, store: ProgressStore) -> WSGIApp:
    def held(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        spec = environ.get("HTTP_X_BARRIER")
        if spec:
            name, _, parties = spec.rpartition(":")
            key = f"test-barrier:{name}"
            store.incr(key, 60)
            deadline = time.monotonic() + 10
            while int(store.get(key) or 0) < int(parties) and time.monotonic() < deadline:
                time.sleep(0.005)  # waiting for the other workers' requests, not for time
        return app(environ, start_response)

    return held

"""The ASGI shell: the upload meter for FastAPI, Starlette, Quart, Litestar and Django.

::

    from uploadmeter.asgi import UploadMeterMiddleware
    app = UploadMeterMiddleware(asgi_app, secret_key="change me")     # default store
    app = UploadMeterMiddleware(asgi_app, secret_key="change me",
                                store="redis://127.0.0.1:6379/0")
    # Starlette / FastAPI:
    app.add_middleware(UploadMeterMiddleware, secret_key="change me")

It is the WSGI middleware (:mod:`uploadmeter.wsgi`) over the same sans-IO core, with the
same options, the same HTTP contract, the same session cookie and the same records: a WSGI
app and an ASGI app that share a store and a ``secret_key`` see each other's uploads for
one browser session.

What it does
------------

* A ``multipart/form-data`` request carrying a tracking id (``?uploadmeter_id=ID``, or the
  ``X-Upload-ID`` / ``X-Progress-ID`` header) gets a counting ``receive``: the app gets
  exactly the messages the server sends, and the record follows the bytes, per field.
  Every other request passes through untouched (same scope, same ``receive``).
* ``GET {prefix}/progress?id=ID`` (JSON, or XML with ``format=xml``),
  ``POST {prefix}/cancel?id=ID``, ``GET {prefix}/session`` and ``{prefix}/static/...``
  answer as under WSGI, without reaching the app.
* ``GET {prefix}/events?id=ID`` pushes the same JSON as Server-Sent Events: one event per
  change, ``: heartbeat`` comments while nothing changes, and the stream ends after the
  event carrying the outcome (``done``, ``error``, ``cancelled``); close the
  ``EventSource`` then::

      const events = new EventSource(`/uploadmeter/events?id=${id}`);
      events.onmessage = (e) => {
        const record = JSON.parse(e.data);
        show(record.percentage);
        if (["done", "error", "cancelled"].includes(record.state)) events.close();
      };

* A cancel (``{prefix}/cancel``) ends the upload the way a client disconnect does: the
  app's next ``receive()`` answers ``{"type": "http.disconnect"}``, the record says
  ``cancelled``, and the client gets ``400`` (the app's own answer is dropped).
* ``max_content_length`` holds for every framing: a larger ``Content-Length`` gets
  ``413`` before a byte is read; a chunked body is cut at the limit (the app is told the
  client left) and answered ``413``.
* The event loop never waits on the store.  An upload's writes (a few per second) run on
  a small pool of threads of the middleware's own (``store_threads``, default 2: the
  record policy is the WSGI shell's, synchronous, and SQLite has no async driver); polls
  and event streams read on ``redis.asyncio`` with a Redis store, else on a thread of
  their own, so they never queue behind writes.  ``bench/asgi_loop_lag.py`` measures the
  loop's lag and the polls' latency under 100 uploads.  A store thread holding the GIL
  can keep the loop waiting up to Python's switch interval (5 ms); a server that wants
  less lag lowers it (``sys.setswitchinterval(0.0005)``, measured by the bench).

The view's handle
-----------------

:func:`current_upload` takes the scope or the framework's request (anything with a
``.scope``)::

    from fastapi import FastAPI, Request, UploadFile
    from uploadmeter.asgi import current_upload

    api = FastAPI()

    @api.post("/upload")
    async def upload(request: Request, file: UploadFile):
        handle = current_upload(request)
        if handle:
            handle.set_result(name=file.filename)     # shown with state "done"
            # handle.fail("Only PDF files are accepted.", status=400)
            # await handle.start_processing("scanning")   # then uploadmeter.processing
        return {"ok": True}

``start_processing`` is a coroutine here (it writes to the store off the loop).

Mounting
--------

:meth:`UploadMeterMiddleware.mount` serves an ASGI app under ``{prefix}{path}``; the app
gets a scope whose ``root_path`` ends at the mount, and :func:`route_path` is its path
below it.

Downloads and links
-------------------

:func:`download` is :func:`uploadmeter.downloads.download` for ASGI views: it returns the
response as an ASGI app (a Starlette ``Response`` too, where Starlette is installed), and
the request's ``Range``, conditional headers and tracking id are read from the scope it is
called with::

    from uploadmeter.asgi import download

    @api.get("/report")
    async def report():
        return download(Path("reports/2024.pdf"), meter=meter)

The body goes out with backpressure, each piece read on a worker thread while the loop
sends the previous one (no thread is held while a client reads).  ``DownloadLinks``
mounts as under WSGI: ``meter.mount("/d", DownloadLinks(...))``.  More:
``docs/asgi.rst``.

The component
-------------

``render_file_upload()`` works unchanged.  With Starlette's or FastAPI's
``Jinja2Templates``, one line gives the templates the package's macros::

    from starlette.templating import Jinja2Templates
    from uploadmeter.ui import template_environment

    templates = Jinja2Templates(env=template_environment())
"""

from uploadmeter.asgi._downloads import DownloadResponse, download
from uploadmeter.asgi._middleware import UploadHandle, UploadMeterMiddleware, current_upload
from uploadmeter.asgi._receive import MeteredReceive
from uploadmeter.asgi._requests import route_path

__all__ = [
    "DownloadResponse",
    "MeteredReceive",
    "UploadHandle",
    "UploadMeterMiddleware",
    "current_upload",
    "download",
    "route_path",
]

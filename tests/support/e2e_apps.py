"""Apps for end-to-end tests: a Flask app and a plain WSGI app behind the middleware.

Both save uploaded files to ``UM_UPLOAD_DIR`` and answer their SHA-256, so a test can
compare what arrived with what it sent.  Importable by gunicorn::

    gunicorn -w 3 'tests.support.e2e_apps:make_flask_app()'

Settings come from keyword arguments or, for gunicorn, environment variables.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from werkzeug.formparser import parse_form_data
from werkzeug.utils import secure_filename

from uploadmeter import UploadMeterMiddleware, current_upload


def _settings(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "store": options.get("store", os.environ.get("UM_STORE") or None),
        "upload_dir": options.get("upload_dir", os.environ.get("UM_UPLOAD_DIR", "/tmp")),
        "update_interval": float(
            options.get("update_interval", os.environ.get("UM_UPDATE_INTERVAL", "0"))
        ),
        "max_content_length": options.get("max_content_length")
        or int(os.environ.get("UM_MAX_CONTENT_LENGTH", "0"))
        or None,
    }


def _save(upload_dir: str, files: Iterable[Any]) -> list[dict[str, Any]]:
    saved = []
    for storage in files:
        name = secure_filename(storage.filename or "") or "upload"
        path = os.path.join(upload_dir, name)
        storage.save(path)
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        saved.append(
            {
                "field": storage.name,
                "filename": storage.filename,
                "sha256": digest,
                "size": os.path.getsize(path),
            }
        )
    return saved


def with_pid(app: Callable[..., Any]) -> Callable[..., Any]:
    """Tag every response with the worker's pid, so tests can see who answered."""

    def tagged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Worker-Pid", str(os.getpid()))], exc_info)

        return app(environ, start)

    return tagged


def make_flask_app(**options: Any) -> Callable[..., Any]:
    s = _settings(options)
    app = Flask(__name__)

    @app.post("/upload")
    def upload() -> Any:
        saved = _save(s["upload_dir"], [f for _, f in request.files.items(multi=True)])
        handle = current_upload(request.environ)
        if handle is not None:
            handle.set_result(files=[f["filename"] for f in saved])
        return {"form": request.form.to_dict(), "files": saved}

    app.wsgi_app = UploadMeterMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        secret_key="e2e secret",
        store=s["store"],
        update_interval=s["update_interval"],
        max_content_length=s["max_content_length"],
    )
    return with_pid(app)


def form_upload_app(upload_dir: str) -> Callable[..., Iterable[bytes]]:
    """No framework: ``POST /upload`` parsed by werkzeug's form parser, files saved."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/upload":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        _, form, files = parse_form_data(environ)
        saved = _save(upload_dir, [f for _, f in files.items(multi=True)])
        body = json.dumps({"form": form.to_dict(), "files": saved}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


def make_plain_app(**options: Any) -> Callable[..., Any]:
    """No framework: werkzeug's form parser on the (metered) ``wsgi.input``."""
    s = _settings(options)
    return with_pid(
        UploadMeterMiddleware(
            form_upload_app(s["upload_dir"]),
            secret_key="e2e secret",
            store=s["store"],
            update_interval=s["update_interval"],
            max_content_length=s["max_content_length"],
        )
    )


def make_proxied_app() -> Callable[..., Any]:
    """The plain app's ``/upload`` plus uploadmeter's chunk and tus endpoints, as a reverse
    proxy fronts them (tests/test_nginx.py); settings as in ``chunked_app.make_app``."""
    from tests.support.chunked_app import make_app

    s = _settings({})
    return make_app(
        inner=form_upload_app(s["upload_dir"]),
        meter_options={"update_interval": s["update_interval"]},
    )

"""uploadmeter's demo: upload widgets (one compresses on the server), resumable chunked
uploads for large files, a files page -- nothing else to install.

::

    pip install -e '.[demo]'
    flask --app demo_app run                      # http://127.0.0.1:5000
    DEMO_THROTTLE_KBPS=4096 flask --app demo_app run   # watch the bar on a fast machine
    gunicorn -w 3 'demo_app:create_app()'         # several workers share the default store

Settings (environment variables, or ``create_app(config)`` keys):

* ``DEMO_THROTTLE_KBPS`` -- demo setting: read uploads at this many KiB/s (0: off); also
  each chunk of a chunked upload
* ``DEMO_COMPRESS_KBPS`` -- demo setting: compress at this many KiB/s of the upload
  (default: ``DEMO_THROTTLE_KBPS``; 0: as fast as possible)
* ``DEMO_MAX_UPLOAD_MB`` -- the upload size limit in MB of 10**6 bytes
  (``UPLOADMETER_MAX_CONTENT_LENGTH``)
* ``FLASK_<KEY>`` -- any other config key, e.g. ``FLASK_UPLOADMETER_STORE=redis://...``
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Flask

from demo_app.downloads import init_downloads
from demo_app.storage import UploadFolder
from demo_app.throttle import ReadThrottle
from demo_app.views import bp, meter
from uploadmeter.resumable import ChunkUploads, FileInfo, FileStore

DEFAULT_MAX_UPLOAD_MB = 512
CHUNK_SIZE = 1024 * 1024  # the chunked uploader's chunk size (simple-uploader.js chunkSize)


def create_app(config: Mapping[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(__name__, instance_path=instance_path)
    max_mb = float(os.environ.get("DEMO_MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB)
    app.config.from_mapping(
        UPLOAD_FOLDER=os.path.join(app.instance_path, "uploads"),
        CHUNK_FOLDER=os.path.join(app.instance_path, "chunks"),  # unfinished chunked uploads
        DEMO_THROTTLE_KBPS=float(os.environ.get("DEMO_THROTTLE_KBPS") or 0),
        DEMO_COMPRESS_KBPS=_float_or_none(os.environ.get("DEMO_COMPRESS_KBPS")),
        DEMO_CHUNK_SIZE=CHUNK_SIZE,
        UPLOADMETER_MAX_CONTENT_LENGTH=int(max_mb * 1_000_000),
    )
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    if app.config["DEMO_COMPRESS_KBPS"] is None:
        app.config["DEMO_COMPRESS_KBPS"] = app.config["DEMO_THROTTLE_KBPS"]
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(app.instance_path)

    kbps = float(app.config["DEMO_THROTTLE_KBPS"] or 0)
    if kbps > 0:
        # Inside the meter, so it counts the bytes as the throttled app reads them.
        app.wsgi_app = ReadThrottle(app.wsgi_app, kbps * 1024)  # type: ignore[method-assign]
    meter.init_app(app)
    app.register_blueprint(bp)
    with app.app_context():
        init_downloads(
            app, meter
        )  # /downloads/: Range, zips with progress, signed and shared links
        init_chunk_uploads(app)
    return app


def init_chunk_uploads(app: Flask) -> ChunkUploads:
    """Mount the resumable chunk endpoint (``{prefix}/chunks``) used by the large files page.

    A finished, verified file is linked into the uploads folder, so it is listed on the
    files page like a form upload; the widget's "Open" link downloads it.
    """
    folder = UploadFolder(app.config["UPLOAD_FOLDER"])
    # on_complete runs in the chunk request, outside Flask: build URLs without a request.
    urls = app.url_map.bind("localhost", script_name=app.config["APPLICATION_ROOT"])

    def on_complete(info: FileInfo) -> dict[str, str]:
        stored = folder.add(info.path, info.filename, info.sha256)
        return {"saved": stored.name, "url": urls.build("demo.download", {"name": stored.name})}

    chunks = ChunkUploads(
        meter.middleware, FileStore(app.config["CHUNK_FOLDER"]), on_complete=on_complete
    )
    kbps = float(app.config["DEMO_THROTTLE_KBPS"] or 0)
    # Demo setting: each chunk's body is read slowly too, so pause/resume can be tried.
    meter.mount("/chunks", ReadThrottle(chunks, kbps * 1024) if kbps > 0 else chunks)
    app.extensions["demo_chunks"] = chunks
    return chunks


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value else None


def _instance_secret(instance_path: str) -> str:
    """One random key per instance folder, shared by every worker that serves it."""
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, "secret_key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path) as f:
        key = f.read().strip()
    # Another worker may be between creating and writing the file.
    return key or _wait_for_key(path)


def _wait_for_key(path: str) -> str:
    import time

    for _ in range(100):
        time.sleep(0.01)
        with open(path) as f:
            key = f.read().strip()
        if key:
            return key
    raise RuntimeError(f"{path} stays empty; delete it and start again")

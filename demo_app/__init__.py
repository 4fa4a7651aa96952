"""uploadmeter's demo: two upload widgets, a files page, nothing else to install.

::

    pip install -e '.[demo]'
    flask --app demo_app run                      # http://127.0.0.1:5000
    DEMO_THROTTLE_KBPS=4096 flask --app demo_app run   # watch the bar on a fast machine
    gunicorn -w 3 'demo_app:create_app()'         # several workers share the default store

Settings (environment variables, or ``create_app(config)`` keys):

* ``DEMO_THROTTLE_KBPS`` -- demo setting: read uploads at this many KiB/s (0: off)
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
from demo_app.throttle import ReadThrottle
from demo_app.views import bp
from uploadmeter.flask import UploadMeter

meter = UploadMeter()

DEFAULT_MAX_UPLOAD_MB = 512


def create_app(config: Mapping[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(__name__, instance_path=instance_path)
    max_mb = float(os.environ.get("DEMO_MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB)
    app.config.from_mapping(
        UPLOAD_FOLDER=os.path.join(app.instance_path, "uploads"),
        DEMO_THROTTLE_KBPS=float(os.environ.get("DEMO_THROTTLE_KBPS") or 0),
        UPLOADMETER_MAX_CONTENT_LENGTH=int(max_mb * 1_000_000),
    )
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(app.instance_path)

    kbps = float(app.config["DEMO_THROTTLE_KBPS"] or 0)
    if kbps > 0:
        # Inside the meter, so it counts the bytes as the throttled app reads them.
        app.wsgi_app = ReadThrottle(app.wsgi_app, kbps * 1024)  # type: ignore[method-assign]
    meter.init_app(app)
    app.register_blueprint(bp)
    init_downloads(app)  # /downloads/: Range, zips with progress, signed and shared links
    return app


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

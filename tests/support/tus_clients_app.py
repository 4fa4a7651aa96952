"""The Flask app a new user writes for tus: ``UploadMeter(app)`` on default settings and
``TusUploads`` mounted at ``/tus``, serving a page that drives the npm tus clients.

Started by gunicorn (``tests.support.tus_clients_app:create_app()``); settings from the environment:

* ``UPLOADMETER_TEST_FILES`` -- the FileStore directory
* ``TUS_CLIENTS_LOG`` -- every ``on_complete`` appends ``<upload id> <sha256> <size>``
* ``TUS_CLIENTS_UPPY`` -- the IIFE bundle of ``@uppy/core`` + ``@uppy/tus`` built by the test
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, send_file

from tests.support.servers import ROOT
from uploadmeter.flask import UploadMeter
from uploadmeter.resumable import FileInfo, TusUploads

NODE_MODULES = os.path.join(ROOT, "tests", "js", "node_modules")

# Each client on its defaults: only the endpoint (and the callbacks to see the outcome).
PAGE = """<!doctype html><html lang=en><meta charset=utf-8><title>tus clients</title>
<input type=file id=file>
<script src="/js/tus.js"></script><script src="/js/uppy.js"></script>
<script>
window.results = [];
const endpoint = "/uploadmeter/tus/";
const report = (r) => window.results.push(r);
window.start = function (kind) {
  const file = document.getElementById("file").files[0];
  if (kind.startsWith("tus-js-client")) {
    const upload = new tus.Upload(file, {
      endpoint,
      ...(kind === "tus-js-client-parallel" ? {parallelUploads: 4} : {}),
      onError: (e) => report({ok: false, error: String(e)}),
      onSuccess: () => report({ok: true, url: upload.url}),
    });
    upload.start();
  } else {
    const uppy = new Uppy().use(UppyTus, {endpoint});
    uppy.addFile({name: file.name, type: file.type, data: file});
    uppy.upload().then(
      (r) => report(r.failed.length || r.successful.length !== 1
        ? {ok: false, error: String(r.failed.map((f) => f.error))}
        : {ok: true, url: r.successful[0].uploadURL}),
      (e) => report({ok: false, error: String(e)}),
    );
  }
};
</script>"""


def tus_endpoint(meter: Any) -> TusUploads:
    """``TusUploads`` on the test's FileStore, logging every completion (either shell)."""
    log_path = os.environ["TUS_CLIENTS_LOG"]

    def on_complete(info: FileInfo) -> None:
        with open(log_path, "a", encoding="utf-8") as f:  # one short append per upload
            f.write(f"{info.upload_id} {info.sha256} {info.size}\n")

    return TusUploads(meter, os.environ["UPLOADMETER_TEST_FILES"], on_complete=on_complete)


def client_scripts() -> dict[str, str]:
    return {
        "tus.js": os.path.join(NODE_MODULES, "tus-js-client", "dist", "tus.js"),
        "uppy.js": os.environ.get("TUS_CLIENTS_UPPY", ""),
    }


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "tus-clients-test"
    UploadMeter(app)  # default settings
    middleware = app.extensions["uploadmeter"].middleware
    middleware.mount("/tus", tus_endpoint(middleware))
    scripts = client_scripts()

    @app.get("/")
    def page() -> str:
        return PAGE

    @app.get("/js/<name>")
    def script(name: str) -> object:
        path = scripts.get(name)
        if not path or not os.path.exists(path):
            abort(404)
        return send_file(path, mimetype="text/javascript")

    return app

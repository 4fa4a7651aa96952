"""A Flask app as a new user writes it: ``UploadMeter(app)`` with default settings and the
chunk endpoint mounted at ``/chunks``, serving a page that drives the unmodified npm
clients (resumable.js, flow.js, simple-uploader.js) with only ``target`` set.

gunicorn builds it from ``tests.support.stock_clients_app:create_app()``;
``UPLOADMETER_TEST_FILES`` names the FileStore directory, where every ``on_complete`` appends
one JSON line to ``completed.jsonl`` (``chunked_app.completion_log``).  The tests point
``TMPDIR`` at their own folder, so the default SQLite store is theirs too.
"""

from __future__ import annotations

import os

from flask import Flask, abort, send_file

from tests.support.chunked_app import completion_log
from tests.support.servers import ROOT
from uploadmeter.flask import UploadMeter
from uploadmeter.resumable import ChunkUploads, FileStore

NODE_MODULES = os.path.join(ROOT, "tests", "js", "node_modules")
SCRIPTS = {
    "resumable.js": os.path.join(NODE_MODULES, "resumablejs", "resumable.js"),
    "flow.js": os.path.join(NODE_MODULES, "@flowjs", "flow.js", "dist", "flow.js"),
    "uploader.js": os.path.join(NODE_MODULES, "simple-uploader.js", "dist", "uploader.js"),
}

# Each client constructed with only ``target``; ``window.outcome`` collects its events.
PAGE = """<!doctype html><html lang=en><meta charset=utf-8><title>stock clients</title>
<input type=file id=file>
<script src="/js/resumable.js"></script>
<script src="/js/flow.js"></script>
<script src="/js/uploader.js"></script>
<script>
window.outcome = [];
window.start = function (kind) {
  var opts = {target: "/uploadmeter/chunks"};
  var Client = {resumable: Resumable, flow: Flow, "simple-uploader": Uploader}[kind];
  var client = new Client(opts);
  client.on("fileSuccess", function () { window.outcome.push({event: "success"}); });
  client.on("fileError", function () {  // the message is the one string argument
    var message = Array.from(arguments).filter(function (a) { return typeof a === "string"; });
    window.outcome.push({event: "error", message: message.join(" ")});
  });
  var files = Array.from(document.getElementById("file").files);
  if (kind === "resumable") client.on("filesAdded", function () { client.upload(); });
  client.addFiles(files);
  if (kind !== "resumable") client.upload();
};
</script>"""


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "stock-clients-test"
    meter = UploadMeter(app)
    directory = os.environ["UPLOADMETER_TEST_FILES"]
    chunks = ChunkUploads(
        meter.middleware, FileStore(directory), on_complete=completion_log(directory)
    )
    meter.middleware.mount("/chunks", chunks)

    @app.get("/")
    def page() -> str:
        return PAGE

    @app.get("/js/<name>")
    def script(name: str) -> object:
        if name not in SCRIPTS:
            abort(404)
        return send_file(SCRIPTS[name], mimetype="text/javascript")

    return app

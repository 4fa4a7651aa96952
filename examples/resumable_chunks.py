"""Chunked, resumable uploads with resumable.js: ``flask --app examples/resumable_chunks run``.

``ChunkUploads`` speaks the resumable.js / flow.js / simple-uploader.js chunk protocol at
``/uploadmeter/chunks``; the stock client needs only ``target``.  Serve the client's script
yourself (``npm install resumablejs``, file ``resumable.js``) from ``static/``.
"""

import os

from flask import Flask

from uploadmeter.flask import UploadMeter
from uploadmeter.resumable import ChunkUploads, FileInfo, FileStore

HERE = os.path.dirname(os.path.abspath(__file__))
app = Flask(__name__, static_folder=os.environ.get("STATIC_FOLDER", os.path.join(HERE, "static")))
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "change me")
meter = UploadMeter(app)  # its pages set the session cookie the chunk requests need
files = FileStore(os.environ.get("RESUMABLE_FOLDER", "resumable"))
KEEP = os.environ.get("UPLOAD_FOLDER", "uploads")


def keep(info: FileInfo) -> dict[str, str]:
    os.makedirs(KEEP, exist_ok=True)
    info.link_to(os.path.join(KEEP, info.sha256))
    return {"sha256": info.sha256}


meter.mount("/chunks", ChunkUploads(meter, files, on_complete=keep))

PAGE = """<!doctype html><title>resumable.js</title>
<input type="file" id="file"><output id="status"></output>
<script src="/static/resumable.js"></script>
<script>
const r = new Resumable({target: "/uploadmeter/chunks"});
const status = document.getElementById("status");
r.assignBrowse(document.getElementById("file"));
r.on("fileAdded", () => r.upload());
r.on("progress", () => { status.textContent = Math.floor(r.progress() * 100) + " %"; });
r.on("fileSuccess", () => { status.textContent = "done"; });
r.on("fileError", (file, message) => { status.textContent = "error: " + message; });
</script>"""


@app.get("/")
def index() -> str:
    return PAGE

"""Resumable uploads with tus and Uppy: ``flask --app examples/tus_uppy run``.

``TusUploads`` serves tus 1.0 at ``/uploadmeter/tus/``; Uppy (``@uppy/core`` and
``@uppy/tus``, bundled into ``static/uppy.js``, see the docs' resumable uploads page), or
tus-js-client, or tuspy, needs nothing but that endpoint.  Each finished file is handed to
``keep``, once, verified.
"""

import os

from flask import Flask

from uploadmeter.flask import UploadMeter
from uploadmeter.resumable import FileInfo, FileStore, TusUploads

HERE = os.path.dirname(os.path.abspath(__file__))
app = Flask(__name__, static_folder=os.environ.get("STATIC_FOLDER", os.path.join(HERE, "static")))
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "change me")
meter = UploadMeter(app)
files = FileStore(os.environ.get("RESUMABLE_FOLDER", "resumable"))  # partial and whole files
KEEP = os.environ.get("UPLOAD_FOLDER", "uploads")


def keep(info: FileInfo) -> dict[str, str]:
    os.makedirs(KEEP, exist_ok=True)
    info.link_to(os.path.join(KEEP, info.sha256))  # a hard link: the store may drop its copy
    return {"sha256": info.sha256}  # the record's result, for the progress poll


meter.mount("/tus", TusUploads(meter, files, on_complete=keep))

PAGE = """<!doctype html><title>tus with Uppy</title>
<input type="file" id="file"><output id="status"></output>
<script src="/static/uppy.js"></script>
<script>
// uppy.js is an IIFE bundle that sets window.Uppy and window.UppyTus (see the docs).
const uppy = new Uppy().use(UppyTus, {endpoint: "/uploadmeter/tus/"});
const status = document.getElementById("status");
uppy.on("upload-progress", (file, p) => { status.textContent = p.bytesUploaded + " bytes"; });
uppy.on("upload-success", () => { status.textContent = "done"; });
uppy.on("upload-error", (file, error) => { status.textContent = "error: " + error; });
document.getElementById("file").addEventListener("change", (event) => {
  uppy.cancelAll();
  uppy.addFile({name: event.target.files[0].name, data: event.target.files[0]});
  uppy.upload();
});
</script>"""


@app.get("/")
def index() -> str:
    return PAGE

"""Downloads with server-measured progress and signed links:
``flask --app examples/download_links run``.

``meter.download`` sends a file (with ``Range``) or a streamed zip; ``meter.signed_url``
hands out a link that works without a session, for a download manager or a colleague, and
never contains the file's path: the resolver turns the link's target back into a file.
"""

import os
from pathlib import Path

from flask import Flask, abort, request
from werkzeug.utils import secure_filename

from uploadmeter.flask import UploadMeter

FILES = Path(os.environ.get("FILES_FOLDER", "files")).resolve()


def resolve(name: str) -> Path:
    """A link's target -> the file it stands for (LookupError: 404)."""
    path = FILES / secure_filename(name)
    if not path.is_file():
        raise LookupError(name)
    return path


app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "change me")
app.config["UPLOADMETER_DOWNLOAD_RESOLVER"] = resolve
meter = UploadMeter(app)


@app.get("/files/<name>")
def one_file(name: str):
    try:
        return meter.download(resolve(name))  # Range, ETag, 304; progress with ?uploadmeter_id=
    except LookupError:
        abort(404)


@app.get("/selection.zip")
def selection():
    names = [secure_filename(n) for n in request.args.getlist("name")]
    return meter.download([FILES / n for n in names], "selection.zip", root=FILES)


@app.post("/files/<name>/link")
def link(name: str) -> dict[str, str]:
    return {"url": meter.signed_url(name, expires_in=600)}  # no session needed to use it

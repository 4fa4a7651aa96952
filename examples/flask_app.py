"""A minimal Flask app with a measured upload: ``flask --app examples/flask_app run``.

The progress component posts the form into a hidden iframe and polls the server; the view
saves the file as it always would and tells the component what to show when it is done.
"""

import os
import uuid

from flask import Flask, redirect, render_template_string, request

from uploadmeter.flask import UploadMeter, current_upload

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "change me")
app.config["MAX_CONTENT_LENGTH"] = 512 * 1024 * 1024  # larger uploads get 413
UPLOADS = os.environ.get("UPLOAD_FOLDER", "uploads")
UploadMeter(app)  # wraps app.wsgi_app: measures uploads, answers polls

PAGE = """<!doctype html><title>Upload</title>
{% import "uploadmeter/macros.html" as uploadmeter %}
<form action="/upload" method="post" enctype="multipart/form-data">
  {% call uploadmeter.file_upload("document") %}
    <p>Saved as <strong data-uploadmeter-result="saved"></strong>.</p>
    <button type="button" data-uploadmeter-reset>Upload another</button>
  {% endcall %}
</form>"""


@app.get("/")
def index() -> str:
    return render_template_string(PAGE)


@app.post("/upload")
def upload():
    name = uuid.uuid4().hex  # never a client's file name as a path
    os.makedirs(UPLOADS, exist_ok=True)
    request.files["document"].save(os.path.join(UPLOADS, name))  # unchanged Flask code
    handle = current_upload()  # None when the form was posted without JavaScript
    if handle is None:
        return redirect("/")
    handle.set_result(saved=name)  # stage 3 shows it
    return {"saved": name}

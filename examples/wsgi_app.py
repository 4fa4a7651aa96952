"""The same page in a plain WSGI app, no framework: ``python examples/wsgi_app.py``.

``render_file_upload`` renders the progress component (the same template the Flask macro
uses); the middleware measures the upload and answers the component's polls.
"""

import os
import uuid

from werkzeug.formparser import parse_form_data

from uploadmeter import UploadMeterMiddleware, current_upload
from uploadmeter.ui import render_file_upload

UPLOADS = os.environ.get("UPLOAD_FOLDER", "uploads")


def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/upload":
        _stream, _form, files = parse_form_data(environ)
        name = uuid.uuid4().hex
        os.makedirs(UPLOADS, exist_ok=True)
        files["document"].save(os.path.join(UPLOADS, name))
        upload = current_upload(environ)
        if upload is not None:
            upload.set_result(saved=name)  # shown by the component's stage 3
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [name.encode()]
    widget = render_file_upload(
        "document",
        "<p>File uploaded.</p>",  # stage 3: trusted HTML, like a template
        middleware=meter,
        script_name=environ.get("SCRIPT_NAME", ""),
    )
    form = '<form action="/upload" method="post" enctype="multipart/form-data">'
    page = f"<!doctype html><title>Upload</title>{form}{widget}</form>"
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [page.encode()]


meter = UploadMeterMiddleware(app, secret_key=os.environ.get("SECRET_KEY", "change me"))
application = meter  # what a WSGI server serves: gunicorn examples.wsgi_app:application

if __name__ == "__main__":
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", 8000, application)

"""A minimal FastAPI app with a measured upload: ``uvicorn examples.fastapi_app:app``.

The same component as in Flask: the page posts the form into a hidden iframe and polls the
middleware; the view reads the file with FastAPI's ``UploadFile`` as it always would and
tells the component what to show when it is done.
"""

import os
import shutil
import uuid

from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from uploadmeter.asgi import UploadMeterMiddleware, current_upload
from uploadmeter.ui import template_environment

api = FastAPI()
UPLOADS = os.environ.get("UPLOAD_FOLDER", "uploads")
app = UploadMeterMiddleware(  # serve this one: it measures uploads, answers polls
    api,
    secret_key=os.environ.get("SECRET_KEY", "change me"),
    max_content_length=512 * 1024 * 1024,  # larger uploads get 413
)
# The package's macros for the app's templates (Jinja2Templates(env=...) takes it too).
templates = template_environment(middleware=app)

PAGE = templates.from_string("""<!doctype html><title>Upload</title>
{% import "uploadmeter/macros.html" as uploadmeter %}
<form action="/upload" method="post" enctype="multipart/form-data">
  {% call uploadmeter.file_upload("document") %}
    <p>Saved as <strong data-uploadmeter-result="saved"></strong>.</p>
    <button type="button" data-uploadmeter-reset>Upload another</button>
  {% endcall %}
</form>""")


@api.get("/", response_class=HTMLResponse)
async def index() -> str:
    return PAGE.render()


def save(document: UploadFile) -> str:
    name = uuid.uuid4().hex  # never a client's file name as a path
    os.makedirs(UPLOADS, exist_ok=True)
    with open(os.path.join(UPLOADS, name), "wb") as out:
        shutil.copyfileobj(document.file, out)
    return name


@api.post("/upload", response_model=None)
async def upload(request: Request, document: UploadFile) -> dict[str, str] | RedirectResponse:
    name = await run_in_threadpool(save, document)  # disk writes off the event loop
    handle = current_upload(request)  # None when the form was posted without JavaScript
    if handle is None:
        return RedirectResponse("/", status_code=303)
    handle.set_result(saved=name)  # stage 3 shows it
    return {"saved": name}

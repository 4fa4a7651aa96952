"""The demo's pages: the upload page, the upload view, the files page."""

from __future__ import annotations

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage

from demo_app.storage import StoredFile, UploadFolder
from uploadmeter.flask import current_upload

bp = Blueprint("demo", __name__)


def folder() -> UploadFolder:
    return UploadFolder(current_app.config["UPLOAD_FOLDER"])


@bp.app_template_filter("filesize")
def filesize(n: float | None) -> str:
    """Bytes in decimal units, as uploadmeter.js shows them: 512 MB, 21.0 MB, 3.15 MB."""
    if n is None:
        return ""
    value = float(n)
    if value < 1000:
        return f"{value:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


@bp.get("/")
def index() -> ResponseReturnValue:
    return render_template(
        "index.html",
        throttle_kbps=current_app.config["DEMO_THROTTLE_KBPS"],
        max_length=meter_limit(),
        file_count=len(folder().files()),
    )


def meter_limit() -> int | None:
    limit = current_app.config.get("UPLOADMETER_MAX_CONTENT_LENGTH")
    return int(limit) if limit else None


@bp.post("/upload")
def upload() -> ResponseReturnValue:
    """Save every file of the form.  The same view serves the widget (its response goes to
    the widget's hidden iframe; the outcome travels through ``current_upload()``) and a
    browser without JavaScript (a normal form post, answered with a redirect)."""
    handle = current_upload()
    chosen: list[FileStorage] = [f for _, f in request.files.items(multi=True) if f.filename]
    if not chosen:
        message = "Choose a file first."
        if handle is not None:
            handle.fail(message, status=400)
            return jsonify(error=message), 400
        flash(message, "error")
        return redirect(url_for("demo.index"))

    saved: list[StoredFile] = [folder().save(f.stream, f.filename or "") for f in chosen]
    names = ", ".join(s.name for s in saved)
    if handle is not None:
        handle.set_result(
            saved=names,
            original=", ".join(s.original for s in saved),
            count=len(saved),
            sha256=saved[0].sha256 if len(saved) == 1 else "",
            url=url_for("demo.files"),
        )
        return jsonify(saved=[s.name for s in saved])
    flash(f"Saved {names}.", "success")
    return redirect(url_for("demo.files"))


@bp.get("/files")
def files() -> ResponseReturnValue:
    stored = folder().files()
    return render_template(
        "files.html", files=stored, total=sum(f.size for f in stored), file_count=len(stored)
    )


@bp.get("/files/<path:name>")
def download(name: str) -> ResponseReturnValue:
    if name.startswith(".") or "/" in name:
        abort(404)  # the .meta sidecars and partial files are not for download
    return send_from_directory(current_app.config["UPLOAD_FOLDER"], name, as_attachment=True)

"""The demo's pages: the upload page and its views (save; save and compress), the large
files page (chunked uploads, wired in ``create_app``), the files page."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

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

from demo_app.processing import CompressionJob, compressor
from demo_app.storage import StoredFile, UploadFolder
from uploadmeter import UploadCancelled
from uploadmeter.flask import UploadMeter, current_upload

meter = UploadMeter()  # create_app initialises it on the app
bp = Blueprint("demo", __name__)


def folder() -> UploadFolder:
    return UploadFolder(current_app.config["UPLOAD_FOLDER"])


@bp.app_template_filter("filesize")
def filesize(n: float | None) -> str:
    """Bytes as the widgets show them (uploadmeter/ui/static/uploadmeter-format.js, its
    JavaScript twin): 999 B, 3.15 MB, 21.0 MB, 512 MB."""
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
    # JavaScript's toFixed rounds the float's exact value half up (1.125 -> "1.13").
    exact = Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{exact} {unit}"


@bp.get("/")
def index() -> ResponseReturnValue:
    return render_template(
        "index.html",
        throttle_kbps=current_app.config["DEMO_THROTTLE_KBPS"],
        compress_kbps=current_app.config["DEMO_COMPRESS_KBPS"],
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
    chosen = chosen_files()
    if not chosen:
        return refuse("Choose a file first.")

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


def chosen_files() -> list[FileStorage]:
    return [f for _, f in request.files.items(multi=True) if f.filename]


def refuse(message: str) -> ResponseReturnValue:
    """The form was not usable: tell the widget (400), or flash it without JavaScript."""
    handle = current_upload()
    if handle is not None:
        handle.fail(message, status=400)
        return jsonify(error=message), 400
    flash(message, "error")
    return redirect(url_for("demo.index"))


@bp.post("/compress")
def compress() -> ResponseReturnValue:
    """Save one file, then gzip it in the background (:mod:`demo_app.processing`).

    With the widget, the upload's record goes from ``uploading`` to ``processing``
    (phase ``compressing``, bytes of the file compressed) and ends ``done`` with links to
    the ``.gz``; without JavaScript the file is compressed all the same.
    """
    handle = current_upload()
    chosen = chosen_files()
    if len(chosen) != 1:
        return refuse("Choose one file first." if not chosen else "Choose one file at a time.")
    saved = folder().save(chosen[0].stream, chosen[0].filename or "")
    job = CompressionJob(
        folder(),
        saved,
        bytes_per_second=float(current_app.config["DEMO_COMPRESS_KBPS"] or 0) * 1024,
        describe=describer(),
    )
    if handle is None:
        compressor.submit(job, None)
        flash(f"Saved {saved.name}; its .gz appears here once compressed (reload).", "success")
        return redirect(url_for("demo.files"))
    try:
        handle.start_processing("compressing", total=saved.size)
    except UploadCancelled:
        folder().remove(saved.name)  # cancelled as the upload ended: keep nothing
        raise
    compressor.submit(job, meter.task(handle.id, "compressing", total=saved.size))
    return jsonify(saved=saved.name, compressing=True)


def describer() -> Callable[[StoredFile, StoredFile], dict[str, Any]]:
    """What stage 3 shows once a file is compressed; made in the request, used in the
    worker thread (which has no request to build URLs with)."""
    urls = current_app.create_url_adapter(request)
    assert urls is not None
    files_url = url_for("demo.files")

    def describe(source: StoredFile, gz: StoredFile) -> dict[str, Any]:
        return {
            "saved": source.name,
            "size": source.size,
            "size_text": filesize(source.size),
            "compressed": gz.name,
            "compressed_size": gz.size,
            "compressed_size_text": filesize(gz.size),
            "ratio": f"{gz.size / source.size:.1%}" if source.size else "",
            "sha256": gz.sha256,
            "url": urls.build("demo.download", {"name": gz.name}),
            "files_url": files_url,
        }

    return describe


@bp.get("/large")
def large() -> ResponseReturnValue:
    """Resumable chunked uploads (the middleware's ``/chunks`` endpoint, see create_app)."""
    chunks = current_app.extensions["demo_chunks"]
    return render_template(
        "large.html",
        chunk_size=current_app.config["DEMO_CHUNK_SIZE"],
        max_file_size=chunks.max_file_size,
        throttle_kbps=current_app.config["DEMO_THROTTLE_KBPS"],
        file_count=len(folder().files()),
    )


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
    # A .gz is gzip data whatever it holds (mimetypes would say text/plain for a.txt.gz).
    mimetype = "application/gzip" if name.endswith(".gz") else None
    return send_from_directory(
        current_app.config["UPLOAD_FOLDER"], name, as_attachment=True, mimetype=mimetype
    )

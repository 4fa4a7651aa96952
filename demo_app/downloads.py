"""The demo's downloads: one file (Range-capable), a selection as a zip with a progress bar,
signed links to copy, and share links with an extraction code.

Wired into the demo app after the meter::

    meter.init_app(app)
    from demo_app.downloads import init_downloads
    with app.app_context():
        init_downloads(app, meter)   # registers the blueprint, mounts the link endpoints

Pages and endpoints:

* ``GET  /downloads/`` -- the files with their download actions
* ``GET  /downloads/file/<name>`` -- one file, saved under the name it was uploaded with
* ``GET  /downloads/zip?name=a&name=b&uploadmeter_id=ID`` -- the selection as a streamed zip;
  progress at ``/uploadmeter/progress?id=ID``
* ``POST /downloads/link/<name>`` -- JSON ``{"url", "expires_in"}``: a signed link
* ``POST /downloads/share/<name>`` (form ``code=on``, ``days``) -- JSON ``{"url", "code",
  "expires_at"}``
* ``/uploadmeter/d/l/<token>`` and ``/uploadmeter/d/s/<id>`` -- served by uploadmeter itself
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Flask, abort, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from demo_app.storage import StoredFile, UploadFolder
from uploadmeter.downloads import Downloader, Item
from uploadmeter.flask import UploadMeter
from uploadmeter.links import DownloadLinks

bp = Blueprint("downloads", __name__, url_prefix="/downloads", template_folder="templates")

EXTENSION_KEY = "uploadmeter_downloads"
LINK_SECONDS = 600
MAX_SHARE_DAYS = 30


@dataclass
class DemoDownloads:
    folder: UploadFolder
    send: Downloader  # session-bound downloads, with progress
    links: DownloadLinks
    prefix: str  # the middleware's: progress and cancel endpoints live there


def init_downloads(app: Flask, meter: UploadMeter) -> None:
    """Add the download pages to ``app`` (after ``meter.init_app(app)``, in its app context)."""
    root = app.config["UPLOAD_FOLDER"]
    folder = UploadFolder(root)
    # root= keeps every download inside the uploads folder, whatever a name says.
    links = DownloadLinks(
        lambda name: _item(folder, name),
        app.config["SECRET_KEY"],
        meter.store,
        downloader=Downloader(root=root),
    )
    meter.mount("/d", links)  # {prefix}/d/l/<token>, {prefix}/d/s/<id>
    app.extensions[EXTENSION_KEY] = DemoDownloads(
        folder,
        Downloader(root=root, meter=meter.middleware, on_error="include"),
        links,
        meter.middleware.prefix,
    )
    app.register_blueprint(bp)


def _state() -> DemoDownloads:
    state: DemoDownloads = current_app.extensions[EXTENSION_KEY]
    return state


def _item(folder: UploadFolder, name: str) -> Item:
    """A stored file, named as it was uploaded (``二维码.png``, not ``png``)."""
    stored = _stored(folder, name)
    return Item(Path(folder.root, stored.name), stored.original or stored.name)


def _stored(folder: UploadFolder, name: str) -> StoredFile:
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise LookupError(name)  # the .meta sidecars and partial files are not for download
    if not os.path.isfile(os.path.join(folder.root, name)):
        raise LookupError(name)
    return folder.describe(name)


def _item_or_404(name: str) -> Item:
    try:
        return _item(_state().folder, name)
    except LookupError:
        abort(404)


@bp.get("/")
def files() -> ResponseReturnValue:
    stored = _state().folder.files()
    return render_template(
        "downloads/files.html",
        files=stored,
        total=sum(f.size for f in stored),
        file_count=len(stored),
        link_seconds=LINK_SECONDS,
        meter_endpoint=request.script_root + _state().prefix,
    )


@bp.get("/file/<name>")
def download_one(name: str) -> ResponseReturnValue:
    return _state().send(_item_or_404(name), environ=request.environ)


@bp.get("/zip")
def download_zip() -> ResponseReturnValue:
    names = request.args.getlist("name")
    if not names:
        return jsonify(error={"status": 400, "message": "Choose files first."}), 400
    items = [_item_or_404(name) for name in dict.fromkeys(names)]
    return _state().send(items, "uploads.zip", environ=request.environ, as_zip=True)


@bp.post("/link/<name>")
def signed_link(name: str) -> ResponseReturnValue:
    _item_or_404(name)
    url = _state().links.signed_url(
        name, expires_in=LINK_SECONDS, environ=request.environ, external=True
    )
    return jsonify(url=url, expires_in=LINK_SECONDS)


@bp.post("/share/<name>")
def share(name: str) -> ResponseReturnValue:
    _item_or_404(name)
    try:
        days = min(MAX_SHARE_DAYS, max(1, int(request.form.get("days", "7"))))
    except ValueError:
        days = 7
    links = _state().links
    created = links.share(name, code=bool(request.form.get("code")), expires_in=days * 86400)
    return jsonify(
        url=links.share_url(created.id, environ=request.environ, external=True),
        code=created.code,
        expires_at=created.expires_at,
    )

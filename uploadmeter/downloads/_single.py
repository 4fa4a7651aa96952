"""One file as a response: werkzeug's ``send_file`` and conditional machinery.

``Range`` → 206/416, ``ETag``, ``Last-Modified``, 304; the right ``Content-Type`` and
``Content-Disposition``; an active type shown inline is sandboxed.
"""

from __future__ import annotations

import io
import mimetypes
from typing import IO, Any

from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.http import generate_etag
from werkzeug.utils import send_file
from werkzeug.wrappers import Response
from werkzeug.wsgi import FileWrapper

from uploadmeter.downloads._disposition import content_disposition
from uploadmeter.downloads._objects import ObjectReader
from uploadmeter.downloads._sources import Entry
from uploadmeter.wsgi._responses import error_response

__all__ = ["content_type", "single_response"]

OBJECT_PIECE = 256 * 1024  # bytes per body piece of an object

# Types a browser would run as a page of our origin when shown inline.
_ACTIVE_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml"}
)


def single_response(
    entry: Entry,
    name: str,
    ctype: str,
    env: dict[str, Any] | None,
    as_attachment: bool,
    max_age: int | None,
    etag: bool | str,
    file_wrapper: bool,
) -> Response:
    """``entry`` sent as ``name``; ``file_wrapper=False`` keeps the server's sendfile
    wrapper out (progress must count the bytes handed out)."""
    send_env = dict(env) if env is not None else {"REQUEST_METHOD": "GET"}
    if not file_wrapper:
        send_env.pop("wsgi.file_wrapper", None)
    source: str | IO[bytes]
    if etag is True and entry.etag is not None:
        etag = entry.etag.strip('"')  # an object's: the store's version of its bytes
    if entry.data is not None:
        source = io.BytesIO(entry.data)
        etag = generate_etag(entry.data) if etag is True else etag
    elif entry.path is not None:
        source = entry.path
    else:
        assert entry.file is not None
        source = entry.file
    # send_file gives Last-Modified, ETag and caching.  The ranges are allowed here: it
    # knows the size of paths and BytesIO only, and a seekable or fetched file has one too.
    response = send_file(
        source,
        send_env,
        mimetype=ctype,
        download_name=name,
        conditional=False,
        etag=etag,
        max_age=max_age,
        last_modified=entry.last_modified,
    )
    if entry.file is not None and isinstance(getattr(entry.file, "raw", None), ObjectReader):
        # No server can sendfile() a stream, and werkzeug's wrapper hands out 8 KiB pieces.
        response.response = FileWrapper(entry.file, OBJECT_PIECE)
    if response.content_length is None and entry.size is not None:
        response.content_length = entry.size
    response.headers["Content-Type"] = ctype  # Response(mimetype=) adds a second charset
    response.headers["Content-Disposition"] = content_disposition(name, as_attachment=as_attachment)
    if not as_attachment and ctype.split(";", 1)[0].strip() in _ACTIVE_TYPES:
        # Shown inline, an HTML/SVG file would run as a page of this site.
        response.headers["Content-Security-Policy"] = "sandbox"
    if env is None:
        return response
    size = response.content_length
    ranges = size is not None and (entry.file is None or _seekable(entry.file))
    try:
        response = response.make_conditional(
            send_env, accept_ranges=ranges, complete_length=size if ranges else None
        )
    except RequestedRangeNotSatisfiable:
        response.close()
        message = "The requested range is not satisfiable."
        return error_response(env, 416, message, [("Content-Range", f"bytes */{size}")])
    content_range = response.content_range
    raw = getattr(entry.file, "raw", None)
    if isinstance(raw, ObjectReader) and response.status_code == 206 and content_range:
        raw.limit(content_range.stop or 0)  # one Range GET of exactly these bytes
    return response


def _seekable(file: IO[bytes]) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def content_type(name: str, entry: Entry, charset: str) -> str:
    """An explicit type, else the name's, else the remote one; text gets its charset."""
    guessed = mimetypes.guess_type(name)[0]
    if entry.kind == "remote":
        ctype = guessed or entry.content_type  # the name was chosen here, the type remotely
    else:
        ctype = entry.content_type or guessed
    if ctype is None:
        ctype = "text/plain" if entry.charset else "application/octet-stream"
    if ctype.startswith("text/") and "charset" not in ctype:
        ctype += f"; charset={entry.charset or charset}"
    return ctype

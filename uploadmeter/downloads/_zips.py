"""Several files as one zip, streamed while it is built (zipstream-ng).

No temp file, constant memory, ZIP64 when needed, and a ``Content-Length`` whenever every
size is known in advance (stored entries).
"""

from __future__ import annotations

import functools

from werkzeug.wrappers import Response

from uploadmeter.exceptions import MissingDependency

try:
    from zipstream import ZIP_DEFLATED, ZIP_STORED, ZipStream
except ImportError as exc:
    raise MissingDependency("uploadmeter's downloads", "zipstream-ng", "downloads") from exc

from uploadmeter.downloads._disposition import UniqueNames, content_disposition
from uploadmeter.downloads._progress import TrackedBody
from uploadmeter.downloads._sources import Entry, finalize_name

__all__ = ["zip_response"]

_CHUNK = 64 * 1024


def zip_response(
    entries: list[Entry], filename: str, as_attachment: bool, compress: bool
) -> Response:
    """A response streaming ``entries`` as a zip; its body counts the entries written."""
    sized = not compress and all(e.size is not None or e.kind == "dir" for e in entries)
    zs = ZipStream(compress_type=ZIP_DEFLATED if compress else ZIP_STORED, sized=sized)
    names = UniqueNames()
    for entry in entries:
        name = names.claim(finalize_name(entry), entry.group)
        if entry.kind == "dir":
            zs.mkdir(name)
        elif entry.path is not None:
            zs.add_path(entry.path, name, recurse=False)
        elif entry.data is not None:
            zs.add(entry.data, name)
        else:
            assert entry.file is not None
            zs.add(iter(functools.partial(entry.file.read, _CHUNK), b""), name, size=entry.size)
    files = [e.file for e in entries if e.file is not None]
    body = TrackedBody(iter(zs), files, len(zs) if sized else None, zs.num_streamed)
    response = Response(body, mimetype="application/zip", direct_passthrough=True)
    if body.total is not None:
        response.content_length = body.total
    response.headers["Content-Disposition"] = content_disposition(
        filename, as_attachment=as_attachment
    )
    response.headers["Accept-Ranges"] = "none"  # built on the fly: no byte ranges
    response.cache_control.no_store = True
    return response

"""Download anything: one call turns a source into a response.

This module chooses a single file or a zip and turns failures into error responses; the
responses are built by ``_single`` and ``_zips``, and ``_progress`` tracks them.

::

    from uploadmeter.downloads import download

    # a Flask view (or any WSGI app: pass its environ)
    return download(Path("reports/2024.pdf"), environ=request.environ)
    return download([Path("a.txt"), Path("photos"), "some text"], "二维码.zip",
                    environ=request.environ, meter=middleware)

One file goes out through werkzeug's ``send_file`` and conditional machinery (``Range`` →
206/416, ``ETag``, ``Last-Modified``, 304).  Several files, a directory or a collection
become a zip that is **streamed while it is built** by zipstream-ng: no temp file, constant
memory, ZIP64 when needed, and a ``Content-Length`` whenever every size is known in advance
(stored entries).

Remote sources are fetched before the response starts (concurrently, by a
:class:`~uploadmeter.downloads.RemoteFetcher`), so a failing one can still answer a clean 502 --
or, with ``on_error="include"``, become a ``<name>.error.txt`` entry in the zip.

With ``meter`` and a tracking id (``?uploadmeter_id=`` like uploads, or ``tracking_id=``) the
download's progress goes into the middleware's store under the browser's session: loading of
remote sources, bytes sent of the total, and zip entries written, readable at
``GET {prefix}/progress?id=`` and cancellable at ``POST {prefix}/cancel?id=``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Literal

from werkzeug.wrappers import Response

from uploadmeter.core._context import HasContext, MeterContext
from uploadmeter.core._record import CANCELLED, ERROR
from uploadmeter.downloads._progress import CANCELLED_MESSAGE, DownloadProgress, start_progress
from uploadmeter.downloads._remote import Fetched, RemoteFetcher
from uploadmeter.downloads._single import content_type, single_response
from uploadmeter.downloads._sources import Entry, finalize_name, resolve
from uploadmeter.downloads._zips import zip_response
from uploadmeter.exceptions import RemoteError
from uploadmeter.wsgi._responses import error_response

__all__ = ["Downloader", "OnError", "download"]

OnError = Literal["fail", "include"]


def download(
    source: Any,
    filename: str | None = None,
    *,
    environ: Any = None,
    meter: MeterContext | HasContext | None = None,
    tracking_id: str | None = None,
    remote: RemoteFetcher | None = None,
    on_error: OnError = "fail",
    as_attachment: bool = True,
    mimetype: str | None = None,
    charset: str = "utf-8",
    as_zip: bool | None = None,
    compress: bool = False,
    root: str | os.PathLike[str] | None = None,
    max_age: int | None = None,
    etag: bool | str = True,
) -> Response:
    """Return a werkzeug :class:`~werkzeug.wrappers.Response` sending ``source``.

    File objects among the sources belong to the download from then on: each is closed
    once sent, or when the download fails.

    :param source: what to send (see :mod:`uploadmeter.downloads`).
    :param filename: the name the browser saves; default: the file's own name, the
        directory's name + ``.zip``, or ``download.zip``.
    :param environ: the request's WSGI environ (or a request object with ``.environ``).
        Needed for ``Range``/conditional requests and progress; without it the file is
        sent whole.
    :param meter: the meter (the middleware, the Flask extension) or its
        :class:`~uploadmeter.core.MeterContext`, whose store and session receive the
        progress record.
    :param tracking_id: the progress id; default: ``uploadmeter_id`` from the query string
        (or an ``X-Upload-ID`` header), when ``meter`` is given.
    :param remote: the fetcher for :class:`~uploadmeter.downloads.Url` sources; without one
        every URL is refused.
    :param on_error: a source that cannot be read fails the download (``"fail"``: 404/502
        before anything is sent) or becomes ``<name>.error.txt`` in the zip (``"include"``).
    :param as_attachment: ``attachment`` (save) or ``inline`` (show) disposition.
    :param mimetype: the type of a single file (default: guessed from its name).
    :param charset: encodes ``str`` sources; shown in the type of a text file.
    :param as_zip: ``None``: zip when there is more than one file (or a directory);
        ``True``: always zip; ``False``: never (several files raise ``ValueError``).
    :param compress: deflate zip entries (no ``Content-Length`` can be sent then).
    :param root: every path must lie inside this directory.
    :param max_age: ``Cache-Control`` max-age of a single file.
    :param etag: ``True`` computes one for single files from paths and bytes; a string
        sets it.
    :raises TypeError: ``source`` is not a download source.
    """
    env = _environ_of(environ)
    resolution = resolve(source, charset=charset, root=root)
    entries = resolution.entries
    progress = None
    try:
        single = not resolution.collection and as_zip is not True
        if as_zip is False and not single:
            raise ValueError("Several files or a directory can only be downloaded as a zip")
        started = start_progress(meter, env, tracking_id)
        if isinstance(started, Response):  # a bad or busy tracking id
            _close_files(entries)
            return started
        progress = started
        if _fetch_remote(entries, remote, progress):
            return _refuse(entries, env, progress, 409, CANCELLED_MESSAGE, CANCELLED)
        failed = next((e.error for e in entries if e.error is not None), None)
        if failed is not None and (on_error == "fail" or single):
            retry = getattr(failed, "retry_after", None)  # a temporary fault: come back
            headers = [("Retry-After", str(retry))] if retry else []
            return _refuse(entries, env, progress, failed.status, failed.message, ERROR, headers)
        entries = [_error_entry(e) if e.error is not None else e for e in entries]
        if single:
            name = filename or finalize_name(entries[0]).rsplit("/", 1)[-1]
            ctype = mimetype or content_type(name, entries[0], charset)
            # Progress counts the bytes handed out: no server sendfile wrapper then.
            response = single_response(
                entries[0], name, ctype, env, as_attachment, max_age, etag, progress is None
            )
        else:
            name = filename or resolution.suggested_name or "download.zip"
            response = zip_response(entries, name, as_attachment, compress)
        response.headers["X-Content-Type-Options"] = "nosniff"
        if progress is None:
            return response
        return progress.track(response, name, None if single else len(entries), env)
    except BaseException:
        _close_files(entries)
        if progress is not None:
            progress.finish(ERROR, 500, "The download could not start.")
        raise


class Downloader:
    """Download settings shared by many views; calling it is :func:`download` with them.

    ::

        downloads = Downloader(meter=middleware, remote=RemoteFetcher(["cdn.example.com"]),
                               on_error="include", root="/srv/files")
        return downloads(paths, "selection.zip", environ=request.environ)
    """

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults

    def __call__(self, source: Any, filename: str | None = None, **options: Any) -> Response:
        return download(source, filename, **{**self.defaults, **options})


# -- pieces ------------------------------------------------------------------------------


def _environ_of(environ: Any) -> dict[str, Any] | None:
    if environ is None or isinstance(environ, dict):
        return environ
    env = getattr(environ, "environ", None)
    if not isinstance(env, dict):
        raise TypeError("environ must be a WSGI environ dict or a request with .environ")
    return env


def _close_files(entries: list[Entry]) -> None:
    for entry in entries:
        if entry.file is not None:
            with contextlib.suppress(OSError):
                entry.file.close()


def _refuse(
    entries: list[Entry],
    env: dict[str, Any] | None,
    progress: DownloadProgress | None,
    status: int,
    message: str,
    state: str,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """Answer an error before anything was sent; the record ends ``error`` or ``cancelled``."""
    _close_files(entries)
    response = error_response(env or {}, status, message, headers or ())
    if progress is None:
        return response
    progress.finish(state, 499 if state == CANCELLED else status, message)
    return progress.respond(response)


def _fetch_remote(
    entries: list[Entry], remote: RemoteFetcher | None, progress: DownloadProgress | None
) -> bool:
    """Fetch every remote entry (concurrently) into ``entry.file``; failures go into
    ``entry.error``.  ``True`` when the download was cancelled meanwhile."""
    pending = [e for e in entries if e.kind == "remote" and e.url]
    if not pending:
        return False
    if remote is None:
        for entry in pending:
            entry.error = RemoteError("Remote sources are not enabled for this download.")
        return False
    done, cancelled = 0, progress is not None and progress.loading(0, len(pending))

    def on_done(index: int, result: Fetched | RemoteError) -> bool:
        nonlocal done, cancelled
        done += 1
        entry = pending[index]
        if isinstance(result, RemoteError):
            entry.error = result
        else:
            entry.file, entry.size = result.file, result.size
            entry.content_type = entry.content_type or result.content_type
            if entry.add_extension and result.filename:
                entry.name = result.filename  # the server's own name beats the URL's
                entry.add_extension = False
        cancelled = cancelled or (progress is not None and progress.loading(done, len(pending)))
        return cancelled  # stops fetches that have not started

    if not cancelled:
        remote.fetch_all([e.url for e in pending if e.url], on_done)
    return cancelled


def _error_entry(entry: Entry) -> Entry:
    assert entry.error is not None
    name = finalize_name(entry)
    message = f"{name} could not be included in this download:\n{entry.error.message}\n"
    return Entry(
        "data",
        name + ".error.txt",
        data=message.encode("utf-8"),
        content_type="text/plain; charset=utf-8",
        group=entry.group,
    )

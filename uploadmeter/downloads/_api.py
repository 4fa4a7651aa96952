"""Download anything: one call turns a source into a response (the seed design, part 4).

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
import functools
import io
import mimetypes
import os
import time
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any, Literal, cast

from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.http import HTTP_STATUS_CODES, generate_etag
from werkzeug.utils import send_file
from werkzeug.wrappers import Response

from uploadmeter.exceptions import DownloadCancelled, MissingDependency, RemoteError, StoreError

try:
    from zipstream import ZIP_DEFLATED, ZIP_STORED, ZipStream
except ImportError as exc:
    raise MissingDependency("uploadmeter's downloads", "zipstream-ng", "downloads") from exc

from uploadmeter.core._ids import INVALID_ID_MESSAGE, valid_upload_id
from uploadmeter.core._record import CANCELLED, DONE, ERROR, UploadRecord
from uploadmeter.core._tracker import UploadTracker, cancel_key
from uploadmeter.downloads._disposition import UniqueNames, content_disposition
from uploadmeter.downloads._remote import Fetched, RemoteFetcher
from uploadmeter.downloads._sources import Entry, finalize_name, resolve
from uploadmeter.wsgi._middleware import requested_upload_id
from uploadmeter.wsgi._responses import error_response

if TYPE_CHECKING:
    from uploadmeter.wsgi._middleware import UploadMeterMiddleware

__all__ = ["Downloader", "OnError", "download"]

OnError = Literal["fail", "include"]
_CHUNK = 64 * 1024
_CANCELLED = "The download was cancelled."
# Types a browser would run as a page of our origin when shown inline.
_ACTIVE_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml"}
)


def download(
    source: Any,
    filename: str | None = None,
    *,
    environ: Any = None,
    meter: UploadMeterMiddleware | None = None,
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
    :param meter: the :class:`~uploadmeter.UploadMeterMiddleware` whose store and session
        receive the progress record.
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
        started = _start_progress(meter, env, tracking_id)
        if isinstance(started, Response):  # a bad or busy tracking id
            _close_files(entries)
            return started
        progress = started
        if _fetch_remote(entries, remote, progress):
            return _refuse(entries, env, progress, 409, _CANCELLED, CANCELLED)
        failed = next((e.error for e in entries if e.error is not None), None)
        if failed is not None and (on_error == "fail" or single):
            return _refuse(entries, env, progress, failed.status, failed.message, ERROR)
        entries = [_error_entry(e) if e.error is not None else e for e in entries]
        if single:
            name = filename or finalize_name(entries[0]).rsplit("/", 1)[-1]
            ctype = mimetype or _content_type(name, entries[0], charset)
            # Progress counts the bytes handed out: no server sendfile wrapper then.
            response = _single(
                entries[0], name, ctype, env, as_attachment, max_age, etag, progress is None
            )
        else:
            name = filename or resolution.suggested_name or "download.zip"
            response = _zip(entries, name, as_attachment, compress)
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


def _start_progress(
    meter: UploadMeterMiddleware | None, env: dict[str, Any] | None, tracking_id: str | None
) -> _Progress | Response | None:
    """The download's progress record, none (untracked), or the answer to a bad id."""
    if meter is None or env is None or env.get("REQUEST_METHOD") == "HEAD":
        return None
    wanted = tracking_id if tracking_id is not None else requested_upload_id(env)
    if wanted is None:
        return None
    if not valid_upload_id(wanted):
        return error_response(env, 400, INVALID_ID_MESSAGE)
    progress = _Progress(meter, env, wanted)
    if not progress.claimed:
        message = "A download with this id is already in progress."
        return progress.respond(error_response(env, 409, message))
    return progress


def _close_files(entries: list[Entry]) -> None:
    for entry in entries:
        if entry.file is not None:
            with contextlib.suppress(OSError):
                entry.file.close()


def _refuse(
    entries: list[Entry],
    env: dict[str, Any] | None,
    progress: _Progress | None,
    status: int,
    message: str,
    state: str,
) -> Response:
    """Answer an error before anything was sent; the record ends ``error`` or ``cancelled``."""
    _close_files(entries)
    response = error_response(env or {}, status, message)
    if progress is None:
        return response
    progress.finish(state, 499 if state == CANCELLED else status, message)
    return progress.respond(response)


def _fetch_remote(
    entries: list[Entry], remote: RemoteFetcher | None, progress: _Progress | None
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


def _single(
    entry: Entry,
    name: str,
    ctype: str,
    env: dict[str, Any] | None,
    as_attachment: bool,
    max_age: int | None,
    etag: bool | str,
    file_wrapper: bool,
) -> Response:
    send_env = dict(env) if env is not None else {"REQUEST_METHOD": "GET"}
    if not file_wrapper:
        send_env.pop("wsgi.file_wrapper", None)
    source: str | IO[bytes]
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
    )
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
        return response.make_conditional(
            send_env, accept_ranges=ranges, complete_length=size if ranges else None
        )
    except RequestedRangeNotSatisfiable:
        response.close()
        message = "The requested range is not satisfiable."
        return error_response(env, 416, message, [("Content-Range", f"bytes */{size}")])


def _zip(entries: list[Entry], filename: str, as_attachment: bool, compress: bool) -> Response:
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
    body = _Body(iter(zs), files, len(zs) if sized else None, zs.num_streamed)
    response = Response(body, mimetype="application/zip", direct_passthrough=True)
    if body.total is not None:
        response.content_length = body.total
    response.headers["Content-Disposition"] = content_disposition(
        filename, as_attachment=as_attachment
    )
    response.headers["Accept-Ranges"] = "none"  # built on the fly: no byte ranges
    response.cache_control.no_store = True
    return response


def _seekable(file: IO[bytes]) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _content_type(name: str, entry: Entry, charset: str) -> str:
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


# -- progress ----------------------------------------------------------------------------


class _Body:
    """The response body: counts what is sent, reports progress, closes what it opened.

    ``close()`` (called by every WSGI server, also when the body was never read) settles
    the record: ``done`` when the body ran out, ``cancelled``, ``error`` when reading
    failed, otherwise the client went away.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        files: list[IO[bytes]] | None = None,
        total: int | None = None,
        entries_done: Callable[[], int] | None = None,
    ) -> None:
        self._chunks = iter(chunks)
        self._close_chunks = getattr(chunks, "close", None)
        self._files = files or []
        self.total = total
        self._entries_done = entries_done
        self.progress: _Progress | None = None
        self.sent = 0
        self._outcome: str | None = None  # DONE, CANCELLED or what went wrong

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._outcome = DONE
            raise
        except Exception as exc:
            self._outcome = f"Reading the files failed ({type(exc).__name__})."
            raise
        self.sent += len(chunk)
        if self.progress is not None and self.progress.sent(self.sent, self.entries_done()):
            self._outcome = CANCELLED
            raise DownloadCancelled()
        return chunk

    def entries_done(self) -> int | None:
        return self._entries_done() if self._entries_done is not None else None

    def close(self) -> None:
        for file in self._files:
            with contextlib.suppress(OSError):
                file.close()
        if self._close_chunks is not None:
            self._close_chunks()
        if self.progress is None:
            return
        status: int | None
        if self._outcome == DONE:
            state, status, message = DONE, None, None
        elif self._outcome == CANCELLED:
            state, status, message = CANCELLED, 499, _CANCELLED
        elif self._outcome is not None:
            state, status, message = ERROR, 500, self._outcome
        else:
            of = f" of {self.total}" if self.total is not None else ""
            state, status = ERROR, 499
            message = f"The connection closed after {self.sent}{of} bytes."
        self.progress.finish(
            state, status, message, sent=self.sent, entries_done=self.entries_done()
        )


class _Progress:
    """A download's record, written through the uploads' :class:`UploadTracker`.

    States: ``starting`` (remote sources loading: ``processing.phase == "loading"``),
    ``uploading`` (bytes going out; ``processing.phase == "zipping"`` counts zip entries),
    then ``done``/``error``/``cancelled``.  Every write in flight first looks for the cancel
    flag, and once it is seen the download ends ``cancelled``: a cancel is not written over
    with an earlier state.  (One that lands between that look and the write is seen at the
    next write; ruling that out too needs a compare-and-set the stores do not offer.)
    """

    def __init__(self, meter: UploadMeterMiddleware, env: dict[str, Any], upload_id: str) -> None:
        session, self.cookie = meter.session_for(env)
        self.tracker = UploadTracker(
            meter.store, session, UploadRecord(id=upload_id), meter.settings
        )
        self.claimed = self.tracker.claim()
        self._store = meter.store
        self._cancel_key = cancel_key(session, upload_id)
        self._interval = meter.settings.update_interval
        self._next_report = 0.0
        if self.claimed:
            self.tracker.write_now()

    def respond(self, response: Response) -> Response:
        if self.cookie:
            response.headers.add("Set-Cookie", self.cookie)
        return response

    def cancelled(self) -> bool:
        try:
            return self._store.get(self._cancel_key) is not None
        except StoreError:
            return False  # no store, no cancel: the download goes on

    def loading(self, done: int, total: int) -> bool:
        """Note remote sources loaded; ``True`` when the download was cancelled."""
        if self.cancelled():
            return True
        self.tracker.record.processing = {"phase": "loading", "done": done, "total": total}
        self.tracker.write_now()
        return False

    def track(
        self, response: Response, filename: str, entries: int | None, env: dict[str, Any] | None
    ) -> Response:
        """Count ``response``'s body as it goes out; settle the record if there is none."""
        status = response.status_code
        if status not in (200, 206):  # 304: the client has it; 412, 416: nothing to send
            message = f"Nothing was sent: {status} {HTTP_STATUS_CODES.get(status, '')}."
            self.finish(DONE if status == 304 else ERROR, status, message)
            return self.respond(response)
        body = response.response
        if not isinstance(body, _Body):
            body = _Body(cast("Iterable[bytes]", body), total=response.content_length)
        record = self.tracker.record
        record.content_length = response.content_length
        record.processing = (
            None if entries is None else {"phase": "zipping", "done": 0, "total": entries}
        )
        record.result = {"filename": filename}
        if self.tracker.progress(0, time.monotonic()):  # cancelled before the first byte
            response.close()
            self.finish(CANCELLED, 499, _CANCELLED)
            return self.respond(error_response(env or {}, 409, _CANCELLED))
        body.progress = self
        response.response = body
        response.direct_passthrough = True
        # The record counts bytes handed to the server; a proxy that buffers the response
        # (nginx's default) would take them all at once and the record read done while the
        # client has read a few KiB.  nginx honours this header without any config.
        response.headers["X-Accel-Buffering"] = "no"
        return self.respond(response)

    def sent(self, sent: int, entries_done: int | None) -> bool:
        """Note bytes sent (at most once per update interval, and at the end); ``True``
        when the download was cancelled meanwhile."""
        now = time.monotonic()
        tracker = self.tracker
        if now < self._next_report and sent != tracker.record.content_length:
            return False
        self._next_report = now + self._interval
        if entries_done is not None and tracker.record.processing is not None:
            tracker.record.processing["done"] = entries_done
        return tracker.progress(sent, now)

    def finish(
        self,
        state: str,
        status: int | None = None,
        message: str | None = None,
        *,
        sent: int | None = None,
        entries_done: int | None = None,
    ) -> None:
        record = self.tracker.record
        if sent is not None:
            record.bytes_received = sent
        if entries_done is not None and record.processing is not None:
            record.processing["done"] = entries_done
        if state == DONE:
            record.result = dict(record.result or {}, bytes=record.bytes_received)
            self.tracker.finish(DONE)
        else:
            self.tracker.finish(state, {"status": status, "message": message})

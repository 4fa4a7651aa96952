"""Download anything: one call turns a source into a response (the seed design, part 4).

::

    from uploadmeter.download import download

    # a Flask view (or any WSGI app: pass its environ)
    return download(Path("reports/2024.pdf"), environ=request.environ)
    return download([Path("a.txt"), Path("photos"), "some text"], "二维码.zip",
                    environ=request.environ, meter=middleware)

One file goes out through werkzeug's conditional machinery (``Range`` → 206/416, ``ETag``,
``Last-Modified``, 304).  Several files, a directory or a collection become a zip that is
**streamed while it is built** by zipstream-ng: no temp file, constant memory, ZIP64 when
needed, and a ``Content-Length`` whenever every size is known in advance (stored entries).

Remote sources are fetched before the response starts (concurrently, by a
:class:`~uploadmeter.remote.RemoteFetcher`), so a failing one can still answer a clean 502 --
or, with ``on_error="include"``, become a ``<name>.error.txt`` entry in the zip.

With ``meter`` and a tracking id (``?uploadmeter_id=`` like uploads, or ``tracking_id=``) the
download's progress goes into the middleware's store under the browser's session: loading of
remote sources, bytes sent of the total, and zip entries written, readable at
``GET {prefix}/progress?id=`` and cancellable at ``POST {prefix}/cancel?id=``.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, Literal

from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.utils import send_file
from werkzeug.wrappers import Response
from werkzeug.wsgi import FileWrapper, wrap_file

try:
    from zipstream import ZIP_DEFLATED, ZIP_STORED, ZipStream
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "uploadmeter's downloads need zipstream-ng: pip install 'uploadmeter[downloads]'"
    ) from exc

from uploadmeter.disposition import content_disposition
from uploadmeter.endpoints import INVALID_ID_MESSAGE, valid_upload_id
from uploadmeter.errors import StoreError, UploadMeterError
from uploadmeter.middleware import requested_upload_id
from uploadmeter.record import CANCELLED, DONE, ERROR, FINISHED, UploadRecord
from uploadmeter.remote import Fetched, RemoteError, RemoteFetcher
from uploadmeter.responses import error_response
from uploadmeter.sources import (
    Entry,
    UniqueNames,
    finalize_name,
    resolve,
)
from uploadmeter.tracker import UploadTracker

if TYPE_CHECKING:
    from uploadmeter.middleware import UploadMeterMiddleware

__all__ = ["DownloadCancelled", "Downloader", "OnError", "download"]

OnError = Literal["fail", "include"]
_CHUNK = 64 * 1024
# Types a browser would run as a page of our origin when shown inline.
_ACTIVE_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml"}
)


class DownloadCancelled(UploadMeterError):
    """Raised from the response body when the download was cancelled: the server drops
    the connection, as it must once ``Content-Length`` was promised."""


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

    :param source: what to send (see :mod:`uploadmeter.sources`).
    :param filename: the name the browser saves; default: the file's own name, the
        directory's name + ``.zip``, or ``download.zip``.
    :param environ: the request's WSGI environ (or a request object with ``.environ``).
        Needed for ``Range``/conditional requests and progress; without it the file is
        sent whole.
    :param meter: the :class:`~uploadmeter.UploadMeterMiddleware` whose store and session
        receive the progress record.
    :param tracking_id: the progress id; default: ``uploadmeter_id`` from the query string
        (or an ``X-Upload-ID`` header), when ``meter`` is given.
    :param remote: the fetcher for :class:`~uploadmeter.sources.Url` sources; without one
        every URL is refused.
    :param on_error: a source that cannot be read fails the download (``"fail"``: 404/502
        before anything is sent) or becomes ``<name>.error.txt`` in the zip (``"include"``).
    :param as_attachment: ``attachment`` (save) or ``inline`` (show) disposition.
    :param mimetype: the type of a single file (default: guessed from its name).
    :param charset: encodes ``str`` sources; shown in the type of a text file.
    :param as_zip: ``None``: zip when there is more than one file (or a directory);
        ``True``: always zip.
    :param compress: deflate zip entries (no ``Content-Length`` can be sent then).
    :param root: every path must lie inside this directory.
    :param max_age: ``Cache-Control`` max-age of a single file.
    :param etag: ``True`` computes one for single files; a string sets it.
    :raises TypeError: ``source`` is not a download source.
    """
    env = _environ_of(environ)
    resolution = resolve(source, charset=charset, root=root)
    single = not resolution.collection and as_zip is not True
    if as_zip is False and not single:
        raise ValueError("Several files or a directory can only be downloaded as a zip")

    progress = None
    if meter is not None and env is not None and env.get("REQUEST_METHOD") != "HEAD":
        wanted = tracking_id if tracking_id is not None else requested_upload_id(env)
        if wanted is not None:
            if not valid_upload_id(wanted):
                return error_response(env, 400, INVALID_ID_MESSAGE)
            progress = _Progress.start(meter, env, wanted)
            if progress.conflict:
                return progress.respond(
                    error_response(env, 409, "A download with this id is already in progress.")
                )

    entries = resolution.entries
    fetched = _fetch_remote(entries, remote, progress)
    try:
        failed = [e for e in entries if e.error is not None]
        if failed and (on_error == "fail" or single):
            first = failed[0].error
            assert first is not None
            for item in fetched.values():
                item.close()
            if progress is not None:
                progress.finish(ERROR, first.status, first.message)
            return _respond(progress, error_response(env or {}, first.status, first.message))
        entries = [_error_entry(e) if e.error is not None else e for e in entries]
        if single:
            response = _single(
                entries[0],
                fetched.get(id(entries[0])),
                filename,
                env,
                progress,
                as_attachment,
                mimetype,
                charset,
                max_age,
                etag,
            )
        else:
            name = filename or resolution.suggested_name or "download.zip"
            response = _zip(entries, fetched, name, progress, as_attachment, compress)
    except BaseException:
        for item in fetched.values():
            item.close()
        if progress is not None:
            progress.finish(ERROR, 500, "The download could not start.")
        raise
    response.headers["X-Content-Type-Options"] = "nosniff"
    return _respond(progress, response)


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
    if environ is None:
        return None
    if isinstance(environ, dict):
        return environ
    env = getattr(environ, "environ", None)
    if not isinstance(env, dict):
        raise TypeError("environ must be a WSGI environ dict or a request with .environ")
    return env


def _respond(progress: _Progress | None, response: Response) -> Response:
    return response if progress is None else progress.respond(response)


def _fetch_remote(
    entries: list[Entry], remote: RemoteFetcher | None, progress: _Progress | None
) -> dict[int, Fetched]:
    """Fetch every remote entry (concurrently); failures go into ``entry.error``."""
    pending = [e for e in entries if e.kind == "remote" and e.url]
    if not pending:
        return {}
    if remote is None:
        for entry in pending:
            entry.error = RemoteError("Remote sources are not enabled for this download.")
        return {}
    fetched: dict[int, Fetched] = {}
    done = 0
    if progress is not None:
        progress.loading(0, len(pending))

    def on_done(index: int, result: Fetched | RemoteError) -> None:
        nonlocal done
        done += 1
        entry = pending[index]
        if isinstance(result, Fetched):
            fetched[id(entry)] = result
            entry.size = result.size
            entry.content_type = entry.content_type or result.content_type
            if entry.add_extension and result.filename:
                entry.name = result.filename  # the server's own name beats the URL's
                entry.add_extension = False
        else:
            entry.error = result
        if progress is not None:
            progress.loading(done, len(pending))

    remote.fetch_all([e.url for e in pending if e.url], on_done)
    return fetched


def _error_entry(entry: Entry) -> Entry:
    assert entry.error is not None
    name = finalize_name(entry)
    message = f"{name} could not be included in this download:\n{entry.error.message}\n"
    data = message.encode("utf-8")
    return Entry(
        "data",
        name + ".error.txt",
        data=data,
        size=len(data),
        content_type="text/plain; charset=utf-8",
        group=entry.group,
    )


def _single(
    entry: Entry,
    fetched: Fetched | None,
    filename: str | None,
    env: dict[str, Any] | None,
    progress: _Progress | None,
    as_attachment: bool,
    mimetype: str | None,
    charset: str,
    max_age: int | None,
    etag: bool | str,
) -> Response:
    name = filename or finalize_name(entry).rsplit("/", 1)[-1]
    ctype = mimetype or _content_type(name, entry, charset)
    conditional = env is not None
    send_env = dict(env) if env is not None else {"REQUEST_METHOD": "GET"}
    if progress is not None:
        # Progress counts the bytes we hand out, so the server's sendfile wrapper is skipped.
        send_env.pop("wsgi.file_wrapper", None)
    try:
        if entry.kind == "path" and entry.path is not None:
            response = send_file(
                entry.path,
                send_env,
                mimetype=ctype,
                as_attachment=as_attachment,
                download_name=name,
                conditional=conditional,
                etag=etag,
                max_age=max_age,
            )
        elif entry.kind == "data" and entry.data is not None:
            response = Response(entry.data, content_type=ctype)
            if isinstance(etag, str):
                response.set_etag(etag)
            elif etag:
                response.add_etag()
            if conditional:
                response.make_conditional(
                    send_env, accept_ranges=True, complete_length=len(entry.data)
                )
        else:
            file = fetched.file if fetched is not None else entry.file
            assert file is not None
            response = _file_response(file, entry.size, ctype, send_env, conditional, etag)
    except RequestedRangeNotSatisfiable as exc:
        unsent = fetched.file if fetched is not None else entry.file
        if unsent is not None:
            unsent.close()  # send_file closes its own; ours and the caller's are closed here
        if progress is not None:
            progress.finish(ERROR, 416, "The requested range is not satisfiable.")
        return exc.get_response(send_env)
    response.headers["Content-Type"] = ctype  # werkzeug would append a second charset
    if max_age is not None and entry.kind != "path":
        response.cache_control.max_age = max_age
    response.headers["Content-Disposition"] = content_disposition(name, as_attachment=as_attachment)
    if not as_attachment and ctype.split(";", 1)[0].strip() in _ACTIVE_TYPES:
        # Shown inline, an HTML/SVG file would run as a page of this site.
        response.headers["Content-Security-Policy"] = "sandbox"
    closables: list[IO[bytes]] = [fetched.file] if fetched is not None else []
    if progress is None or response.status_code not in (200, 206):
        if progress is not None:
            progress.finish(
                DONE if response.status_code == 304 else ERROR, response.status_code, "Not sent."
            )
        for file in closables:
            response.call_on_close(file.close)
        return response
    total = response.content_length
    progress.sending(total, name, entries=None)
    response.response = _Body(response.response, progress, closables, total, None)
    response.direct_passthrough = True
    return response


def _file_response(
    file: IO[bytes],
    size: int | None,
    ctype: str,
    env: dict[str, Any],
    conditional: bool,
    etag: bool | str,
) -> Response:
    body = wrap_file(env, file, _CHUNK) if "wsgi.file_wrapper" in env else FileWrapper(file, _CHUNK)
    response = Response(body, content_type=ctype, direct_passthrough=True)
    if size is not None:
        response.content_length = size
    if isinstance(etag, str):
        response.set_etag(etag)
    if conditional:
        seekable = _seekable(file)
        response.make_conditional(
            env, accept_ranges=seekable, complete_length=size if seekable else None
        )
    return response


def _zip(
    entries: list[Entry],
    fetched: dict[int, Fetched],
    filename: str,
    progress: _Progress | None,
    as_attachment: bool,
    compress: bool,
) -> Response:
    closables: list[IO[bytes]] = [f.file for f in fetched.values()]
    sized = not compress and all(e.size is not None or e.kind == "dir" for e in entries)
    zs = ZipStream(compress_type=ZIP_DEFLATED if compress else ZIP_STORED, sized=sized)
    names = UniqueNames()
    for entry in entries:
        name = names.claim(finalize_name(entry), entry.group)
        if entry.kind == "dir":
            zs.mkdir(name)
        elif entry.kind == "path" and entry.path is not None:
            zs.add_path(entry.path, name, recurse=False)
        elif entry.kind == "data" and entry.data is not None:
            zs.add(entry.data, name)
        else:
            item = fetched.get(id(entry))
            file = item.file if item is not None else entry.file
            assert file is not None
            if item is None:
                closables.append(file)
            zs.add(_read_chunks(file), name, size=entry.size)
    total = len(zs) if sized else None
    if progress is not None:
        progress.sending(total, filename, entries=len(entries))
    body = _Body(iter(zs), progress, closables, total, zs.num_streamed)
    response = Response(body, mimetype="application/zip", direct_passthrough=True)
    if total is not None:
        response.content_length = total
    response.headers["Content-Disposition"] = content_disposition(
        filename, as_attachment=as_attachment
    )
    response.headers["Accept-Ranges"] = "none"  # built on the fly: no byte ranges
    response.cache_control.no_store = True
    return response


def _read_chunks(file: IO[bytes]) -> Iterator[bytes]:
    while True:
        chunk = file.read(_CHUNK)
        if not chunk:
            return
        yield chunk


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

    ``close()`` (called by every WSGI server) decides the record's final state: ``done``
    when the body ran out, otherwise the client went away, or the download was cancelled.
    """

    def __init__(
        self,
        inner: Any,
        progress: _Progress | None,
        closables: list[IO[bytes]],
        total: int | None,
        entries_done: Callable[[], int] | None,
    ) -> None:
        self._inner = iter(inner)
        self._close_inner = getattr(inner, "close", None)
        self._progress = progress
        self._closables = closables
        self._total = total
        self._entries_done = entries_done
        self.sent = 0
        self._complete = False
        self._failure: str | None = None

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._inner)
        except StopIteration:
            self._complete = True
            raise
        except Exception as exc:
            self._failure = f"Reading the files failed ({type(exc).__name__})."
            raise
        self.sent += len(chunk)
        progress = self._progress
        if progress is not None and progress.sent(
            self.sent, self._entries_done() if self._entries_done else None
        ):
            self._failure = "cancelled"
            raise DownloadCancelled("The download was cancelled.")
        return bytes(chunk)

    def close(self) -> None:
        for file in self._closables:
            with contextlib.suppress(OSError):
                file.close()
        if self._close_inner is not None:
            self._close_inner()
        progress = self._progress
        if progress is None:
            return
        entries = self._entries_done() if self._entries_done else None
        if self._complete:
            progress.finish(DONE, sent=self.sent, entries_done=entries)
        elif self._failure == "cancelled":
            progress.finish(CANCELLED, 499, "The download was cancelled.", sent=self.sent)
        elif self._failure is not None:
            progress.finish(ERROR, 500, self._failure, sent=self.sent)
        else:
            of = f" of {self._total}" if self._total is not None else ""
            progress.finish(
                ERROR,
                499,
                f"The connection closed after {self.sent}{of} bytes.",
                sent=self.sent,
                entries_done=entries,
            )


class _Progress:
    """A download's record, written through the upload :class:`UploadTracker`.

    States: ``starting`` (remote sources loading: ``processing.phase == "loading"``),
    ``uploading`` (bytes going out; ``processing.phase == "zipping"`` counts zip entries),
    then ``done``/``error``/``cancelled``.
    """

    def __init__(self, tracker: UploadTracker | None, interval: float, cookie: str | None) -> None:
        self.tracker = tracker
        self.interval = interval
        self.cookie = cookie
        self.conflict = tracker is None
        self._next_report = 0.0

    @classmethod
    def start(cls, meter: UploadMeterMiddleware, env: dict[str, Any], upload_id: str) -> _Progress:
        session, cookie = meter.session_for(env)
        assert session is not None
        tracker = UploadTracker(meter.store, session, UploadRecord(id=upload_id), meter.settings)
        if not tracker.claim():
            return cls(None, 0.0, cookie)
        tracker.write_now()
        return cls(tracker, meter.settings.update_interval, cookie)

    def respond(self, response: Response) -> Response:
        if self.cookie:
            response.headers.add("Set-Cookie", self.cookie)
        return response

    def loading(self, done: int, total: int) -> None:
        if self.tracker is not None:
            self.tracker.record.processing = {"phase": "loading", "done": done, "total": total}
            self.tracker.write_now()

    def sending(self, total: int | None, filename: str, entries: int | None) -> None:
        if self.tracker is None:
            return
        record = self.tracker.record
        record.content_length = total
        record.processing = (
            None if entries is None else {"phase": "zipping", "done": 0, "total": entries}
        )
        record.result = {"filename": filename}
        self.tracker.progress(0, time.monotonic())

    def sent(self, sent: int, entries_done: int | None) -> bool:
        """Note bytes sent; ``True`` when the download was cancelled meanwhile."""
        tracker = self.tracker
        if tracker is None:
            return False
        now = time.monotonic()
        if now < self._next_report and sent != tracker.record.content_length:
            return False
        self._next_report = now + self.interval
        if entries_done is not None and tracker.record.processing is not None:
            tracker.record.processing["done"] = entries_done
        try:
            return tracker.progress(sent, now)
        except StoreError:
            return False

    def finish(
        self,
        state: str,
        status: int | None = None,
        message: str | None = None,
        *,
        sent: int | None = None,
        entries_done: int | None = None,
    ) -> None:
        tracker = self.tracker
        if tracker is None or tracker.record.state in FINISHED:
            return
        record = tracker.record
        if sent is not None:
            record.bytes_received = sent
        if entries_done is not None and record.processing is not None:
            record.processing["done"] = entries_done
        if state == DONE:
            record.result = dict(record.result or {}, bytes=record.bytes_received)
            tracker.finish(DONE)
        else:
            tracker.finish(state, {"status": status, "message": message})

"""The WSGI middleware: measures multipart uploads as the application reads them.

Requests that are not ``multipart/form-data`` pass straight through; multipart requests
that carry a tracking id get a counting stream around ``wsgi.input``, and their progress
goes to a store that every worker shares.  The application parses the body exactly as before.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header
from werkzeug.wrappers import Response
from werkzeug.wsgi import ClosingIterator

from uploadmeter.core._context import MeterContext
from uploadmeter.core._ids import INVALID_ID_MESSAGE, valid_upload_id
from uploadmeter.core._limits import TOO_LARGE, check_framing
from uploadmeter.core._observer import MultipartObserver
from uploadmeter.core._record import DONE, ERROR, FINISHED, PROCESSING, UploadRecord
from uploadmeter.core._records import Records
from uploadmeter.core._sessions import CookieSettings, SessionHook, Sessions
from uploadmeter.core._settings import TrackerSettings
from uploadmeter.core._tracker import UploadTracker
from uploadmeter.exceptions import UploadCancelled, UploadTooLarge
from uploadmeter.stores import ProgressStore, open_store
from uploadmeter.wsgi._endpoints import Endpoints
from uploadmeter.wsgi._requests import (
    new_session_cookie,
    page_needs_cookie,
    requested_upload_id,
    session_for,
)
from uploadmeter.wsgi._responses import error_response
from uploadmeter.wsgi._stream import UNREADABLE, CappedInput, MeteredInput

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("uploadmeter")

ENVIRON_KEY = "uploadmeter.upload"


class UploadHandle:
    """What the application can do with the upload it is receiving.

    Found in ``environ["uploadmeter.upload"]`` (or :func:`current_upload`) while a tracked
    upload is handled, so a view can tell the progress component the outcome::

        upload = current_upload(request.environ)
        if upload:
            upload.set_result(filename=saved_name, url=url_for("files"))
            # or: upload.fail("Only PDF files are accepted.", status=400)
    """

    def __init__(self, tracker: UploadTracker, session: str | None = None) -> None:
        self._tracker = tracker
        self.session = session  # for processing tasks: uploadmeter.processing.task()
        self.failure: tuple[int, str] | None = None

    @property
    def id(self) -> str:
        """The upload's tracking id (``uploadmeter_id``), also its record's id."""
        return self._tracker.record.id

    @property
    def record(self) -> UploadRecord:
        """The live record (read-only use)."""
        return self._tracker.record

    def set_result(self, **result: Any) -> None:
        """JSON-serialisable data shown to the client once the upload is ``done``."""
        self._tracker.record.result = dict(self._tracker.record.result or {}, **result)

    def fail(self, message: str, status: int = 400) -> None:
        """Report the upload as failed with ``message``, whatever the response status."""
        self.failure = (status, message)

    def start_processing(self, phase: str, total: int | None = None) -> None:
        """Processing follows: the record goes to ``processing`` now, never to ``done``.

        Call it once the upload has been read, then report with
        ``uploadmeter.processing.task(meter, upload.session, upload.id, phase)``, which
        ends in ``done`` or ``error``.  Raises :class:`~uploadmeter.UploadCancelled` when
        the user already cancelled.
        """
        if self._tracker.start_processing(phase, total):
            raise UploadCancelled()


def current_upload(environ: WSGIEnvironment) -> UploadHandle | None:
    """The :class:`UploadHandle` of the tracked upload in the request of this WSGI
    ``environ``, or ``None`` (Flask views call :func:`uploadmeter.flask.current_upload`)."""
    handle = environ.get(ENVIRON_KEY)
    return handle if isinstance(handle, UploadHandle) else None


class UploadMeterMiddleware:
    """Measure multipart uploads and answer progress polls.

    ::

        from uploadmeter import UploadMeterMiddleware
        app.wsgi_app = UploadMeterMiddleware(app.wsgi_app, secret_key="change me")

    A form posting to ``/upload?uploadmeter_id=<id>`` is then observed, and
    ``GET /uploadmeter/progress?id=<id>`` answers its progress to the same browser.

    :param app: the WSGI application to wrap.
    :param secret_key: signs the session cookie; a list of keys allows rotation.
    :param store: a :class:`~uploadmeter.stores.ProgressStore` or a URL (``memory://``,
        ``sqlite:///path``, ``redis://host:port/db``).  Default: an SQLite file in the
        temp dir, shared by every worker on the machine.
    :param prefix: where the middleware's own endpoints live.
    :param max_content_length: multipart requests larger than this get 413.
    :param ttl: seconds a finished record stays readable.
    :param update_interval: at most one progress write per this many seconds.
    :param stale_after: an in-flight record not updated for this long reads as ``error``.
    :param max_tracked_fields: parts listed per record (more are counted, not listed).
    :param session_id: ``hook(environ) -> str | None`` giving the app's own session id;
        when it returns a value the cookie is not used.
    :param cookie_name, cookie_path, cookie_domain, cookie_samesite, cookie_secure:
        the session cookie (``cookie_secure=None``: Secure when the request is https).
    :param set_cookie_on_pages: set the cookie on the app's HTML pages (``GET``,
        ``text/html``) when the request has no valid one, so a browser has its session
        before its first upload request (chunk requests never issue one: parallel first
        chunks would each get their own).  A page view with the cookie costs about 1 us.
    """

    def __init__(
        self,
        app: WSGIApplication,
        secret_key: str | bytes | list[str] | list[bytes],
        store: str | ProgressStore | None = None,
        *,
        prefix: str = "/uploadmeter",
        max_content_length: int | None = None,
        ttl: float = 300.0,
        update_interval: float = 0.2,
        stale_after: float = 120.0,
        max_tracked_fields: int = 256,
        session_id: SessionHook | None = None,
        cookie_name: str = "uploadmeter_session",
        cookie_path: str = "/",
        cookie_domain: str | None = None,
        cookie_samesite: str = "Lax",
        cookie_secure: bool | None = None,
        set_cookie_on_pages: bool = True,
    ) -> None:
        if not secret_key:
            raise ValueError("UploadMeterMiddleware needs a secret_key to sign its cookie")
        self.app = app
        self.max_tracked_fields = max_tracked_fields
        self.set_cookie_on_pages = set_cookie_on_pages
        context = MeterContext(
            store=open_store(store),
            settings=TrackerSettings(
                ttl=ttl, stale_after=stale_after, update_interval=update_interval
            ),
            sessions=Sessions(
                secret_key,
                CookieSettings(
                    cookie_name, cookie_path, cookie_domain, cookie_samesite, cookie_secure
                ),
                hook=session_id,
            ),
            prefix="/" + prefix.strip("/"),
            mount=self.mount,
            max_content_length=max_content_length,
        )
        self._context = context
        self.endpoints = Endpoints(context)
        self._prefix_slash = self.prefix + "/"

    @property
    def context(self) -> MeterContext:
        """What features (chunked, tus, downloads, ...) are given of this middleware."""
        return self._context

    # The context's parts, as attributes of the middleware.

    @property
    def store(self) -> ProgressStore:
        """The store every record, cancel, lock and link of this middleware lives in."""
        return self.context.store

    @property
    def settings(self) -> TrackerSettings:
        """How long records live and how often they are written."""
        return self.context.settings

    @settings.setter
    def settings(self, settings: TrackerSettings) -> None:
        """New timing for this middleware and its endpoints (features keep theirs)."""
        self._context = dataclasses.replace(self._context, settings=settings)
        self.endpoints.context = self._context

    @property
    def sessions(self) -> Sessions:
        """The session policy: the signed cookie, or the app's ``session_id`` hook."""
        return self.context.sessions

    @property
    def prefix(self) -> str:
        """Where the middleware's endpoints live (``/uploadmeter``)."""
        return self.context.prefix

    @property
    def max_content_length(self) -> int | None:
        """Multipart requests over this many bytes get 413 (``None``: no limit)."""
        return self.context.max_content_length

    @property
    def records(self) -> Records:
        """The only writer of this middleware's records."""
        return self.context.records

    def mount(self, path: str, app: WSGIApplication) -> None:
        """Serve ``app`` under ``{prefix}{path}``: the one way to add an endpoint
        (:class:`ChunkUploads`, :class:`TusUploads`, :class:`~uploadmeter.links.DownloadLinks`).

        An app with a ``mounted_at(path)`` method is told its path from the site root
        (``{prefix}{path}``), to build its own URLs.
        """
        path = "/" + path.strip("/")
        self.endpoints.mounts[path] = app
        mounted_at = getattr(app, "mounted_at", None)
        if callable(mounted_at):
            mounted_at(self.prefix + path)

    # -- dispatch ------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(self._prefix_slash):
            return self.endpoints(environ, start_response, path[len(self.prefix) :])
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type[:19].lower() == "multipart/form-data":
            return self._upload(environ, start_response)
        if (
            self.set_cookie_on_pages
            and environ.get("REQUEST_METHOD") == "GET"
            and page_needs_cookie(self.context, environ)
        ):
            return self._page_with_cookie(environ, start_response)
        return self.app(environ, start_response)

    # -- pages ---------------------------------------------------------------------------

    def _page_with_cookie(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            for name, value in headers:
                if name.lower() == "content-type" and value.startswith("text/html"):
                    headers = [*headers, ("Set-Cookie", new_session_cookie(self.context, environ))]
                    break
            return start_response(status, headers, exc_info)

        return self.app(environ, start)

    # -- uploads -------------------------------------------------------------------------

    def _upload(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        framing = check_framing(
            environ.get("CONTENT_LENGTH"),
            environ.get("HTTP_TRANSFER_ENCODING"),
            self.max_content_length,
        )
        if framing.status == 400:
            response = error_response(environ, 400, framing.message)
            response.headers["Connection"] = "close"
            return response(environ, start_response)
        length = framing.length
        upload_id = requested_upload_id(environ)
        too_large = framing.status == 413
        if upload_id is None:
            if too_large:
                return self._too_large(environ)(environ, start_response)
            if framing.cap is not None:
                return self._capped(environ, start_response, framing.cap)
            return self.app(environ, start_response)
        if not valid_upload_id(upload_id):
            return error_response(environ, 400, INVALID_ID_MESSAGE)(environ, start_response)

        session, cookie = session_for(self.context, environ)
        extra = [("Set-Cookie", cookie)] if cookie else []
        tracker = UploadTracker(
            self.store,
            session,
            UploadRecord(id=upload_id, content_length=length),
            self.settings,
            _observer_for(environ.get("CONTENT_TYPE", ""), self.max_tracked_fields),
        )
        if not tracker.claim():
            return error_response(
                environ, 409, "An upload with this id is already in progress.", extra
            )(environ, start_response)
        if too_large:
            tracker.finish(ERROR, {"status": 413, "message": TOO_LARGE})
            return self._too_large(environ, extra)(environ, start_response)

        stream = MeteredInput(
            environ["wsgi.input"],
            tracker,
            content_length=length,
            limit=framing.cap,
            update_interval=self.settings.update_interval,
        )
        environ["wsgi.input"] = stream
        handle = UploadHandle(tracker, session)
        environ[ENVIRON_KEY] = handle

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            _finish(tracker, stream, handle, int(status[:3]))
            return start_response(status, [*headers, *extra], exc_info)

        try:
            app_iter = self.app(environ, start)
        except HTTPException as exc:
            # A bare WSGI app may let our own UploadTooLarge/UploadCancelled escape.
            _finish(tracker, stream, handle, exc.code or 500)
            return exc.get_response(environ)(environ, start_response)
        except BaseException as exc:
            # Also SystemExit: gunicorn's worker timeout (and a shutdown) raises it in the
            # middle of a read; the record must say so before the worker goes.
            _finish(tracker, stream, handle, None, crashed=exc)
            raise
        return ClosingIterator(app_iter, lambda: _finish(tracker, stream, handle, None))

    def _capped(
        self, environ: WSGIEnvironment, start_response: StartResponse, limit: int
    ) -> Iterable[bytes]:
        """An untracked body of unknown length: the app reads at most ``limit`` bytes."""
        environ["wsgi.input"] = CappedInput(environ["wsgi.input"], limit)
        try:
            return self.app(environ, start_response)
        except UploadTooLarge:  # a bare WSGI app let it escape
            return self._too_large(environ)(environ, start_response)

    def _too_large(
        self, environ: WSGIEnvironment, extra: list[tuple[str, str]] | None = None
    ) -> Response:
        response = error_response(environ, 413, TOO_LARGE, extra or [])
        # The body is not read; tell the client the connection will not be reused.
        response.headers["Connection"] = "close"
        return response


def _finish(
    tracker: UploadTracker,
    stream: MeteredInput,
    handle: UploadHandle,
    status: int | None,
    *,
    crashed: BaseException | None = None,
) -> None:
    """Decide the upload's final state from what the application did.  Idempotent.

    ``crashed``: what the application raised.  A failed read comes first: an app that lets
    the server's disconnect error escape has not failed, the client has gone.
    """
    record = tracker.record
    if record.state in FINISHED or record.state == PROCESSING:
        return  # decided already; processing: a task owns the record now
    length = stream.content_length
    complete = stream.received >= length if length is not None else stream.eof
    where = f"{stream.received} of {length}" if length is not None else f"{stream.received}"
    if stream.failure is not None and not complete:
        if stream.failure.startswith(UNREADABLE):
            message = f"The request body could not be read after {where} bytes."
        else:
            message = f"The connection closed after {where} bytes."
        tracker.finish(ERROR, {"status": 400, "message": message})
    elif crashed is not None and not isinstance(crashed, Exception):
        # SystemExit (gunicorn's worker timeout, a shutdown), KeyboardInterrupt.
        message = (
            f"The server stopped the request (worker timeout or shutdown) after {where} bytes."
        )
        tracker.finish(ERROR, {"status": 500, "message": message})
    elif crashed is not None:
        tracker.finish(ERROR, {"status": 500, "message": "The application failed."})
    elif handle.failure is not None:
        code, message = handle.failure
        tracker.finish(ERROR, {"status": code, "message": message})
    elif status is None:
        tracker.finish(ERROR, {"status": 500, "message": "The application sent no response."})
    elif status >= 400:
        reason = HTTP_STATUS_CODES.get(status, "Error")
        message = f"The application rejected the upload ({status} {reason})."
        tracker.finish(ERROR, {"status": status, "message": message})
    elif complete:
        tracker.finish(DONE)
    else:
        message = "The application answered before reading the whole upload."
        tracker.finish(ERROR, {"status": status, "message": message})


def _observer_for(content_type: str, max_fields: int) -> MultipartObserver | None:
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        return None
    try:
        return MultipartObserver(boundary.encode("latin-1"), max_fields=max_fields)
    except (ValueError, UnicodeEncodeError):
        return None  # odd boundary: whole-request progress only

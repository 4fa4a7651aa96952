"""The WSGI middleware: measures multipart uploads as the application reads them.

Requests that are not ``multipart/form-data`` pass straight through; multipart requests
that carry a tracking id get a counting stream around ``wsgi.input``, and their progress
goes to a store that every worker shares.  The application parses the body exactly as before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response
from werkzeug.wsgi import ClosingIterator

from uploadmeter.core._http import Reply
from uploadmeter.core._meter import (
    HandleBase,
    UploadStart,
    is_form_upload,
    plan_upload,
    settle,
    start_upload,
    too_large_reply,
)
from uploadmeter.core._shell import MeterBase, MeterOptions
from uploadmeter.exceptions import UploadCancelled, UploadTooLarge
from uploadmeter.stores import ProgressStore
from uploadmeter.wsgi._endpoints import Endpoints
from uploadmeter.wsgi._requests import new_session_cookie, page_needs_cookie, request_head
from uploadmeter.wsgi._responses import reply_response
from uploadmeter.wsgi._stream import CappedInput, MeteredInput

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from typing_extensions import Unpack

log = logging.getLogger("uploadmeter")

ENVIRON_KEY = "uploadmeter.upload"


class UploadHandle(HandleBase):
    """What the application can do with the upload it is receiving.

    Found in ``environ["uploadmeter.upload"]`` (or :func:`current_upload`) while a tracked
    upload is handled, so a view can tell the progress component the outcome::

        upload = current_upload(request.environ)
        if upload:
            upload.set_result(filename=saved_name, url=url_for("files"))
            # or: upload.fail("Only PDF files are accepted.", status=400)
    """

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


class UploadMeterMiddleware(MeterBase):
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
    :param cookie_name: the session cookie's name (``cookie_path``, ``cookie_domain``,
        ``cookie_samesite`` and ``cookie_secure`` its attributes; ``cookie_secure=None``:
        Secure when the request is https).
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
        **options: Unpack[MeterOptions],
    ) -> None:
        super().__init__(secret_key, store, **options)
        self.app = app
        self.endpoints = Endpoints(self.context)

    @property
    def mounts(self) -> dict[str, WSGIApplication]:
        return self.endpoints.mounts

    def _context_changed(self) -> None:
        self.endpoints.context = self._context

    def mount(self, path: str, app: WSGIApplication) -> None:
        """Serve ``app`` under ``{prefix}{path}``: the one way to add an endpoint
        (:class:`ChunkUploads`, :class:`TusUploads`, :class:`~uploadmeter.links.DownloadLinks`).

        An app with a ``mounted_at(path)`` method is told its path from the site root
        (``{prefix}{path}``), to build its own URLs.
        """
        super().mount(path, app)

    # -- dispatch ------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(self._prefix_slash):
            return self.endpoints(environ, start_response, path[len(self.prefix) :])
        if is_form_upload(environ.get("CONTENT_TYPE")):
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
        head = request_head(environ)
        plan = plan_upload(head, self.max_content_length)
        if plan.reply is not None:
            return reply_response(plan.reply)(environ, start_response)
        if plan.upload_id is None:
            if plan.cap is not None:
                return self._capped(environ, start_response, plan.cap)
            return self.app(environ, start_response)
        started = start_upload(self.context, head, environ, plan, self.max_tracked_fields)
        if isinstance(started, Reply):
            return reply_response(started)(environ, start_response)
        return self._tracked(environ, start_response, started, plan.length, plan.cap)

    def _tracked(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        started: UploadStart,
        length: int | None,
        cap: int | None,
    ) -> Iterable[bytes]:
        tracker, extra = started.tracker, started.headers
        stream = MeteredInput(
            environ["wsgi.input"],
            tracker,
            content_length=length,
            limit=cap,
            update_interval=self.settings.update_interval,
        )
        meter = stream.meter
        environ["wsgi.input"] = stream
        handle = UploadHandle(tracker, started.session)
        environ[ENVIRON_KEY] = handle

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            settle(meter, handle, int(status[:3]))
            return start_response(status, [*headers, *extra], exc_info)

        try:
            app_iter = self.app(environ, start)
        except HTTPException as exc:
            # A bare WSGI app may let our own UploadTooLarge/UploadCancelled escape.
            settle(meter, handle, exc.code or 500)
            return exc.get_response(environ)(environ, start_response)
        except BaseException as exc:
            # Also SystemExit: gunicorn's worker timeout (and a shutdown) raises it in the
            # middle of a read; the record must say so before the worker goes.
            settle(meter, handle, None, crashed=exc)
            raise
        return ClosingIterator(app_iter, lambda: settle(meter, handle, None))

    def _capped(
        self, environ: WSGIEnvironment, start_response: StartResponse, limit: int
    ) -> Iterable[bytes]:
        """An untracked body of unknown length: the app reads at most ``limit`` bytes."""
        environ["wsgi.input"] = CappedInput(environ["wsgi.input"], limit)
        try:
            return self.app(environ, start_response)
        except UploadTooLarge:  # a bare WSGI app let it escape
            return self._too_large(environ)(environ, start_response)

    def _too_large(self, environ: WSGIEnvironment) -> Response:
        return reply_response(too_large_reply(environ.get("HTTP_ACCEPT")))

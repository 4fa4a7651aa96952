"""The endpoints the middleware answers itself, under its prefix (``/uploadmeter``).

* ``GET  {prefix}/progress?id=ID[&format=xml]`` -- the upload's record, JSON or XML
* ``POST {prefix}/cancel?id=ID`` -- stop an upload of this session
* ``GET  {prefix}/session`` -- ``204``, with the session cookie when the request has none
  (for clients whose page does not come from this app: scripts, other servers' pages)
* ``GET  {prefix}/static/...`` -- the component's script and stylesheet

Polls never reach the application, so they stay cheap however busy the app is.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING

from werkzeug.exceptions import NotFound
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.wrappers import Request, Response

from uploadmeter.core._context import MeterContext
from uploadmeter.core._ids import INVALID_ID_MESSAGE, valid_upload_id
from uploadmeter.core._limits import SMALL_BODY, SMALL_BODY_PARTS
from uploadmeter.core._record import CANCELLED, IN_FLIGHT, UploadRecord, unknown_record
from uploadmeter.core._records import TOO_LATE_TO_CANCEL
from uploadmeter.exceptions import StoreError
from uploadmeter.wsgi._requests import session_for
from uploadmeter.wsgi._responses import JSON, NO_STORE, error_response, json_response, negotiate

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class SmallBodyRequest(Request):
    """A request whose body is a few parameters, read within werkzeug's own limits.

    :meth:`load_body` raises ``RequestEntityTooLarge`` for a body over :data:`SMALL_BODY`
    bytes: before reading a byte when its ``Content-Length`` says so, and at the cap when
    it has none (chunked).  A form has at most ``max_form_parts`` parts, and a file part
    stays in memory: nothing is spooled.
    """

    max_content_length = SMALL_BODY
    max_form_memory_size = SMALL_BODY
    max_form_parts = SMALL_BODY_PARTS

    def load_body(self) -> None:
        """Read the body, into ``form`` (a form) or ``get_data()`` (anything else)."""
        self.get_data(parse_form_data=True)
        # werkzeug stops a body without a length at the cap without a word (a form parsed
        # from its first part); one more read raises RequestEntityTooLarge if it went on.
        self.stream.read(1)

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()  # at most SMALL_BODY bytes


class Endpoints:
    """Dispatches requests under the prefix; owned by the middleware, which gives it its
    :class:`~uploadmeter.core.MeterContext`."""

    def __init__(self, context: MeterContext) -> None:
        self.context = context
        self.static = SharedDataMiddleware(
            NotFound(), {"/static": ("uploadmeter.ui", "static")}, cache_timeout=3600
        )
        self.mounts: dict[str, WSGIApplication] = {}

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse, sub: str
    ) -> Iterable[bytes]:
        if sub == "/progress":
            return self.progress(environ)(environ, start_response)
        if sub == "/cancel":
            return self.cancel(environ)(environ, start_response)
        if sub == "/session":
            return self.session(environ)(environ, start_response)
        if sub.startswith("/static/"):
            environ = dict(environ, PATH_INFO=sub)
            return self.static(environ, start_response)
        for mount, app in self.mounts.items():
            if sub == mount or sub.startswith(mount + "/"):
                # Like werkzeug's DispatcherMiddleware: the mount moves to SCRIPT_NAME.
                script_name = environ.get("SCRIPT_NAME", "") + self.context.prefix + mount
                environ["SCRIPT_NAME"] = script_name
                environ["PATH_INFO"] = sub[len(mount) :]
                return app(environ, start_response)
        return error_response(environ, 404, "No such uploadmeter endpoint.")(
            environ, start_response
        )

    # -- progress and cancel --------------------------------------------------------------

    def progress(self, environ: WSGIEnvironment) -> Response:
        found = self._lookup(
            environ,
            ("GET", "HEAD"),
            self.context.records.load,
            "Progress is unavailable",
        )
        if isinstance(found, Response):
            return found
        request, upload_id, record, extra = found
        record = record or unknown_record(upload_id)
        if _wants_xml(request):
            response = Response(record.to_xml(), mimetype="text/xml", headers=NO_STORE)
            for name, value in extra:
                response.headers.add(name, value)
            return response
        return json_response(record.to_json_dict(), 200, extra)

    def cancel(self, environ: WSGIEnvironment) -> Response:
        found = self._lookup(
            environ,
            ("POST",),
            self.context.records.request_cancel,
            "Cannot cancel now",
        )
        if isinstance(found, Response):
            return found
        _, upload_id, record, extra = found
        if record is None:
            body = unknown_record(upload_id).to_json_dict()
            body["error"] = {"status": 404, "message": "No such upload in this session."}
            return json_response(body, 404, extra)
        # Cancelled now (200), or it had already finished (409): its final state either way.
        if record.state == CANCELLED:
            return json_response(record.to_json_dict(), 200, extra)
        body = record.to_json_dict()
        if record.state in IN_FLIGHT:
            # The app has the whole body: it decides the outcome, the cancel changes nothing.
            body["error"] = {"status": 409, "message": TOO_LATE_TO_CANCEL}
        return json_response(body, 409, extra)

    def session(self, environ: WSGIEnvironment) -> Response:
        """Make sure the client has a session (the progress endpoint issues it the same way)."""
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return self._method_not_allowed(environ, "GET, HEAD")
        _, cookie = session_for(self.context, environ)
        response = Response(status=204, headers=NO_STORE)
        if cookie is not None:
            response.headers.add("Set-Cookie", cookie)
        return response

    def _lookup(
        self,
        environ: WSGIEnvironment,
        methods: tuple[str, ...],
        action: Callable[[str, str], UploadRecord | None],
        unavailable: str,
    ) -> tuple[Request, str, UploadRecord | None, list[tuple[str, str]]] | Response:
        """Check method and id, find the session, run ``action(session, id)`` on the store.

        Returns ``(request, id, record or None, extra headers)``, or an error response.
        """
        if environ.get("REQUEST_METHOD") not in methods:
            return self._method_not_allowed(environ, ", ".join(methods))
        request = Request(environ)
        upload_id = _requested_id(request)
        if upload_id is None or not valid_upload_id(upload_id):
            return error_response(environ, 400, INVALID_ID_MESSAGE)
        session, cookie = session_for(self.context, environ)
        if cookie is not None:
            # A session issued just now cannot own an upload: no store round trip.
            return request, upload_id, None, [("Set-Cookie", cookie)]
        try:
            return request, upload_id, action(session, upload_id), []
        except StoreError as exc:
            return error_response(environ, 503, f"{unavailable}: {exc}")

    def _method_not_allowed(self, environ: WSGIEnvironment, allow: str) -> Response:
        return error_response(environ, 405, f"Use {allow}.", [("Allow", allow)])


def _requested_id(request: Request) -> str | None:
    return (
        request.args.get("id")
        or request.headers.get("X-Upload-ID")
        or request.headers.get("X-Progress-ID")
    )


def _wants_xml(request: Request) -> bool:
    fmt = request.args.get("format")
    if fmt:
        return fmt.lower() == "xml"
    return negotiate(request.environ, (JSON, "application/xml", "text/xml")) != JSON

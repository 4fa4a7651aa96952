"""The endpoints the middleware answers itself, under its prefix (``/uploadmeter``).

* ``GET  {prefix}/progress?id=ID[&format=xml]`` -- the upload's record, JSON or XML
* ``POST {prefix}/cancel?id=ID`` -- stop an upload of this session
* ``GET  {prefix}/session`` -- ``204``, with the session cookie when the request has none
  (for clients whose page does not come from this app: scripts, other servers' pages)
* ``GET  {prefix}/static/...`` -- the component's script and stylesheet

Polls never reach the application, so they stay cheap however busy the app is.

What they answer is decided in the core (:class:`uploadmeter.core._endpoints.MeterEndpoints`:
progress, cancel, session, static); this module runs its store steps inline, writes the
replies as werkzeug responses and dispatches to what is mounted under the prefix.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from werkzeug.wrappers import Request

from uploadmeter.core._context import MeterContext
from uploadmeter.core._endpoints import MeterEndpoints, find_mount
from uploadmeter.core._http import Reply
from uploadmeter.core._limits import SMALL_BODY, SMALL_BODY_PARTS
from uploadmeter.wsgi._requests import request_head
from uploadmeter.wsgi._responses import reply_response

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
        self.core = MeterEndpoints(context)
        self.mounts: dict[str, WSGIApplication] = {}

    @property
    def context(self) -> MeterContext:
        return self.core.context

    @context.setter
    def context(self, context: MeterContext) -> None:
        self.core.context = context

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse, sub: str
    ) -> Iterable[bytes]:
        head = request_head(environ, sub)
        answer = self.core.answer(head, sub, environ)
        if answer is None:
            mounted = find_mount(self.mounts, sub)
            if mounted is not None:
                mount, app = mounted
                # Like werkzeug's DispatcherMiddleware: the mount moves to SCRIPT_NAME.
                script_name = environ.get("SCRIPT_NAME", "") + self.context.prefix + mount
                environ["SCRIPT_NAME"] = script_name
                environ["PATH_INFO"] = sub[len(mount) :]
                return app(environ, start_response)
            answer = self.core.not_found(head)
        reply = answer if isinstance(answer, Reply) else answer()  # a store step: run it here
        return reply_response(reply)(environ, start_response)

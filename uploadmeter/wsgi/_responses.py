"""The core's replies (:mod:`uploadmeter.core._http`) as werkzeug responses.

Errors are short and in the client's language: JSON for scripts, a minimal HTML page for
browsers; never a traceback.  The policy (negotiation, bodies) lives in the core, shared
with the ASGI shell; this module only reads the WSGI environ's ``Accept`` and wraps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from uploadmeter.core import _http
from uploadmeter.core._http import HTML, JSON, NO_STORE, Reply

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "HTML",
    "JSON",
    "NO_STORE",
    "error_response",
    "json_response",
    "negotiate",
    "reply_response",
]


def negotiate(environ: WSGIEnvironment, offers: Sequence[str]) -> str:
    """The offer the client prefers (:func:`uploadmeter.core._http.negotiate`)."""
    return _http.negotiate(environ.get("HTTP_ACCEPT"), offers)


def reply_response(reply: Reply) -> Response:
    """A werkzeug response writing ``reply`` as it is."""
    response = Response(reply.body, status=reply.status)
    response.headers.clear()
    for name, value in reply.headers:
        response.headers.add(name, value)
    if reply.body and "Content-Length" not in response.headers:
        response.headers["Content-Length"] = str(len(reply.body))
    return response


def json_response(
    data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    return reply_response(_http.json_reply(data, status, headers))


def error_response(
    environ: WSGIEnvironment,
    status: int,
    message: str,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A short error in JSON or HTML, as the client prefers."""
    return reply_response(_http.error_reply(environ.get("HTTP_ACCEPT"), status, message, headers))

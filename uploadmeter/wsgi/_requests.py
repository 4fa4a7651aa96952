"""What the WSGI shell reads from a request for the core: its head, session and tracking id.

The one place where a WSGI environ is adapted to the core (:class:`RequestHead` for the
sans-IO endpoints and metering, the session policy of :mod:`uploadmeter.core._sessions`);
every WSGI app of uploadmeter (the middleware, its endpoints, chunked, tus, downloads,
processing) asks through these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from werkzeug.wsgi import get_input_stream

from uploadmeter.core import _endpoints
from uploadmeter.core._context import MeterContext
from uploadmeter.core._http import RequestHead
from uploadmeter.core._ids import upload_id_from


class EnvironHeaders(Mapping[str, str]):
    """The environ's headers by lower-case name, read on demand (a poll reads two)."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    def __getitem__(self, name: str) -> str:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = self._environ[key]
        return str(value)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].lower().replace("_", "-")
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


def body_reader(environ: dict[str, Any]) -> Callable[[int], bytes]:
    """``read(size)`` of the request body (its ``Content-Length``, or the server's framing),
    for :func:`uploadmeter.core._exchange.run_exchange`; the stream is opened on the first
    read."""
    stream: IO[bytes] | None = None

    def read(size: int) -> bytes:
        nonlocal stream
        if stream is None:
            stream = get_input_stream(environ)
        return stream.read(size)

    return read


def request_head(environ: Mapping[str, Any], path: str | None = None) -> RequestHead:
    """The core's view of this request (``path``: instead of ``PATH_INFO``)."""
    return RequestHead(
        environ.get("REQUEST_METHOD", "GET"),
        environ.get("PATH_INFO", "") if path is None else path,
        environ.get("QUERY_STRING", ""),
        EnvironHeaders(environ),
        environ.get("wsgi.url_scheme") == "https",
    )


def session_of(context: MeterContext, environ: dict[str, Any]) -> str | None:
    """The request's session, or ``None``; never issues one (chunks, tasks)."""
    return _endpoints.session_of(context, request_head(environ), _hook_request(environ))


def session_for(context: MeterContext, environ: dict[str, Any]) -> tuple[str, str | None]:
    """``(session, Set-Cookie value or None)``; issues a session when the request has none
    (requests that start one thing: an upload, a tus creation, a download, a poll)."""
    return _endpoints.session_for(context, request_head(environ), _hook_request(environ))


def _hook_request(environ: dict[str, Any]) -> Any:
    """What the ``session_id`` hook is called with: the environ, or -- for an environ the
    ASGI shell built to run a feature (downloads, links) -- the ASGI scope, as every other
    request of an ASGI app."""
    return environ.get(_endpoints.ASGI_SCOPE, environ)


def page_needs_cookie(context: MeterContext, environ: dict[str, Any]) -> bool:
    """Whether an HTML page answering this request should carry a new session cookie."""
    return not context.sessions.has_valid_cookie(environ.get("HTTP_COOKIE", ""))


def new_session_cookie(context: MeterContext, environ: dict[str, Any]) -> str:
    """A Set-Cookie value with a fresh session, for a page."""
    return context.sessions.issue(environ.get("wsgi.url_scheme") == "https")[1]


def requested_upload_id(environ: dict[str, Any]) -> str | None:
    """The tracking id a request carries (see :func:`uploadmeter.core._ids.upload_id_from`)."""
    return upload_id_from(
        environ.get("QUERY_STRING", ""),
        environ.get("HTTP_X_UPLOAD_ID"),
        environ.get("HTTP_X_PROGRESS_ID"),
    )

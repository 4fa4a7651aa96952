"""What the WSGI shell reads from a request for the core: its session and its tracking id.

The one place where a WSGI environ is adapted to the core's session policy
(:mod:`uploadmeter.core._sessions`); every WSGI app of uploadmeter (the middleware, its
endpoints, chunked, tus, downloads, processing) asks through these functions.
"""

from __future__ import annotations

from typing import Any

from uploadmeter.core._context import MeterContext
from uploadmeter.core._ids import upload_id_from


def session_of(context: MeterContext, environ: dict[str, Any]) -> str | None:
    """The request's session, or ``None``; never issues one (chunks, tasks)."""
    sessions = context.sessions
    app_session = sessions.hook(environ) if sessions.hook is not None else None
    return sessions.find(environ.get("HTTP_COOKIE", ""), app_session)


def session_for(context: MeterContext, environ: dict[str, Any]) -> tuple[str, str | None]:
    """``(session, Set-Cookie value or None)``; issues a session when the request has none
    (requests that start one thing: an upload, a tus creation, a download, a poll)."""
    sessions = context.sessions
    app_session = sessions.hook(environ) if sessions.hook is not None else None
    return sessions.find_or_issue(environ.get("HTTP_COOKIE", ""), _https(environ), app_session)


def page_needs_cookie(context: MeterContext, environ: dict[str, Any]) -> bool:
    """Whether an HTML page answering this request should carry a new session cookie."""
    return not context.sessions.has_valid_cookie(environ.get("HTTP_COOKIE", ""))


def new_session_cookie(context: MeterContext, environ: dict[str, Any]) -> str:
    """A Set-Cookie value with a fresh session, for a page."""
    return context.sessions.issue(_https(environ))[1]


def requested_upload_id(environ: dict[str, Any]) -> str | None:
    """The tracking id a request carries (see :func:`uploadmeter.core._ids.upload_id_from`)."""
    return upload_id_from(
        environ.get("QUERY_STRING", ""),
        environ.get("HTTP_X_UPLOAD_ID"),
        environ.get("HTTP_X_PROGRESS_ID"),
    )


def _https(environ: dict[str, Any]) -> bool:
    return environ.get("wsgi.url_scheme") == "https"

"""Small responses the middleware writes itself: errors and JSON.

Errors are short and in the client's language: JSON for scripts (``Accept`` preferring
``application/json``, or ``*/*``), a minimal HTML page for browsers (a form posted into
the component's iframe).  Never a traceback.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import HTTP_STATUS_CODES, parse_accept_header
from werkzeug.wrappers import Response

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

NO_STORE = {"Cache-Control": "no-store"}


JSON = "application/json"
HTML = "text/html"


def negotiate(environ: WSGIEnvironment, offers: Sequence[str]) -> str:
    """The one Accept negotiation: the offer the client prefers, the first offer on a tie
    (``*/*``) or when the client accepts none of them."""
    header = environ.get("HTTP_ACCEPT") or "*/*"
    if header == "*/*" or header == offers[0]:
        return offers[0]  # fetch's default and JSON clients: no parsing on the poll path
    best = parse_accept_header(header, MIMEAccept).best_match(offers)
    return best or offers[0]


def json_response(
    data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    response = Response(
        json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        status=status,
        mimetype="application/json",
        headers=NO_STORE,
    )
    for name, value in headers:
        response.headers.add(name, value)
    return response


def error_response(
    environ: WSGIEnvironment,
    status: int,
    message: str,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A short error in JSON or HTML, as the client prefers."""
    if negotiate(environ, (JSON, HTML)) == JSON:
        return json_response({"error": {"status": status, "message": message}}, status, headers)
    title = f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}"
    body = (
        "<!doctype html>\n<html lang=en><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(message)}</p>\n"
    )
    response = Response(body, status=status, mimetype="text/html", headers=NO_STORE)
    for name, value in headers:
        response.headers.add(name, value)
    return response

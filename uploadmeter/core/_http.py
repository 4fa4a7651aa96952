"""HTTP without I/O: what a request says and what the meter answers, for every shell.

A shell (WSGI, ASGI) reads its request into a :class:`RequestHead` once, asks the core, and
writes the :class:`Reply` it gets back in its own terms -- the way h11 and werkzeug's
``sansio`` package separate the protocol from the socket.  Nothing here reads a socket,
an environ or a scope.

Errors are short and in the client's language: JSON for scripts (``Accept`` preferring
``application/json``, or ``*/*``), a minimal HTML page for browsers (a form posted into
the component's iframe).  Never a traceback.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import HTTP_STATUS_CODES, parse_accept_header

NO_STORE = {"Cache-Control": "no-store"}
JSON = "application/json"
HTML = "text/html"

Headers = list[tuple[str, str]]


@dataclass(slots=True)
class RequestHead:
    """The parts of a request the meter reads, as text.

    :param method: ``GET``, ``POST``, ...
    :param path: the path below the site root (WSGI ``PATH_INFO``; ASGI ``path`` less
        ``root_path``).
    :param query: the raw query string (latin-1 text, undecoded).
    :param headers: header values by lower-case name (repeated ``Cookie`` headers joined
        with ``"; "``); a shell may hand a lazy mapping over its own request.
    :param https: whether the request came over https (the cookie's ``Secure``).
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    https: bool = False

    def header(self, name: str) -> str | None:
        """The header ``name`` (lower case), or ``None``."""
        return self.headers.get(name)


@dataclass(slots=True)
class Reply:
    """A whole response: status, headers, body.  The shells write it as it is."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def negotiate(accept: str | None, offers: Sequence[str]) -> str:
    """The one Accept negotiation: the offer the client prefers, the first offer on a tie
    (``*/*``) or when the client accepts none of them."""
    header = accept or "*/*"
    if header == "*/*" or header == offers[0]:
        return offers[0]  # fetch's default and JSON clients: no parsing on the poll path
    best = parse_accept_header(header, MIMEAccept).best_match(offers)
    return best or offers[0]


def json_reply(data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Reply(
        status,
        [("Content-Type", JSON), ("Cache-Control", "no-store"), *headers],
        body,
    )


def error_reply(
    accept: str | None, status: int, message: str, headers: Iterable[tuple[str, str]] = ()
) -> Reply:
    """A short error in JSON or HTML, as the client prefers."""
    if negotiate(accept, (JSON, HTML)) == JSON:
        return json_reply({"error": {"status": status, "message": message}}, status, headers)
    title = f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}"
    body = (
        "<!doctype html>\n<html lang=en><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(message)}</p>\n"
    )
    return Reply(
        status,
        [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"), *headers],
        body.encode("utf-8"),
    )


def status_line(status: int) -> str:
    """``"200 OK"``: a WSGI status line."""
    return f"{status} {HTTP_STATUS_CODES.get(status, 'Unknown')}"

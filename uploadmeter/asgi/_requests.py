"""What the ASGI shell reads from a scope for the core, and how it writes a core reply.

The one place where an ASGI scope is adapted to the core's :class:`RequestHead` (the
counterpart of :mod:`uploadmeter.wsgi._requests`).
"""

from __future__ import annotations

import io
import sys
from typing import Any

from uploadmeter.asgi._types import Scope, Send
from uploadmeter.core._endpoints import ASGI_SCOPE
from uploadmeter.core._http import Reply, RequestHead


def scope_headers(scope: Scope) -> dict[str, str]:
    """The scope's headers by lower-case name, as latin-1 text; repeated headers joined
    (``Cookie`` with ``"; "``, others with ``", "``), as a WSGI server joins them."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in headers:
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    return headers


def route_path(scope: Scope) -> str:
    """The path below the app's mount point (``path`` less ``root_path``)."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


def request_head(scope: Scope, path: str | None = None) -> RequestHead:
    return RequestHead(
        scope.get("method", "GET"),
        route_path(scope) if path is None else path,
        scope.get("query_string", b"").decode("latin-1"),
        scope_headers(scope),
        scope.get("scheme") in ("https", "wss"),
    )


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def send_reply(send: Send, reply: Reply, *, head_only: bool = False) -> None:
    """Write ``reply`` (headers and all of its body in one message)."""
    headers = encode_headers(reply.headers)
    if reply.status not in (204, 304) and reply.header("content-length") is None:
        headers.append((b"content-length", str(len(reply.body)).encode("ascii")))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else reply.body})


def wsgi_environ(scope: Scope, body: bytes = b"") -> dict[str, Any]:
    """The WSGI environ a WSGI server would build for this request (``body`` as its
    input); ``SCRIPT_NAME`` is the scope's ``root_path``, ``PATH_INFO`` what follows."""
    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        # WSGI strings are latin-1 text of the raw bytes: the path's UTF-8, re-read.
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": route_path(scope).encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        ASGI_SCOPE: scope,
    }
    for name, value in scope_headers(scope).items():
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name == "content-length":
            environ["CONTENT_LENGTH"] = value
        else:
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ

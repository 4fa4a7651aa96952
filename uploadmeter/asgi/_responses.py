"""Writing a werkzeug response on ASGI: the features' decisions, the ASGI shell's pump.

The downloads and links features decide a response once, for both shells: which status,
which headers (``Range``, ``ETag``, 304, 416, the disposition, the zip's length), which
bytes -- as a werkzeug :class:`~werkzeug.wrappers.Response` whose body is an iterator.
Under WSGI the server iterates it on the request's thread.  Here:

* the request is read into a WSGI environ (``_requests.wsgi_environ``: the same names a WSGI
  server gives, with the scope under ``"asgi.scope"``) and the response is decided on a
  worker thread (it may stat files, ask an object store, write a progress record);
* the body is pumped with backpressure (:func:`pump_body`): each piece is read on a
  worker thread *while* the loop sends the previous one, and the next read starts only
  once ``send`` has returned -- the server's ``send`` waits while the socket's buffer is
  full, so a slow reader holds at most two pieces in memory and no thread at all while
  it reads;
* a client that goes away (``http.disconnect``) stops the pump at once, and the body is
  closed on a worker thread (closing settles the download's record).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from werkzeug.wrappers import Response

from uploadmeter.asgi._requests import wsgi_environ
from uploadmeter.asgi._types import Receive, Scope, Send
from uploadmeter.exceptions import DownloadCancelled

__all__ = ["WerkzeugApp", "pump_body"]

Respond = Callable[[dict[str, Any]], Response]
_END = object()
# Bytes read per thread hop: a file body comes in 8 KiB pieces (werkzeug's FileWrapper),
# and a hop per 8 KiB caps a download at ~40 MiB/s; 256 KiB per hop lets the disk set it.
PIECE = 256 * 1024


async def read_small_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the request body: one more than a small body may
    have, so werkzeug's limit answers 413 for a larger one (the rest is left unread)."""
    if scope.get("method") in ("GET", "HEAD"):
        return b""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client left: what came is all there is
        parts.append(message.get("body", b""))
        size += len(parts[-1])
        if not message.get("more_body", False):
            break
    return b"".join(parts)[: limit + 1]


async def _disconnected(receive: Receive) -> None:
    """Returns once the client is gone (what is left of a request body is dropped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def pump_body(chunks: Iterator[bytes], receive: Receive, send: Send) -> bool:
    """Send ``chunks`` as ``http.response.body`` messages with backpressure; ``True`` when
    all was sent, ``False`` when the client went away first.

    The body's pieces (file reads, zip pieces, progress writes) are read on a worker
    thread, :data:`PIECE` bytes at a time, while the previous piece is being sent; the
    thread is held for one read only.
    """
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = asyncio.ensure_future(_disconnected(receive))
    reading: asyncio.Future[Any] = loop.run_in_executor(None, _read_piece, chunks)
    try:
        while True:
            waits: set[asyncio.Future[Any]] = {reading, gone}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                return False  # the client left: stop reading
            chunk = reading.result()
            if chunk is _END:
                break
            # The next piece is read while this one goes out; no more than one ahead.
            reading = loop.run_in_executor(None, _read_piece, chunks)
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if gone.done():
                return False
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True
    finally:
        gone.cancel()
        if not reading.done():  # the body is closed next: never while a read is running
            await asyncio.wait({reading})
        if not reading.cancelled():
            reading.exception()  # read: a read that failed after the client left is moot


def _read_piece(chunks: Iterator[bytes]) -> bytes | object:
    """About :data:`PIECE` bytes of ``chunks`` (on a worker thread), or ``_END``."""
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= PIECE:
            break
    if not parts:
        return _END
    return parts[0] if len(parts) == 1 else b"".join(parts)


class WerkzeugApp:
    """An ASGI app answering with ``respond(environ)``'s werkzeug response.

    :param respond: decides the response (runs on a worker thread).
    :param body_limit: read up to this many bytes of a request body into
        ``wsgi.input`` (a form of a few fields); ``0`` reads none.
    """

    def __init__(self, respond: Respond, *, body_limit: int = 0) -> None:
        self.respond = respond
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        if self.body_limit:
            body = await read_small_body(scope, receive, self.body_limit)
        environ = wsgi_environ(scope, body)
        if self.body_limit and b"content-length" not in dict(scope.get("headers", ())):
            environ["CONTENT_LENGTH"] = str(len(body))  # a chunked body, now read
        response = await asyncio.to_thread(self.respond, environ)
        await send_response(response, environ, receive, send)


async def send_response(
    response: Response, environ: dict[str, Any], receive: Receive, send: Send
) -> None:
    """Write ``response`` (decided for ``environ``) and close it, on a worker thread."""
    app_iter, status, headers = response.get_wsgi_response(environ)
    closer: Callable[[], None] = getattr(app_iter, "close", None) or response.close
    try:
        await send(
            {
                "type": "http.response.start",
                "status": int(status.split(" ", 1)[0]),
                "headers": [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in headers
                ],
            }
        )
        if isinstance(app_iter, (list, tuple)):  # nothing to read: a reply in memory, HEAD
            body = b"".join(app_iter)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await pump_body(iter(app_iter), receive, send)
    except DownloadCancelled:
        # The user cancelled: the body ends short and the server drops the connection.
        # ASGI has no quiet abort: returning unfinished costs one line in the server's log
        # ("returned without completing response") where raising costs a traceback.
        return
    finally:
        # Closing settles a tracked download's record: a store write, off the loop.
        await asyncio.shield(asyncio.to_thread(_close_quietly, closer))


def _close_quietly(close: Callable[[], None]) -> None:
    with contextlib.suppress(OSError):
        close()

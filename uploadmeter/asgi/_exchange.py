"""Features that read request bodies (tus, the chunk protocol), served on ASGI.

:class:`~uploadmeter.resumable.TusUploads` and :class:`~uploadmeter.resumable.ChunkUploads`
are written once, as :mod:`exchanges <uploadmeter.core._exchange>`: generators that
yield how many body bytes they want next and return the response.  The WSGI shell drives
them with a blocking read; this module drives them on the event loop:

* the body is received here, on the loop, into a buffer of at most what the exchange
  asked for (its read size, 1 KiB to 256 KiB for tus, 64 KiB for chunks) plus one
  ``http.request`` message -- the server's flow control holds the rest in the socket;
* each step between two reads (file writes, hashing, store calls, locks, the merge, the
  hand-over to ``on_complete``) runs on a worker thread (:data:`STEP_THREADS` per mounted
  app), so the loop never blocks and a slow client holds no thread while its bytes trickle
  in: it costs a suspended generator and its buffer.

The request is given to the exchange as a PEP 3333 environ built from the scope
(``_requests.wsgi_environ``; no body stream: the body comes through the generator), with
the scope under ``"asgi.scope"`` for the ``session_id`` hook; the
response it returns (a werkzeug response) is written exactly as the WSGI shell writes it:
same status, same headers, same body.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol, runtime_checkable

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wrappers import Response

from uploadmeter.asgi._requests import wsgi_environ
from uploadmeter.asgi._types import Receive, Scope, Send
from uploadmeter.core._exchange import Exchange, advance

# Worker threads per mounted app for the exchanges' steps.  A step is short (one piece
# written and hashed, a store write) but may wait: a lock (tus: up to lock_wait), a merge
# or a verification (seconds for a large file), the application's on_complete.
STEP_THREADS = 4


@runtime_checkable
class ExchangeFeature(Protocol):
    """A feature whose requests are exchanges (:meth:`exchange`)."""

    def exchange(self, environ: dict[str, Any]) -> Exchange[Response]: ...


class ReceivedBody:
    """The request body from ``receive``, in pieces of the size asked for.

    A piece is handed over when it is full or the body ended; when the client leaves,
    what arrived is handed over first, and the next read raises ``ClientDisconnected``
    (as werkzeug's stream does under WSGI): bytes the client sent are kept.
    """

    __slots__ = ("_buffer", "_ended", "_left", "_receive")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._buffer = bytearray()
        self._ended = False
        self._left = False

    async def fill(self, size: int) -> None:
        """Receive until ``size`` bytes wait (or the body ended): the next piece arrives
        while the last one is written."""
        while len(self._buffer) < size and not self._ended:
            await self._receive_one()

    async def _receive_one(self) -> None:
        message = await self._receive()
        if message["type"] != "http.request":  # http.disconnect
            self._ended = self._left = True
            return
        self._buffer += message.get("body", b"")
        self._ended = not message.get("more_body", False)

    async def read(self, size: int) -> bytes:
        while len(self._buffer) < size and not self._ended:
            await self._receive_one()
        if not self._buffer and self._left:
            raise ClientDisconnected()
        block = bytes(self._buffer[:size])
        del self._buffer[:size]
        return block


class ExchangeApp:
    """The ASGI app of an :class:`ExchangeFeature`; the middleware's ``mount`` wraps
    such features in one."""

    def __init__(self, feature: ExchangeFeature) -> None:
        self.feature = feature
        self._pool = ThreadPoolExecutor(STEP_THREADS, thread_name_prefix="uploadmeter-exchange")

    def mounted_at(self, path: str) -> None:
        mounted_at = getattr(self.feature, "mounted_at", None)
        if callable(mounted_at):
            mounted_at(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        environ = wsgi_environ(scope)
        response = await self.drive(self.feature.exchange(environ), ReceivedBody(receive))
        body, status, headers = response.get_wsgi_response(environ)
        # Bytes, in memory: these answers are short JSON (or empty).
        data = b"".join(body)
        await send(
            {
                "type": "http.response.start",
                "status": int(status.split(" ", 1)[0]),
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def drive(self, exchange: Exchange[Response], body: ReceivedBody) -> Response:
        """Run ``exchange``: its steps on a worker thread, its reads on the loop."""
        loop = asyncio.get_running_loop()
        value: Any = None
        throw = False
        step: Future[tuple[bool, Any]] | None = None
        ahead = 0  # bytes to receive while a step runs: the size last asked for
        filling: asyncio.Future[None] | None = None
        try:
            while True:
                step = self._pool.submit(advance, exchange, value, throw)
                stepped = asyncio.wrap_future(step, loop=loop)
                if ahead:
                    # The next piece comes in meanwhile (the loop receives, the worker
                    # writes); the step's end is awaited whatever the client does.
                    filling = asyncio.ensure_future(body.fill(ahead))
                    await asyncio.wait((stepped, filling), return_when=asyncio.FIRST_COMPLETED)
                    if not filling.done():
                        filling.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await filling
                done, result = await stepped
                step = None
                if done:
                    response: Response = result
                    return response
                ahead = result
                try:
                    value, throw = await body.read(result), False
                except ClientDisconnected as exc:
                    value, throw = exc, True
        except BaseException:
            if filling is not None:
                filling.cancel()
            # The server cancelled the request (the client left, shutdown): end the
            # exchange where it stands -- its finally clauses release locks and files --
            # on a worker thread, after the step that may still be running.
            self._pool.submit(_close_after, step, exchange)
            raise


def _close_after(step: Future[Any] | None, exchange: Exchange[Any]) -> None:
    if step is not None:
        wait([step])  # a generator cannot be closed while it runs
    exchange.close()

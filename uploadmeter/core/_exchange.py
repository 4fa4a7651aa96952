"""A request handler that reads its body through ``yield``: one implementation, two shells.

An *exchange* is a generator: it yields the most bytes of the request body it wants
next, the shell sends back the next piece (``b""``: the body ended), and the generator's
return value is the response.  What a body read can raise (the client went away:
werkzeug's ``ClientDisconnected``; a socket error) is thrown into the generator at the
``yield``, where the handler's own ``except`` turns it into its answer.

The protocol code (tus, the chunk protocol) is written once as exchanges; each shell
drives them its own way -- :func:`run_exchange` reads a blocking stream (WSGI), the ASGI
shell receives pieces on the event loop and runs each step between two reads on a
worker thread, so a slow client costs a suspended generator, not a thread.  This is the
sans-IO split of h11 and werkzeug's ``sansio`` package, applied to request bodies.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

_T = TypeVar("_T")

# yields: bytes wanted next (> 0); is sent: the next piece (b"": the end); returns: _T
Exchange = Generator[int, bytes, _T]


def run_exchange(exchange: Exchange[_T], read: Callable[[int], bytes]) -> _T:
    """Drive ``exchange`` with a blocking ``read(size)`` (a WSGI input stream)."""
    step: Callable[[Any], int] = exchange.send
    value: Any = None
    try:
        while True:
            size = step(value)
            try:
                value, step = read(size), exchange.send
            except Exception as exc:  # the handler decides what a failed read means
                value, step = exc, exchange.throw
    except StopIteration as stop:
        result: _T = stop.value
        return result


def advance(exchange: Exchange[_T], value: Any, throw: bool) -> tuple[bool, Any]:
    """One step: send ``value`` (or throw it); ``(True, response)`` once the exchange
    returned, else ``(False, bytes wanted next)``.  For a shell that runs steps on a
    worker thread (the step does the file and store I/O)."""
    try:
        if throw:
            return False, exchange.throw(value)
        return False, exchange.send(value)
    except StopIteration as stop:
        return True, stop.value


def read_body(limit: int) -> Generator[int, bytes, bytes]:
    """The whole body, read to its end or to one byte past ``limit`` (a small body:
    a few parameters)."""
    data = bytearray()
    while len(data) <= limit:
        block = yield limit + 1 - len(data)
        if not block:
            break
        data += block
    return bytes(data)

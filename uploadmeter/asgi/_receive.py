"""The metered ``receive``: the request body as the application receives it, counted.

:class:`MeteredReceive` hands the application exactly the messages the server sends, in
order and unchanged; it never receives on its own.  Each body piece goes to the core's
:class:`~uploadmeter.core._meter.BodyMeter` (a count, no I/O) before the app gets it;
when the meter says a store write is due, the write runs on the store's worker thread
and the app's ``receive`` awaits it (one write per update interval, not per piece).

A cancelled upload, or one past the limit, ends the way a client disconnect does: the
app's next ``receive`` answers ``{"type": "http.disconnect"}``, and so does every later
one; the middleware answers the client itself (:attr:`stopped`).
"""

from __future__ import annotations

from uploadmeter.asgi._types import DISCONNECT, Message, OffLoop, Receive
from uploadmeter.core._meter import DISCONNECTED, OVER_LIMIT, BodyMeter


class MeteredReceive:
    """Wraps the server's ``receive`` for one tracked upload."""

    __slots__ = ("_feed", "_off_loop", "_receive", "meter", "stopped")

    def __init__(self, receive: Receive, meter: BodyMeter, off_loop: OffLoop) -> None:
        self._receive = receive
        self._off_loop = off_loop
        self.meter = meter
        self._feed = meter.feed
        self.stopped = False  # cancelled or too large: the app is told the client left

    async def __call__(self) -> Message:
        if self.stopped:
            return dict(DISCONNECT)
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            body = message.get("body", b"")
            due = self._feed(body) if body else 0
            if due != OVER_LIMIT and not message.get("more_body", False):
                due = self.meter.ended() or due
            if due and await self._off_loop(self.meter.report, due):
                self.stopped = True
                return dict(DISCONNECT)
        elif kind == "http.disconnect" and not self.meter.complete:
            self.meter.failed(DISCONNECTED)
        return message


class CappedReceive:
    """An untracked body of unknown length (chunked), held to ``max_content_length``:
    past ``limit`` bytes the app is told the client left, and the middleware answers
    ``413``."""

    __slots__ = ("_receive", "limit", "received", "stopped")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.received = 0
        self.stopped = False

    async def __call__(self) -> Message:
        if self.stopped:
            return dict(DISCONNECT)
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.stopped = True
                return dict(DISCONNECT)
        return message

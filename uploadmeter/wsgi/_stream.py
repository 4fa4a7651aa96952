"""The metered ``wsgi.input``: the request body as the application reads it, counted.

:class:`MeteredInput` hands back exactly what the server's input stream returns, byte for
byte, for every read method a WSGI app or framework may use (``read``, ``readline``,
``readlines``, iteration, ``readinto``).  It never reads on its own: the application's
reads are the only reads.  On each one it counts bytes, shows them to the multipart
observer and, when a write is due, tells the tracker -- which is also how it learns that
the upload was cancelled, and stops it by raising at that read.

This function runs for every chunk of every tracked upload, so it is kept short.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import LimitedStream

from uploadmeter.core._record import CANCELLED, ERROR
from uploadmeter.core._records import CANCELLED_ERROR
from uploadmeter.core._tracker import UploadTracker
from uploadmeter.exceptions import UploadCancelled, UploadTooLarge

_monotonic = time.monotonic

# What ``MeteredInput.failure`` starts with when a read raised.
DISCONNECTED = "disconnected"
UNREADABLE = "unreadable"


class MeteredInput:
    """Wraps the server's input stream for one tracked upload."""

    __slots__ = (
        "_interval", "_next_report", "_observer", "_record", "_stream", "_tracker",
        "content_length", "eof", "failure", "limit", "received",
    )  # fmt: skip

    def __init__(
        self,
        stream: BinaryIO | Any,
        tracker: UploadTracker,
        *,
        content_length: int | None,
        limit: int | None = None,
        update_interval: float = 0.2,
    ) -> None:
        self._stream = stream
        self._tracker = tracker
        self._observer = tracker.observer
        self._record = tracker.record
        self._interval = update_interval
        self._next_report = 0.0
        self.content_length = content_length
        self.limit = limit
        self.received = 0
        self.eof = False  # the stream ended (at the declared length, or early)
        self.failure: str | None = None  # why reading failed, when it did

    # -- the read methods ----------------------------------------------------------------

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self._stream.read() if size is None or size < 0 else self._stream.read(size)
        except Exception as exc:
            self._failed(exc)
            raise
        return self._took(data, size)

    def readline(self, size: int | None = -1) -> bytes:
        try:
            data = self._stream.readline(size if size is not None else -1)
        except Exception as exc:
            self._failed(exc)
            raise
        return self._took(data, size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        readinto = getattr(self._stream, "readinto", None)
        try:
            if readinto is not None:
                n = readinto(view)
                data = bytes(view[:n]) if n else b""
            else:
                data = self._stream.read(len(view))
                n = len(data)
                view[:n] = data
        except Exception as exc:
            self._failed(exc)
            raise
        if n:
            self._account(data)
        elif len(view):
            self._ended()
        return int(n or 0)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    def readable(self) -> bool:
        return True

    # -- accounting ----------------------------------------------------------------------

    def _took(self, data: bytes, size: int | None) -> bytes:
        """Account for what a read returned; an empty answer to a non-empty read is EOF."""
        if data:
            self._account(data)
        elif size != 0:
            self._ended()
        return data

    def _account(self, data: bytes) -> None:
        self.received += len(data)
        # Kept current on every read, not only on throttled writes: the final write after
        # a disconnect, cancel or error must count every byte that arrived.
        self._record.bytes_received = self.received
        if self._observer is not None:
            self._observer.feed(data)
        if self.limit is not None and self.received > self.limit:
            self.failure = "too large"
            self._tracker.finish(
                ERROR, {"status": 413, "message": "The upload is larger than this server accepts."}
            )
            raise UploadTooLarge()
        now = _monotonic()
        if self.received == self.content_length:
            # The last byte: always written, and from now on too late to cancel.
            if self._tracker.body_received(self.received, now):
                self._cancelled()
        elif now >= self._next_report:
            self._next_report = now + self._interval
            if self._tracker.progress(self.received, now):
                self._cancelled()

    def _ended(self) -> None:
        if self.eof:
            return
        self.eof = True
        if self.content_length is None:
            # A body of unknown length is whole at its end.
            if self._tracker.body_received(self.received, _monotonic()):
                self._cancelled()
        elif self.received < self.content_length:
            self.failure = DISCONNECTED

    def _failed(self, exc: Exception) -> None:
        """Classify a read that raised: the one place that tells a disconnect.

        A vanished client is an ``OSError`` from the server's reader (a reset:
        ``ConnectionResetError`` from gunicorn's ``Body`` and werkzeug's socket file alike;
        gunicorn's ``NoMoreData`` for a chunked body cut short; a timeout) or werkzeug's
        ``ClientDisconnected``; anything else is a body the server could not decode.
        """
        if isinstance(exc, (UploadCancelled, UploadTooLarge)):
            return
        kind = DISCONNECTED if isinstance(exc, (OSError, ClientDisconnected)) else UNREADABLE
        self.failure = f"{kind} ({type(exc).__name__})"

    def _cancelled(self) -> None:
        self.failure = "cancelled"
        self._tracker.finish(CANCELLED, dict(CANCELLED_ERROR))
        raise UploadCancelled()


class CappedInput(LimitedStream):
    """An untracked body of unknown length (chunked), held to ``max_content_length``.

    werkzeug's ``LimitedStream`` with the limit as a maximum, except that a body of exactly
    ``limit`` bytes ends normally: past the limit, one more byte is looked for, and only a
    byte that exists makes the read raise :class:`UploadTooLarge` (a werkzeug 413).
    """

    def __init__(self, stream: BinaryIO | Any, limit: int) -> None:
        super().__init__(stream, limit, is_max=True)
        self._source = stream

    def on_exhausted(self) -> None:
        if self._source.read(1):
            raise UploadTooLarge()

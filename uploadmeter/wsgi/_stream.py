"""The metered ``wsgi.input``: the request body as the application reads it, counted.

:class:`MeteredInput` hands back exactly what the server's input stream returns, byte for
byte, for every read method a WSGI app or framework may use (``read``, ``readline``,
``readlines``, iteration, ``readinto``).  It never reads on its own: the application's
reads are the only reads.  On each one it counts bytes, shows them to the multipart
observer and, when a write is due, tells the tracker -- which is also how it learns that
the upload was cancelled, and stops it by raising at that read.

The counting and its policy live in the core (:class:`~uploadmeter.core._meter.BodyMeter`,
shared with the ASGI shell); this module adapts the read methods to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import LimitedStream

from uploadmeter.core._meter import (
    DISCONNECTED,
    OVER_LIMIT,
    UNREADABLE,
    BodyMeter,
)
from uploadmeter.core._tracker import UploadTracker
from uploadmeter.exceptions import UploadCancelled, UploadTooLarge

__all__ = ["DISCONNECTED", "UNREADABLE", "CappedInput", "MeteredInput"]


class MeteredInput:
    """Wraps the server's input stream for one tracked upload; counts with the core's
    :class:`~uploadmeter.core._meter.BodyMeter`."""

    __slots__ = ("_feed", "_stream", "meter")

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
        self.meter = BodyMeter(
            tracker, content_length=content_length, limit=limit, update_interval=update_interval
        )
        self._feed = self.meter.feed

    # The meter's numbers, as attributes of the stream.

    @property
    def received(self) -> int:
        return self.meter.received

    @property
    def content_length(self) -> int | None:
        return self.meter.content_length

    @property
    def limit(self) -> int | None:
        return self.meter.limit

    @property
    def eof(self) -> bool:
        return self.meter.eof

    @property
    def failure(self) -> str | None:
        return self.meter.failure

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
            self._due(self.meter.ended())
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
            due = self._feed(data)
            if due:
                self._due(due)
        elif size != 0:
            self._due(self.meter.ended())
        return data

    def _account(self, data: bytes) -> None:
        due = self._feed(data)
        if due:
            self._due(due)

    def _due(self, due: int) -> None:
        """Make the store write the meter asked for (here, in the reading thread); stop the
        upload by raising at this read when it was cancelled or passed the limit."""
        if due and self.meter.report(due):
            if due == OVER_LIMIT:
                raise UploadTooLarge()
            raise UploadCancelled()

    def _failed(self, exc: Exception) -> None:
        """Classify a read that raised: the one place that tells a WSGI disconnect.

        A vanished client is an ``OSError`` from the server's reader (a reset:
        ``ConnectionResetError`` from gunicorn's ``Body`` and werkzeug's socket file alike;
        gunicorn's ``NoMoreData`` for a chunked body cut short; a timeout) or werkzeug's
        ``ClientDisconnected``; anything else is a body the server could not decode.
        """
        if isinstance(exc, (UploadCancelled, UploadTooLarge)):
            return
        kind = DISCONNECTED if isinstance(exc, (OSError, ClientDisconnected)) else UNREADABLE
        self.meter.failed(kind, type(exc).__name__)


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

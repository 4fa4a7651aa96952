"""A demo setting: read request bodies slowly, so progress is visible on a fast machine.

On loopback a 100 MB upload takes a fraction of a second and the bar jumps from 0 to
100 %.  With ``DEMO_THROTTLE_KBPS`` set, the demo reads upload bodies at that rate
instead; the browser waits for the server as it would on a slow network.  Never use this
in production: it holds a worker for the whole upload on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

CHUNK = 64 * 1024  # read at most this much at once, so progress moves smoothly


class ReadThrottle:
    """WSGI middleware: request bodies of POST/PUT/PATCH are read at ``bytes_per_second``.

    Install it *inside* the uploadmeter middleware (wrap ``app.wsgi_app`` before
    ``UploadMeter(app)``), so uploadmeter counts the bytes as the app reads them.
    """

    def __init__(self, app: Any, bytes_per_second: float) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        self.app = app
        self.rate = bytes_per_second

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in ("POST", "PUT", "PATCH"):
            environ["wsgi.input"] = ThrottledInput(environ["wsgi.input"], self.rate)
        return self.app(environ, start_response)  # type: ignore[no-any-return]


class ThrottledInput:
    """A ``wsgi.input`` that returns bytes no faster than ``rate`` per second."""

    def __init__(self, stream: Any, rate: float) -> None:
        self._stream = stream
        self._rate = rate
        self._start: float | None = None
        self._total = 0

    def _wait(self, n: int) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self._total += n
        delay = self._start + self._total / self._rate - now
        if delay > 0:
            time.sleep(delay)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        data: bytes = self._stream.read(min(size, CHUNK))
        self._wait(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[:CHUNK]
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            n = int(readinto(view) or 0)
        else:
            data = self._stream.read(len(view))
            n = len(data)
            view[:n] = data
        self._wait(n)
        return n

    def readline(self, size: int | None = -1) -> bytes:
        data: bytes = self._stream.readline(-1 if size is None else size)
        self._wait(len(data))
        return data

    def __iter__(self) -> Any:
        return iter(self.readline, b"")

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

"""Helpers for the download and link tests: a loopback "remote" site, streamed GETs, zips.

* :class:`RemoteSite` -- a WSGI app standing in for a CDN: plain files, a QR image without
  an extension, a named file, a failing URL, a slow URL that stalls until released, a gate
  that waits for the test, a drip of one byte per 0.1 s, a barrier that only answers once
  N requests are in flight at once, redirects and a large body.  Every hit is counted.
* :class:`StreamingGet` -- a GET whose response body the test reads piece by piece.
* :func:`sparse_file` -- a large file that costs no disk.
* :class:`RecordingStore` -- a real :class:`MemoryStore` that keeps every record it writes.
* :class:`LogRecords` -- what a logger emitted during a ``with`` block.
* :func:`run_download_app` -- ``tests.support.download_apps:make_app()`` under gunicorn,
  several workers.
* :func:`together` -- N requests released at once, each held by its own gunicorn worker.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import struct
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from tests.support.servers import Client, new_upload_id, run_gunicorn
from uploadmeter import MemoryStore
from uploadmeter.core import UploadRecord

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # enough of a PNG for names and bytes


class RemoteSite:
    """The remote server of the tests (served with ``serve_in_thread``)."""

    def __init__(self, barrier_parties: int = 3) -> None:
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()  # frees /slow (its test, or the teardown)
        self.gate = threading.Event()  # the test opens /gate when it has looked
        self.barrier = threading.Barrier(barrier_parties, timeout=10)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.release.set()
        self.gate.set()
        self.barrier.abort()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        path = request.path
        with self._lock:
            self.hits[path] += 1
        return self.route(request)(environ, start_response)

    def route(self, request: Request) -> Any:
        path = request.path
        if path.startswith("/files/"):
            name = path[len("/files/") :]
            return Response(f"remote {name}".encode(), mimetype="text/plain")
        if path.startswith("/qr/"):
            return Response(PNG + path.encode(), mimetype="image/png")
        if path == "/named":
            return Response(
                b"named body",
                mimetype="application/pdf",
                headers={
                    "Content-Disposition": "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
                },
            )
        if path == "/fail":
            return Response(b"boom", status=500)
        if path == "/missing":
            return Response(b"nope", status=404)
        if path == "/slow":
            return Response(self._slow(), mimetype="application/octet-stream")
        if path == "/gate":
            self.gate.wait(30)
            return Response(b"after the gate", mimetype="text/plain")
        if path.startswith("/barrier/"):
            self.barrier.wait()  # raises BrokenBarrierError (-> 500) unless all arrive
            return Response(f"together {path}".encode(), mimetype="text/plain")
        if path == "/drip":
            size = int(request.args["bytes"])
            return Response(self._drip(size), headers={"Content-Length": str(size)})
        if path == "/redirect":
            return Response(b"", status=302, headers={"Location": request.args["to"]})
        if path == "/big":
            size = int(request.args.get("size", 1 << 20))
            body = Response(_zeros(size), mimetype="application/octet-stream")
            if request.args.get("chunked"):
                return body  # no Content-Length: the fetcher must count
            body.content_length = size
            return body
        return Response(b"not here", status=404)

    def _drip(self, size: int) -> Iterator[bytes]:
        for _ in range(size):
            time.sleep(0.1)  # a server throttled on purpose
            yield b"."

    def _slow(self) -> Iterator[bytes]:
        yield b"a first piece"
        self.release.wait(30)  # stalls until released: the fetcher must time out first
        yield b"too late"


def _zeros(size: int) -> Iterator[bytes]:
    chunk = bytes(65536)
    while size > 0:
        piece = chunk[: min(size, len(chunk))]
        size -= len(piece)
        yield piece


class StreamingGet:
    """A GET whose body the test reads when it wants (the server blocks meanwhile)."""

    def __init__(
        self,
        base_url: str,
        path: str,
        headers: dict[str, str] | None = None,
        client: Any = None,
        method: str = "GET",
    ) -> None:
        parts = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        all_headers = dict(headers or {})
        if client is not None and client.cookies:
            all_headers["Cookie"] = client.cookie_header()  # the progress session
        self.conn.request(method, path, headers=all_headers)
        self.response = self.conn.getresponse()
        if client is not None:
            client.remember(self.response)
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}

    def read(self, n: int) -> bytes:
        return self.response.read(n)

    def read_all(self) -> bytes:
        return self.response.read()

    def drain(self) -> int:
        """Read to the end, keeping nothing; returns the byte count."""
        total = 0
        while True:
            chunk = self.response.read(1 << 20)
            if not chunk:
                return total
            total += len(chunk)

    def close(self) -> None:
        self.response.close()  # holds the socket open otherwise
        self.conn.close()


def open_zip(data: bytes) -> zipfile.ZipFile:
    """A zip from bytes, with every member's CRC checked."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return archive


def local_header_zip64(data: bytes, info: zipfile.ZipInfo) -> bool:
    """Whether a member's *local* header carries a ZIP64 extra field (id 0x0001)."""
    offset = info.header_offset
    (sig, version, _, _, _, _, _, _, _, name_len, extra_len) = struct.unpack(
        "<IHHHHHIIIHH", data[offset : offset + 30]
    )
    assert sig == 0x04034B50
    extra = data[offset + 30 + name_len : offset + 30 + name_len + extra_len]
    while len(extra) >= 4:
        field_id, size = struct.unpack("<HH", extra[:4])
        if field_id == 0x0001:
            return version >= 45
        extra = extra[4 + size :]
    return False


def sparse_file(path: Any, size: int) -> None:
    """A ``size``-byte file of zeros that takes no disk space."""
    with open(path, "wb") as fp:
        fp.truncate(size)


class Unseekable(io.RawIOBase):
    """A readable stream of unknown length (a pipe, a socket, a generated report)."""

    def __init__(self, data: bytes, chunk: int = 7000) -> None:
        self._data = data
        self._pos = 0
        self._chunk = chunk
        self.closed_by_download = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._chunk, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self.closed_by_download = True
        super().close()


class Zeros(io.RawIOBase):
    """``size`` zero bytes, seekable, from memory: a multi-GiB source with no disk I/O."""

    _block = bytes(1 << 20)

    def __init__(self, size: int) -> None:
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        n = left if n < 0 else min(n, left, len(self._block))
        self._pos += n
        return self._block if n == len(self._block) else self._block[:n]


class RecordingStore(MemoryStore):
    """A memory store that also keeps the history of every progress record it wrote."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[str, UploadRecord]] = []

    def set(self, key: str, value: str, ttl: float) -> None:
        if key.startswith("upload:"):
            self.history.append((key, UploadRecord.loads(value)))
        super().set(key, value, ttl)

    def states(self, upload_id: str) -> list[str]:
        """Every state written for ``upload_id``, in order."""
        return [r.state for key, r in self.history if key.endswith(":" + upload_id)]


class LogRecords(logging.Handler):
    """``with LogRecords("werkzeug") as log:`` keeps what that logger emitted meanwhile."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [self.format(r) for r in self.records if r.levelno >= logging.WARNING]

    def __enter__(self) -> LogRecords:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


@contextlib.contextmanager
def run_download_app(tmp: Path, files: Path, error_log: Path) -> Iterator[str]:
    """``tests.support.download_apps:make_app()`` under gunicorn, 3 sync workers, on the default
    store (an SQLite file under ``tmp``); gunicorn's own log goes to ``error_log``."""
    env = {
        "TMPDIR": str(tmp),
        "UM_FILES": str(files),
        "UM_UPDATE_INTERVAL": "0.02",
    }
    # No control socket: it lives in ~/.gunicorn, shared with every other gunicorn run.
    args = ("--error-logfile", str(error_log), "--log-level", "info", "--no-control-socket")
    with run_gunicorn(
        "tests.support.download_apps:make_app()", workers=3, env=env, args=args
    ) as url:
        yield url


def together(
    base: str, parties: int, method: str, path: str, **headers: str
) -> list[tuple[int, dict[str, str], bytes]]:
    """``parties`` identical requests that the app releases at once (``X-Barrier``)."""
    headers["X-Barrier"] = f"{new_upload_id()}:{parties}"
    body = headers.pop("body", "").encode()
    results: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def send() -> None:
        result = Client(base).request(method, path, body=body or None, headers=headers)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=send) for _ in range(parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == parties
    return results


def post_json(base: str, path: str) -> Any:
    status, _, body = Client(base).request("POST", path)
    assert status == 200, body
    return json.loads(body)

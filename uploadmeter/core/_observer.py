"""Learns where each field of a multipart body starts and ends, as the bytes pass.

The observer sees every chunk the application reads and keeps, per part, the field name,
file name, content type and exact number of data bytes.  It never changes, buffers or
reorders what the application reads.

Why not hand every byte to a multipart parser?  Measured on this project
(``bench/observer_parsers.py``): streaming-form-data 2.1.0 walks body bytes one at a time
(about 70 MiB/s on content full of near-miss delimiters) and spends about 100 us on each
part's headers; werkzeug's sansio decoder copies every body byte through its buffer
(about 3 GiB/s, 200 us per 64 KiB part).  Either would cost far more than the 3 % an
upload may spend on being measured.  So the observer splits the work:

* **Framing** (where can a delimiter be?) is one substring search for ``CRLF--boundary``
  over each chunk: C speed, no copies -- :meth:`bytes.find`, or StringZilla's SIMD search
  when it is installed.  Body bytes are only counted.
* **Headers** of each part (a few hundred bytes) are read the way werkzeug's
  :class:`~werkzeug.sansio.multipart.MultipartDecoder` -- the parser the application
  itself uses through ``request.files`` -- reads them, with its own header-continuation
  pattern and :func:`~werkzeug.http.parse_options_header`, so names and file names are
  decoded exactly as the application sees them.  Only the decoder's buffer and state
  machine are skipped: fed one header block at a time they cost about 20 us a part,
  more than the application's own parser spends on a small field.  Header blocks as
  browsers write them take a one-regex fast path (tested against the decoder).

The framing follows RFC 7578 (CRLF line breaks), as browsers send.  A body it cannot frame
(bare LF line endings, a malformed part, headers past 16 KiB) stops the observer: whole-
request progress goes on, the per-field list just stops growing.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import HEADER_CONTINUATION_RE

from uploadmeter.core._record import DONE, ERROR, UPLOADING, FieldProgress

MAX_HEADER_BYTES = 16 * 1024
MAX_NAME_LENGTH = 256

# Observer states.
_PREAMBLE = 0  # before the first delimiter: bytes belong to no field
_BODY = 1  # inside a part's data: count bytes, look for the next delimiter
_DELIMITER = 2  # at a delimiter: need the two bytes after it to know what comes
_HEADERS = 3  # inside a part's header block
_EPILOGUE = 4  # after the closing delimiter: nothing more to learn
_STOPPED = 5  # gave up on odd input


class MultipartObserver:
    """Watches a ``multipart/form-data`` body chunk by chunk.

    >>> obs = MultipartObserver(b"XyZ")
    >>> obs.feed(b'--XyZ\\r\\nContent-Disposition: form-data; name="f"; filename="a.txt"\\r\\n')
    >>> obs.feed(b"\\r\\nhello\\r\\n--XyZ--\\r\\n")
    >>> [(f.name, f.filename, f.bytes_received, str(f.state)) for f in obs.fields]
    [('f', 'a.txt', 5, 'done')]
    """

    __slots__ = (
        "_carry", "_current", "_delimiter", "_state",
        "complete", "field_count", "fields", "max_fields", "stopped",
    )  # fmt: skip

    def __init__(self, boundary: bytes, *, max_fields: int = 256) -> None:
        if not boundary or len(boundary) > 200 or b"\r" in boundary or b"\n" in boundary:
            raise ValueError("not a usable multipart boundary")
        self._delimiter = b"\r\n--" + boundary
        self.max_fields = max_fields
        self.fields: list[FieldProgress] = []
        self.field_count = 0  # parts seen, tracked or not
        self.complete = False  # the closing delimiter was seen
        self.stopped: str | None = None  # why observing stopped, if it did
        self._state = _PREAMBLE
        self._current: FieldProgress | None = None
        # Bytes not yet accounted for: a possible partial delimiter, or a header block in
        # progress.  The virtual CRLF lets the first "--boundary" match like the others.
        self._carry = b"\r\n"

    # -- public --------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Account for the next bytes of the body, in order."""
        try:
            found = None
            if self._state == _BODY and not self._carry:
                # Inside a part with nothing held back: most chunks of a large file.
                # (What _count() does, inlined: this runs for every chunk of an upload.)
                delimiter = self._delimiter
                found = _find(chunk, delimiter, 0)
                if found < 0:
                    size = len(chunk)
                    cr = chunk.rfind(
                        b"\r", size - len(delimiter) + 1 if size >= len(delimiter) else 0
                    )
                    if cr >= 0 and delimiter.startswith(chunk[cr:]):
                        self._carry = chunk[cr:]
                        size = cr
                    if self._current is not None:
                        self._current.bytes_received += size
                    return
            elif self._state >= _EPILOGUE or not chunk:
                return
            self._feed(chunk, found)
        except Exception as exc:  # the observer must never break the application
            self._stop(f"could not follow the multipart body: {exc}")

    def close(self) -> None:
        """The body ended.  Fields still open were cut short."""
        if self._state in (_BODY, _DELIMITER, _HEADERS) and self._current is not None:
            # A partial delimiter held back at the very end is data after all.
            if self._state == _BODY:
                self._current.bytes_received += len(self._carry)
            self._current.state = ERROR
        self._carry = b""
        if self._state < _EPILOGUE:
            self._state = _EPILOGUE

    # -- framing -------------------------------------------------------------------------

    def _count(self, buf: bytes, pos: int) -> None:
        """``buf[pos:]`` holds no delimiter: count it as data of the current part, but hold
        back what may be the start of one.  The delimiter is ``CRLF--boundary`` and the
        boundary holds no CR, so that can only start at the last CR: one rfind, no loop."""
        keep = 0
        cr = buf.rfind(b"\r", max(pos, len(buf) - len(self._delimiter) + 1))
        if cr >= 0 and self._delimiter.startswith(buf[cr:]):
            keep = len(buf) - cr
            self._carry = buf[cr:]
        if self._current is not None:
            self._current.bytes_received += len(buf) - keep - pos

    def _feed(self, chunk: bytes, found: int | None) -> None:
        """The general case; ``found`` is where :meth:`feed` already found a delimiter."""
        delimiter = self._delimiter
        dlen = len(delimiter)
        carry = self._carry
        # A carry was held back as a possible delimiter start.  If no delimiter starts in it
        # (one would end within the chunk's first dlen - 1 bytes), it is data, and the chunk
        # is searched as it is, not copied (near-miss content ends most chunks with a carry).
        if (
            carry
            and self._state <= _BODY
            and len(chunk) >= dlen - 1
            and _find(carry + chunk[: dlen - 1], delimiter, 0) < 0
        ):
            if self._current is not None:
                self._current.bytes_received += len(carry)
            carry = b""
        buf = carry + chunk if carry else chunk
        self._carry = b""
        pos = 0
        while True:
            state = self._state
            if state <= _BODY:  # in a part's data, or before the first delimiter
                current = self._current  # None before the first part, or past the cap
                if found is None:
                    found = _find(buf, delimiter, pos)
                if found < 0:
                    self._count(buf, pos)
                    return
                if current is not None:
                    current.bytes_received += found - pos
                # Most parts start with a header block as browsers write it, whole in
                # this buffer: one regex match takes delimiter end, headers and blank
                # line at once (what the _DELIMITER and _HEADERS steps below would find).
                part = _BROWSER_PART.match(buf, found + dlen)
                if part is not None:
                    if current is not None:
                        current.state = DONE
                    self._current = self._new_part(*_browser_headers(part))
                    pos = part.end()
                    self._state = _BODY
                    found = None
                    continue
                pos = found
                found = None
                self._state = _DELIMITER
            elif state == _DELIMITER:
                if len(buf) - pos < dlen + 2:
                    self._carry = buf[pos:]
                    return
                after = buf[pos + dlen : pos + dlen + 2]
                if after == b"\r\n":
                    self._state = _HEADERS
                elif after == b"--":
                    self._finish_current(DONE)
                    self.complete = True
                    self._state = _EPILOGUE
                    return
                else:
                    # "CRLF--boundary" followed by anything else is data, not a delimiter
                    # (the application's parser agrees).  The delimiter cannot overlap
                    # itself, so the search resumes one byte on.
                    if self._current is not None:
                        self._current.bytes_received += 1
                    pos += 1
                    self._state = _BODY if self._current is not None else _PREAMBLE
            else:  # _HEADERS
                end = buf.find(b"\r\n\r\n", pos + dlen)
                if end < 0:
                    if len(buf) - pos > MAX_HEADER_BYTES:
                        self._stop("a part's headers are longer than 16 KiB")
                        return
                    self._carry = buf[pos:]
                    return
                self._finish_current(DONE)
                self._start_part(buf[pos : end + 4])
                pos = end + 4
                self._state = _BODY

    # -- parts ---------------------------------------------------------------------------

    def _start_part(self, window: bytes) -> None:
        """Read one part's headers: ``CRLF--boundary CRLF headers CRLF CRLF``."""
        self._current = self._new_part(*_part_headers(window[len(self._delimiter) + 2 : -4]))

    def _new_part(
        self, name: str | None, filename: str | None, content_type: str | None
    ) -> FieldProgress | None:
        """The field a part starts; ``None`` past the tracked-field cap (still counted)."""
        self.field_count += 1
        if len(self.fields) >= self.max_fields:
            return None
        field = FieldProgress(_shown(name), _shown(filename), _shown(content_type), 0, UPLOADING)
        self.fields.append(field)
        return field

    def _finish_current(self, state: str) -> None:
        if self._current is not None:
            self._current.state = state
            self._current = None

    def _stop(self, reason: str) -> None:
        self.stopped = reason
        self._state = _STOPPED
        self._carry = b""
        self._current = None


def _substring_search() -> Callable[[bytes, bytes, int], int]:
    """StringZilla's SIMD ``find`` when installed (a dependency where it has wheels), else
    :meth:`bytes.find`; same arguments, same answers.

    The delimiter search is the observer's whole per-byte cost: ``bytes.find`` runs at about
    10 GB/s on random data and 3.5 GB/s on near-miss delimiters, StringZilla at 35-40 GB/s
    on both (``bench/observer_parsers.py``).  Against a fast server that is the difference
    between a few percent of an upload and one.
    """
    try:
        module = importlib.import_module("stringzilla")
    except ImportError:
        return bytes.find
    find: Callable[[bytes, bytes, int], int] = module.find
    return find


_find = _substring_search()


def _shown(value: str | None) -> str | None:
    """A name, file name or content type, capped (FieldProgress makes it XML-safe)."""
    return None if value is None else value[:MAX_NAME_LENGTH]


# What browsers send, and what parse_options_header would give back unchanged (no
# escapes, no "%22", no RFC 2231): read directly, at a third of the cost per part.
_SIMPLE_DISPOSITION = re.compile(r'form-data; name="([^"\\%]*)"(?:; filename="([^"\\%]*)")?')


# The same, for a whole header block as browsers write it: one match instead of a loop.
_BROWSER_HEADERS = re.compile(
    rb'Content-Disposition: form-data; name="([^"\\%\r\n]*)"'
    rb'(?:; filename="([^"\\%\r\n]*)")?(?:\r\nContent-Type: ([^\r\n]*))?'
)


# The same block in place: what follows "CRLF--boundary", up to and with the blank line.
_BROWSER_PART = re.compile(b"\r\n" + _BROWSER_HEADERS.pattern + b"\r\n\r\n")


def _browser_headers(match: re.Match[bytes]) -> tuple[str | None, str | None, str | None]:
    name, filename, ctype = match.groups()
    return (
        name.decode(),
        None if filename is None else filename.decode(),
        None if ctype is None else ctype.decode().strip(),
    )


def _part_headers(block: bytes) -> tuple[str | None, str | None, str | None]:
    """``(name, filename, content type)`` of a part's header block.

    What ``MultipartDecoder._parse_headers`` and the ``Field``/``File`` event it builds
    give the application (werkzeug 3.1): continuation lines merged, one header per line,
    first occurrence wins (``Headers.get``), options decoded by ``parse_options_header``.
    """
    browser = _BROWSER_HEADERS.fullmatch(block)
    if browser is not None:
        return _browser_headers(browser)
    disposition = content_type = None
    if b"\n " in block or b"\n\t" in block or b"\r " in block or b"\r\t" in block:
        block = HEADER_CONTINUATION_RE.sub(b" ", block)  # (rare: a continued header)
    for line in block.splitlines():
        line = line.strip()
        if line:
            key, _, value = line.decode().partition(":")
            key = key.strip().lower()
            if key == "content-disposition":
                if disposition is None:
                    disposition = value.strip()
            elif key == "content-type" and content_type is None:
                content_type = value.strip()
    if disposition is None:
        raise ValueError("a part has no Content-Disposition header")
    simple = _SIMPLE_DISPOSITION.fullmatch(disposition)
    if simple is not None:
        return simple[1], simple[2], content_type
    options = parse_options_header(disposition)[1]
    return options.get("name"), options.get("filename"), content_type

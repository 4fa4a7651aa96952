"""One request of the chunk protocol, read and checked: its parameters and its chunk.

simple-uploader.js, resumable.js and flow.js send the same parameters under three
spellings (``chunkNumber``, ``resumableChunkNumber``, ``flowChunkNumber``), in the query
string or in the multipart form, and the chunk as the multipart field ``file`` or as the
raw body (``method: "octet"``).  :func:`parse_params` turns them into a checked
:class:`ChunkParams`; :class:`ChunkBody` reads the body, bounded by the chunk's
declared size, into a temp file of the :class:`~uploadmeter.resumable.FileStore`.
Anything refused raises :class:`ChunkRefused` with the status the clients treat as
permanent (415; 413 for a body larger than its chunk needs), a reason and a short message.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Event,
    Field,
    File,
    MultipartDecoder,
    NeedData,
)
from werkzeug.wrappers import Request
from werkzeug.wsgi import get_content_length

from uploadmeter.core._exchange import Exchange, read_body
from uploadmeter.core._limits import (
    CHUNK_FORM_OVERHEAD,
    SMALL_BODY,
    chunk_body_cap,
    chunk_request_cap,
)
from uploadmeter.exceptions import ChunkRefused, InvalidName
from uploadmeter.resumable._storage import (
    DISK_FULL_MESSAGE,
    DISK_FULL_RETRY_AFTER,
    Storage,
    clean_filename,
    clean_relative_path,
    is_disk_full,
)
from uploadmeter.wsgi._endpoints import SmallBodyRequest

__all__ = ["ChunkBody", "ChunkParams", "disk_full", "merge_values", "param", "parse_params"]

SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_INT = re.compile(r"\d{1,18}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_PARTS = 32
_BLOCK = 64 * 1024
_DECODER_BUFFER = 2 * _BLOCK  # what the decoder may hold at once (a read and its rest)


def disk_full() -> ChunkRefused:
    """The disk is full: ``507`` (temporary; the answer carries ``Retry-After``)."""
    return ChunkRefused(
        "disk_full",
        DISK_FULL_MESSAGE,
        status=507,
        headers={"Retry-After": str(DISK_FULL_RETRY_AFTER)},
    )


@dataclass(frozen=True)
class ChunkParams:
    """The protocol parameters of one request, checked."""

    identifier: str
    filename: str
    relative_path: str | None
    total_size: int
    chunk_size: int
    total_chunks: int
    chunk_number: int | None
    current_chunk_size: int | None
    sha256: str | None

    def expected_size(self, number: int) -> int:
        """Size of chunk ``number``: the last one takes the remainder (< 2 x chunk_size)."""
        if number < self.total_chunks:
            return self.chunk_size
        return self.total_size - (self.total_chunks - 1) * self.chunk_size

    @property
    def numbers(self) -> list[int]:
        """Every chunk number, in merge order."""
        return list(range(1, self.total_chunks + 1))

    def same_split(self, other: ChunkParams) -> bool:
        """Whether ``other`` declares the same file size and the same chunks."""
        return (self.total_size, self.chunk_size, self.total_chunks) == (
            other.total_size,
            other.chunk_size,
            other.total_chunks,
        )


def param(values: MultiDict[str, str], name: str) -> str | None:
    """A protocol parameter by its plain, ``resumable…`` or ``flow…`` name."""
    cap = name[0].upper() + name[1:]
    for key in (name, "resumable" + cap, "flow" + cap):
        value = values.get(key)
        if value is not None:
            return value
    return None


def parse_params(
    values: MultiDict[str, str],
    *,
    chunk: bool,
    max_file_size: int,
    max_chunk_size: int,
    max_chunks: int,
) -> ChunkParams:
    """Check a request's parameters (``chunk``: a chunk number is required)."""

    def optional(name: str) -> int | None:
        value = param(values, name)
        if value is not None and not _INT.fullmatch(value):
            raise ChunkRefused("bad_parameter", f"Parameter {name} is not a number.")
        return None if value is None else int(value)

    def required(name: str) -> int:
        value = optional(name)
        if value is None:
            raise ChunkRefused("bad_parameter", f"Missing parameter {name}.")
        return value

    identifier = param(values, "identifier")
    if not identifier or len(identifier) > 255 or _CONTROL.search(identifier):
        raise ChunkRefused("bad_identifier", "The identifier must be 1-255 printable characters.")
    try:
        filename = clean_filename(param(values, "filename") or "")
        relative = param(values, "relativePath")
        relative_path = clean_relative_path(relative) if relative else None
    except InvalidName as exc:
        raise ChunkRefused("bad_filename", str(exc)) from None
    total_size = required("totalSize")
    chunk_size = required("chunkSize")
    total_chunks = required("totalChunks")
    if total_size > max_file_size:
        raise ChunkRefused(
            "too_large", f"The file is larger than this server accepts ({max_file_size} bytes)."
        )
    if not 1 <= chunk_size <= max_chunk_size:
        raise ChunkRefused("bad_chunk_size", f"chunkSize must be 1 to {max_chunk_size} bytes.")
    # Clients split with floor (last chunk up to 2 x chunkSize) or, with
    # forceChunkSize, ceil (last chunk smaller); anything else is not a real split.
    floor = max(total_size // chunk_size, 1)
    ceil = max(-(-total_size // chunk_size), 1)
    if total_chunks not in (floor, ceil) or total_chunks > max_chunks:
        raise ChunkRefused(
            "bad_total_chunks",
            f"totalChunks must be {floor}"
            + (f" or {ceil}" if ceil != floor else "")
            + f" for this size, and at most {max_chunks}.",
        )
    number = required("chunkNumber") if chunk else optional("chunkNumber")
    if number is not None and not 1 <= number <= total_chunks:
        raise ChunkRefused("bad_chunk_number", "chunkNumber is out of range.")
    sha256 = values.get("sha256")
    if sha256 is not None and not SHA256.fullmatch(sha256):
        raise ChunkRefused("bad_parameter", "sha256 must be 64 hex digits.")
    params = ChunkParams(
        identifier=identifier,
        filename=filename,
        relative_path=relative_path,
        total_size=total_size,
        chunk_size=chunk_size,
        total_chunks=total_chunks,
        chunk_number=number,
        current_chunk_size=optional("currentChunkSize"),
        sha256=sha256.lower() if sha256 else None,
    )
    current = params.current_chunk_size
    if number is not None and current is not None and current != params.expected_size(number):
        raise ChunkRefused("size_mismatch", "currentChunkSize does not match the declared sizes.")
    return params


class ChunkBody:
    """The body of one chunk request, read in two steps so that nothing is spooled before
    the parameters are checked: :meth:`parameters`, then :meth:`save` with the chunk's
    declared size, which bounds the read.

    The parameters are the query's when it has them (``method: "octet"`` always, and
    resumable.js's multipart too): then not a byte is read before they are checked.  A
    multipart body without them in the query is read up to its chunk's part (the three
    clients send the fields first), in memory and within
    :data:`~uploadmeter.core._limits.CHUNK_FORM_OVERHEAD`.
    """

    def __init__(self, environ: dict[str, Any], *, file_field: str, max_chunk_size: int) -> None:
        self.values: MultiDict[str, str] = MultiDict(Request(environ).args)
        self.file_field = file_field
        mimetype, options = parse_options_header(environ.get("CONTENT_TYPE", ""))
        self.multipart = mimetype == "multipart/form-data"
        self._boundary = options.get("boundary", "").encode("latin-1", "replace")
        self._declared = get_content_length(environ)
        self._read_bytes = 0
        self._cap = chunk_request_cap(max_chunk_size)  # until the chunk's size is known
        self._set_cap(self._cap)
        self._decoder: MultipartDecoder | None = None
        self._body_ended = False  # the decoder was told the body ended
        self._decoded = False  # ... and gave every event
        self._at_chunk = False  # the chunk's part has begun; its data is next

    def parameters(self) -> Exchange[MultiDict[str, str]]:
        """The parameters known before the chunk's bytes: the query's, or for a multipart
        body whose query has no chunk number, also the form fields before the chunk."""
        if self.multipart and param(self.values, "chunkNumber") is None:
            with self._reading():
                yield from self._find_chunk()
        return self.values

    def save(self, files: Storage, expected: int) -> Exchange[tuple[str, int]]:
        """Read the chunk of ``expected`` bytes into a temp file: ``(its path, its size)``.

        A body that holds more than that chunk needs is refused with 413 -- at once when
        its ``Content-Length`` says so, else at the limit -- and nothing of it is kept; on
        any error no file is left.  The caller deletes the file or renames it into place.
        """
        ok = False
        with self._reading():
            self._set_cap(chunk_body_cap(expected, multipart=self.multipart))
            if self.multipart:
                yield from self._find_chunk()
            path, out = files.temp_file()
            try:
                with out:
                    while (block := (yield from self._chunk_data())) is not None:
                        out.write(block)
                        if out.tell() > expected:
                            raise ChunkRefused(
                                "too_large",
                                f"The chunk holds more than the {expected} bytes declared.",
                                status=413,
                            )
                    size = out.tell()
                yield from self._finish()
                ok = True
            finally:
                if not ok:
                    files.discard(path)
        return path, size

    # -- reading --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn what reading a body can raise into the protocol's answers."""
        try:
            yield
        except ChunkRefused:
            raise
        except RequestEntityTooLarge:  # the multipart decoder's part count or header size
            raise ChunkRefused(
                "too_large",
                f"A chunk request may hold at most {_MAX_PARTS} form parts.",
                status=413,
            ) from None
        except (HTTPException, ValueError, OSError) as exc:
            if is_disk_full(exc):  # temporary (507): nothing of the chunk is kept
                raise disk_full() from None
            # The client went away mid-body, or the body is not valid multipart.
            raise ChunkRefused(
                "bad_body", "The chunk request body is incomplete or invalid."
            ) from exc

    def _set_cap(self, cap: int) -> None:
        """Read at most ``cap`` bytes of the body (a cap is only ever lowered)."""
        self._cap = min(self._cap, cap)
        if max(self._declared or 0, self._read_bytes) > self._cap:
            raise self._too_large()

    def _too_large(self) -> ChunkRefused:
        return ChunkRefused(
            "too_large", f"This chunk request may hold at most {self._cap} bytes.", status=413
        )

    def _read(self) -> Exchange[bytes]:
        # One byte past the cap tells a body that goes on from one that ends there.
        block = yield min(_BLOCK, self._cap + 1 - self._read_bytes)
        self._read_bytes += len(block)
        if self._read_bytes > self._cap:
            raise self._too_large()
        return block

    def _chunk_data(self) -> Exchange[bytes | None]:
        """The next piece of the chunk, or ``None`` after its last."""
        if not self.multipart:  # method: "octet": the body is the chunk
            return (yield from self._read()) or None
        if not self._at_chunk:
            return None  # the chunk's part ended
        event = yield from self._next_event()
        if not isinstance(event, Data):  # the decoder ends a part before the next
            raise ValueError("the chunk's part did not end")
        self._at_chunk = event.more_data
        return event.data

    def _next_event(self) -> Exchange[Event | None]:
        """The next event of the multipart body, or ``None`` once it ended."""
        if self._decoder is None:
            if not self._boundary:
                raise ValueError("Missing boundary")
            self._decoder = MultipartDecoder(
                self._boundary, max_form_memory_size=_DECODER_BUFFER, max_parts=_MAX_PARTS
            )
        while not self._decoded:
            event = self._decoder.next_event()
            if isinstance(event, Epilogue):
                break
            if not isinstance(event, NeedData):
                return event
            if self._body_ended:
                break
            block = yield from self._read()
            self._body_ended = not block
            self._decoder.receive_data(block or None)
        self._decoded = True
        return None

    def _find_chunk(self) -> Exchange[None]:
        """Read the form fields up to the chunk's part (into :attr:`values`)."""
        if not self._at_chunk:
            self._at_chunk = yield from self._fields_until_chunk()
        if not self._at_chunk:
            message = f"The request has no file field {self.file_field!r}."
            raise ChunkRefused("no_file", message)

    def _finish(self) -> Exchange[None]:
        """Read what follows the chunk (form fields, the closing boundary)."""
        if self.multipart:
            self._at_chunk = False
            if (yield from self._fields_until_chunk()):  # a second chunk part is refused
                raise ValueError("two chunk parts")

    def _fields_until_chunk(self) -> Exchange[bool]:
        """Read parts into :attr:`values` until the chunk's part begins (``True``) or the
        body ends (``False``).  What is not the chunk is at most
        :data:`~uploadmeter.core._limits.CHUNK_FORM_OVERHEAD`."""
        name = ""
        value: list[bytes] = []
        other = 0
        while (event := (yield from self._next_event())) is not None:
            if isinstance(event, File) and event.name == self.file_field:
                return True
            if isinstance(event, (Field, File)):
                name, value = (event.name if isinstance(event, Field) else ""), []
            elif isinstance(event, Data):
                other += len(event.data)
                if other > CHUNK_FORM_OVERHEAD:
                    message = f"The form fields may hold at most {CHUNK_FORM_OVERHEAD} bytes."
                    raise ChunkRefused("too_large", message, status=413)
                if name:  # a field (another file part has no name here: not kept)
                    value.append(event.data)
                    if not event.more_data:
                        # The body's values win over the query's.
                        self.values.setlist(name, [b"".join(value).decode("utf-8", "replace")])
        return False


def merge_values(environ: dict[str, Any]) -> Exchange[MultiDict[str, str]]:
    """The parameters of a merge request: its query's, and those of its body (a JSON
    object or a form) over them.

    The body is a few parameters: one of more than :data:`SMALL_BODY` bytes is refused
    with 413, before it is read when its ``Content-Length`` says so.
    """
    values: MultiDict[str, str] = MultiDict(Request(environ).args)
    try:
        declared = get_content_length(environ)
        # Not a byte when the length is over the limit (the request refuses it unread).
        data = b"" if (declared or 0) > SMALL_BODY else (yield from read_body(SMALL_BODY))
        # The body as read, for werkzeug's form and JSON parsing within its limits.
        body_environ = dict(environ, **{"wsgi.input": io.BytesIO(data)})
        if declared is None:
            body_environ["wsgi.input_terminated"] = True
        request = SmallBodyRequest(body_environ)
        request.load_body()
        if request.is_json:
            data = request.get_data()
            body = json.loads(data) if data.strip() else {}
            if not isinstance(body, dict):
                raise ChunkRefused("bad_json", "The JSON body must be an object.", status=400)
            for key, value in body.items():
                values.setlist(key, [str(value)])
        else:
            for key, value in request.form.items(multi=True):
                values.setlist(key, [value])
    except RequestEntityTooLarge:
        limits = f"{SMALL_BODY} bytes and {SmallBodyRequest.max_form_parts} form fields"
        raise ChunkRefused(
            "too_large", f"A merge request may hold at most {limits}.", status=413
        ) from None
    except RecursionError:
        raise ChunkRefused("bad_json", "The JSON body is nested too deeply.", status=400) from None
    except ValueError:  # not JSON, or not UTF-8
        raise ChunkRefused("bad_json", "The request body is not valid JSON.", status=400) from None
    except HTTPException:  # the client went away mid-body
        raise ChunkRefused("bad_body", "The request body is incomplete.", status=400) from None
    return values

"""One request of the chunk protocol, read and checked: its parameters and its chunk.

simple-uploader.js, resumable.js and flow.js send the same parameters under three
spellings (``chunkNumber``, ``resumableChunkNumber``, ``flowChunkNumber``), in the query
string or in the multipart form, and the chunk as the multipart field ``file`` or as the
raw body (``method: "octet"``).  :func:`parse_params` turns them into a checked
:class:`ChunkParams`; :func:`receive_chunk` reads the body into a temp file of the
:class:`~uploadmeter.resumable.FileStore`.  Anything refused raises :class:`ChunkRefused`
with the status the clients treat as permanent (415), a reason and a short message.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import IO, Any

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import parse_form_data
from werkzeug.wrappers import Request
from werkzeug.wsgi import get_input_stream

from uploadmeter.exceptions import ChunkRefused, InvalidName
from uploadmeter.resumable._storage import (
    DISK_FULL_MESSAGE,
    DISK_FULL_RETRY_AFTER,
    FileStore,
    clean_filename,
    clean_relative_path,
    is_disk_full,
)
from uploadmeter.wsgi._endpoints import SMALL_BODY, SmallBodyRequest

__all__ = ["ChunkParams", "disk_full", "merge_values", "param", "parse_params", "receive_chunk"]

SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_INT = re.compile(r"\d{1,18}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORM_OVERHEAD = 64 * 1024  # a multipart chunk's parameters and part headers


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


def receive_chunk(
    environ: dict[str, Any], files: FileStore, *, file_field: str, max_chunk_size: int
) -> tuple[MultiDict[str, str], str, int]:
    """Read a chunk request: ``(parameters, the chunk's temp file, its size)``.

    The caller deletes the file (or renames it into place); on an error nothing is left.
    """
    limit = 2 * max_chunk_size + _FORM_OVERHEAD
    values: MultiDict[str, str] = MultiDict(Request(environ).args)
    created: list[tuple[str, IO[bytes]]] = []

    def new_file(*_: Any, **__: Any) -> IO[bytes]:
        path, f = files.temp_file()
        created.append((path, f))
        return f

    keep = ""
    ok = False
    try:
        if environ.get("CONTENT_TYPE", "").lower().startswith("multipart/form-data"):
            _, form, parts = parse_form_data(
                environ,
                stream_factory=new_file,
                max_content_length=limit,
                max_form_memory_size=500_000,  # also bounds its read buffer: not lower
                max_form_parts=32,
                silent=False,
            )
            storage = parts.get(file_field)
            if storage is None:
                raise ChunkRefused("no_file", f"The request has no file field {file_field!r}.")
            keep = next(path for path, f in created if f is storage.stream)
            for key, value in form.items(multi=True):
                values.setlist(key, [value])  # the body's values win over the query's
        else:
            # method: "octet": the body is the chunk, the parameters are in the query.
            stream = get_input_stream(environ, max_content_length=limit)
            out = new_file()
            while block := stream.read(1024 * 1024):
                out.write(block)
            keep = created[0][0]
        for _, f in created:
            f.close()
        size = os.path.getsize(keep)
        ok = True
    except RequestEntityTooLarge:
        raise ChunkRefused(
            "too_large", f"A chunk request may hold at most {limit} bytes."
        ) from None
    except (HTTPException, ValueError, OSError) as exc:
        if is_disk_full(exc):  # temporary (507): nothing of the chunk is kept
            raise disk_full() from None
        # The client went away mid-body, or the body is not valid multipart.
        raise ChunkRefused("bad_body", "The chunk request body is incomplete or invalid.") from exc
    finally:
        for path, f in created:
            f.close()
            if not ok or path != keep:
                files.discard(path)
    return values, keep, size


def merge_values(environ: dict[str, Any]) -> MultiDict[str, str]:
    """The parameters of a merge request: its query's, and those of its body (a JSON
    object or a form) over them.

    The body is a few parameters: one of more than :data:`SMALL_BODY` bytes is refused
    with 413, before it is read when its ``Content-Length`` says so.
    """
    request = SmallBodyRequest(environ)
    values: MultiDict[str, str] = MultiDict(request.args)
    try:
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

"""The limits policy: how large a request body may be, and which framing is accepted.

Pure functions and constants; the shells apply them (the WSGI middleware to form
uploads, the chunk endpoint to chunk requests, werkzeug's ``SmallBodyRequest`` to the
bodies of a few parameters).

* A form upload larger than ``max_content_length`` gets ``413`` before a byte is read;
  one without a ``Content-Length`` (chunked transfer coding) is read up to that limit.
  A request with both ``Content-Length`` and ``Transfer-Encoding`` gets ``400``: the
  length the limit and the record would trust is not the body the server reads
  (RFC 9112 6.1).
* A body of a few parameters (a merge request, a share's code form) holds at most
  :data:`SMALL_BODY` bytes in at most :data:`SMALL_BODY_PARTS` form parts.
* A chunk request holds at most twice the largest chunk (the last chunk takes the
  remainder) plus :data:`CHUNK_FORM_OVERHEAD` for its form fields, until its chunk's
  declared size is known; then that size (plus the overhead for a multipart body).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CHUNK_FORM_OVERHEAD",
    "CONFLICTING_FRAMING",
    "SMALL_BODY",
    "SMALL_BODY_PARTS",
    "TOO_LARGE",
    "Framing",
    "check_framing",
    "chunk_body_cap",
    "chunk_request_cap",
    "parse_content_length",
]

# A body of a few parameters: a few KB, and room for a relativePath of 4096 bytes,
# percent-encoded.
SMALL_BODY = 32 * 1024
SMALL_BODY_PARTS = 64
# A multipart chunk's parameters and part headers.
CHUNK_FORM_OVERHEAD = 64 * 1024

TOO_LARGE = "The upload is larger than this server accepts."
CONFLICTING_FRAMING = "The request has both Content-Length and Transfer-Encoding."


@dataclass(frozen=True, slots=True)
class Framing:
    """The verdict on a form upload's framing, before a byte of its body is read.

    :param length: the declared ``Content-Length`` (``None``: none, or not a number).
    :param status: ``400`` (conflicting framing), ``413`` (too large) or ``None`` (read it).
    :param message: the reason for a refusal (``""`` when none).
    :param cap: read at most this many bytes (a body without a length), or ``None``.
    """

    length: int | None
    status: int | None = None
    message: str = ""
    cap: int | None = None


def parse_content_length(value: str | None) -> int | None:
    """The length a ``Content-Length`` header declares; ``None`` if absent or invalid."""
    if not value:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def check_framing(
    content_length: str | None, transfer_encoding: str | None, max_content_length: int | None
) -> Framing:
    """Judge a form upload by its ``Content-Length`` and ``Transfer-Encoding`` headers
    (``None`` when absent) against ``max_content_length`` (``None``: no limit)."""
    if transfer_encoding is not None and content_length:
        return Framing(None, 400, CONFLICTING_FRAMING)
    length = parse_content_length(content_length)
    if max_content_length is None:
        return Framing(length)
    if length is None:
        return Framing(None, cap=max_content_length)
    if length > max_content_length:
        return Framing(length, 413, TOO_LARGE)
    return Framing(length)


def chunk_request_cap(max_chunk_size: int) -> int:
    """The most a chunk request may hold before its chunk's declared size is known."""
    return 2 * max_chunk_size + CHUNK_FORM_OVERHEAD


def chunk_body_cap(expected: int, *, multipart: bool) -> int:
    """The most a chunk request may hold once its chunk is known to be ``expected`` bytes."""
    return expected + (CHUNK_FORM_OVERHEAD if multipart else 0)

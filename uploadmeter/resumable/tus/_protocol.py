"""The tus 1.0.0 protocol without I/O (https://tus.io/protocols/resumable-upload).

What the headers of a request mean and which status answers them, for the core protocol
and the ``creation``, ``creation-with-upload``, ``termination``, ``checksum`` and
``expiration`` extensions -- in the manner of h11 and ``werkzeug.sansio``: plain
functions and frozen dataclasses over a header mapping, no sockets, files, store or
server interface, so the WSGI app (:mod:`._app`) and a future ASGI shell share it.

Headers are :class:`werkzeug.datastructures.Headers` or any ``Mapping[str, str]`` (looked
up case-insensitively either way).  A request the protocol refuses raises
:class:`~uploadmeter.exceptions.TusError` carrying its status, message and headers:

====  =================================================================================
400   bad ``Upload-Length`` / ``Upload-Offset`` / ``Upload-Metadata`` /
      ``Upload-Checksum``, ``Upload-Defer-Length`` (not supported), a body that ended early
404   :func:`not_found` (no such upload)
409   :func:`check_offset` (``Upload-Offset`` is not the upload's offset)
410   :func:`gone` (terminated or expired), :func:`cancelled`
412   :func:`check_version` (``Tus-Resumable`` is not ``1.0.0``)
413   past ``Tus-Max-Size`` (:func:`parse_creation`) or ``Upload-Length``
      (:meth:`Patch.check_fits`, :func:`past_length`)
415   data that is not ``application/offset+octet-stream``
423   :func:`locked` (another request writes the upload)
460   :meth:`Checksum.verify` (checksum mismatch)
====  =================================================================================

(``403`` belongs to the ``concatenation`` extension, which this server does not offer.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from werkzeug.datastructures import Headers
from werkzeug.http import http_date, parse_options_header
from werkzeug.sansio.utils import get_content_length

from uploadmeter.exceptions import TusError

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "EXTENSIONS",
    "OFFSET_TYPE",
    "TUS_VERSION",
    "Checksum",
    "Creation",
    "HeaderMap",
    "Metadata",
    "Patch",
    "body_ended_early",
    "cancelled",
    "check_offset",
    "check_version",
    "gone",
    "has_body",
    "head_headers",
    "locked",
    "not_found",
    "offset_headers",
    "options_headers",
    "parse_checksum",
    "parse_creation",
    "parse_metadata",
    "parse_patch",
    "past_length",
    "request_method",
    "require_offset_type",
    "upload_expires",
]

HeaderMap: TypeAlias = Headers | Mapping[str, str]

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
CHECKSUM_ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "md5": hashlib.md5,
}
_INT = re.compile(r"\d{1,18}")
_METADATA_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma


def _headers(headers: HeaderMap) -> Headers:
    """``headers`` with case-insensitive lookups."""
    return headers if isinstance(headers, Headers) else Headers(headers)


# -- answers that refuse a request ---------------------------------------------------------


def not_found() -> TusError:
    return TusError("Upload not found.", status=404)


def gone(message: str) -> TusError:
    """``410``: the upload was terminated or has expired."""
    return TusError(message, status=410)


def cancelled() -> TusError:
    """``410`` for a request the user's cancel stopped (maybe midway through its body,
    whose rest is left unread: hence ``Connection: close``)."""
    return TusError("The upload was cancelled.", status=410, headers={"Connection": "close"})


def locked() -> TusError:
    return TusError("Another request is writing this upload.", status=423)


def past_length() -> TusError:
    return TusError("The data goes past Upload-Length.", status=413)


def body_ended_early() -> TusError:
    return TusError("The request body ended early.")


# -- every request -------------------------------------------------------------------------


def request_method(method: str, headers: HeaderMap) -> str:
    """The method a request means: ``X-HTTP-Method-Override`` wins (for clients behind
    proxies that pass only GET and POST)."""
    return (_headers(headers).get("X-HTTP-Method-Override") or method).upper()


def check_version(headers: HeaderMap) -> None:
    """Every request but OPTIONS names the protocol version; another one gets ``412``."""
    if _headers(headers).get("Tus-Resumable") != TUS_VERSION:
        raise TusError("Unsupported tus version.", status=412, headers={"Tus-Version": TUS_VERSION})


def options_headers(max_size: int) -> dict[str, str]:
    """The OPTIONS answer (``204``): what this server supports."""
    return {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }


def upload_expires(expires_at: float) -> str:
    """``Upload-Expires``: when an unfinished upload goes (a Unix time) as an HTTP date."""
    return http_date(expires_at)


def offset_headers(offset: int, expires_at: float) -> dict[str, str]:
    """``Upload-Offset`` and ``Upload-Expires`` of an upload."""
    return {"Upload-Offset": str(offset), "Upload-Expires": upload_expires(expires_at)}


def head_headers(
    offset: int, length: int, expires_at: float, metadata: str | None
) -> dict[str, str]:
    """The HEAD answer's tus headers (``Upload-Metadata`` as it was accepted, if any)."""
    headers = offset_headers(offset, expires_at)
    headers["Upload-Length"] = str(length)
    if metadata:
        headers["Upload-Metadata"] = metadata
    return headers


def _int_header(headers: Headers, name: str) -> int | None:
    """A non-negative integer header (``Upload-Length``, ``Upload-Offset``), else ``None``."""
    value = headers.get(name, "")
    return int(value) if _INT.fullmatch(value) else None


def has_body(headers: HeaderMap) -> bool:
    """Whether the request carries data (a positive ``Content-Length`` or chunked)."""
    h = _headers(headers)
    length = get_content_length(h.get("Content-Length"), h.get("Transfer-Encoding"))
    if length is not None:
        return length > 0
    return "chunked" in h.get("Transfer-Encoding", "").lower()


def require_offset_type(headers: HeaderMap, what: str) -> None:
    """Data comes as ``application/offset+octet-stream``, else ``415``."""
    mimetype = parse_options_header(_headers(headers).get("Content-Type", ""))[0].lower()
    if mimetype != OFFSET_TYPE:
        raise TusError(f"{what} must be {OFFSET_TYPE}.", status=415)


# -- Upload-Metadata -----------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    """``Upload-Metadata``: ``raw`` re-encoded from the decoded bytes (so nothing but
    Base64 is ever echoed back), ``values`` decoded (UTF-8, undecodable bytes replaced);
    a key without a value has ``""``."""

    raw: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)

    @property
    def filename(self) -> str | None:
        """The file's name as clients send it (Uppy, tus-js-client: ``filename`` or
        ``name``), unchecked."""
        return self.values.get("filename") or self.values.get("name") or None


def parse_metadata(header: str | None, max_length: int) -> Metadata:
    """Validate ``Upload-Metadata`` (comma-separated ``key base64value`` pairs, a value
    may be left out): unique non-empty ASCII keys, Base64 values, at most ``max_length``
    characters; else ``400``."""
    if header is None or not header.strip():
        return Metadata()
    if len(header) > max_length:
        raise TusError("Upload-Metadata is too long.")
    raw: list[str] = []
    decoded: dict[str, str] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        value = value.strip()
        if not _METADATA_KEY.fullmatch(key) or key in decoded:
            raise TusError("Upload-Metadata keys must be unique, non-empty ASCII.")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise TusError(f"Upload-Metadata value of {key!r} is not Base64.") from None
        decoded[key] = data.decode("utf-8", "replace")
        raw.append(f"{key} {base64.b64encode(data).decode('ascii')}" if value else key)
    return Metadata(",".join(raw), decoded)


# -- Upload-Checksum -----------------------------------------------------------------------


@dataclass(frozen=True)
class Checksum:
    """``Upload-Checksum``: the body's digest by ``algorithm`` (one of
    :data:`CHECKSUM_ALGORITHMS`)."""

    algorithm: str
    digest: bytes

    def hasher(self) -> Any:
        """A new ``hashlib`` object to feed the body to."""
        return CHECKSUM_ALGORITHMS[self.algorithm]()

    def verify(self, digest: bytes) -> None:
        """The body's ``digest`` must be the announced one, else ``460``."""
        if digest != self.digest:
            raise TusError("Checksum Mismatch", status=460)


def parse_checksum(headers: HeaderMap) -> Checksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``, if the request has one; an
    unknown algorithm or a digest that is not Base64 gets ``400``."""
    header = _headers(headers).get("Upload-Checksum")
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusError(f"Unsupported checksum algorithm; use {','.join(CHECKSUM_ALGORITHMS)}.")
    try:
        return Checksum(algorithm, base64.b64decode(value.strip(), validate=True))
    except (binascii.Error, ValueError):
        raise TusError("Upload-Checksum is not Base64.") from None


# -- POST: creation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Creation:
    """A creation request (``POST``): the upload's ``length`` and ``metadata``."""

    length: int
    metadata: Metadata


def parse_creation(headers: HeaderMap, *, max_size: int, max_metadata_length: int) -> Creation:
    """Validate a creation request's ``Upload-Length`` (``413`` past ``max_size``),
    ``Upload-Defer-Length`` (not supported: ``400``) and ``Upload-Metadata``.

    Its data, if any (creation-with-upload, :func:`has_body`), is checked with
    :func:`require_offset_type` and :func:`parse_checksum`.
    """
    h = _headers(headers)
    if "Upload-Defer-Length" in h:
        raise TusError("Deferred upload length is not supported.")
    length = _int_header(h, "Upload-Length")
    if length is None:
        raise TusError("Upload-Length must be a non-negative integer.")
    if length > max_size:
        raise TusError(f"Uploads may have at most {max_size} bytes.", status=413)
    return Creation(length, parse_metadata(h.get("Upload-Metadata"), max_metadata_length))


# -- PATCH -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """A PATCH request: data at ``offset``, ``content_length`` bytes (``None``: chunked)."""

    offset: int
    content_length: int | None
    checksum: Checksum | None

    def check_fits(self, upload_length: int) -> None:
        """Data announced past the upload's length gets ``413`` before it is read."""
        if self.content_length is not None and self.offset + self.content_length > upload_length:
            raise past_length()


def parse_patch(headers: HeaderMap) -> Patch:
    """Validate a PATCH's ``Content-Type`` (``415``), ``Upload-Offset`` and
    ``Upload-Checksum`` (``400``)."""
    h = _headers(headers)
    require_offset_type(h, "PATCH requests")
    offset = _int_header(h, "Upload-Offset")
    if offset is None:
        raise TusError("Upload-Offset must be a non-negative integer.")
    checksum = parse_checksum(h)
    content_length = get_content_length(h.get("Content-Length"), h.get("Transfer-Encoding"))
    return Patch(offset, content_length, checksum)


def check_offset(requested: int, current: int) -> None:
    """A PATCH must continue where the upload ends, else ``409`` (with the offset)."""
    if requested != current:
        raise TusError(
            f"Upload-Offset is {current}.", status=409, headers={"Upload-Offset": str(current)}
        )

"""The tus 1.0.0 protocol without I/O (https://tus.io/protocols/resumable-upload).

What the headers of a request mean and which status answers them, for the core protocol
and the ``creation``, ``creation-with-upload``, ``creation-defer-length``, ``termination``,
``checksum``, ``expiration`` and ``concatenation`` extensions -- in the manner of h11
and ``werkzeug.sansio``: plain functions and frozen dataclasses over a header mapping, no
sockets, files, store or server interface, so the WSGI app (:mod:`._app`) and a future
ASGI shell share it.

Headers are :class:`werkzeug.datastructures.Headers` or any ``Mapping[str, str]`` (looked
up case-insensitively either way).  A request the protocol refuses raises
:class:`~uploadmeter.exceptions.TusError` carrying its status, message and headers:

====  =================================================================================
400   bad ``Upload-Length`` / ``Upload-Offset`` / ``Upload-Metadata`` /
      ``Upload-Checksum`` / ``Upload-Defer-Length`` / ``Upload-Concat``, a body that ended
      early, :func:`not_partial` / :func:`partial_unfinished` (a final upload's parts)
403   :func:`modify_final` (a PATCH to a final upload)
404   :func:`not_found` (no such upload; also a partial upload named by a final one)
409   :func:`check_offset` (``Upload-Offset`` is not the upload's offset)
410   :func:`gone` (terminated or expired), :func:`cancelled`
412   :func:`check_version` (``Tus-Resumable`` is not ``1.0.0``)
413   past ``Tus-Max-Size`` (:func:`parse_creation`, :func:`check_final_length`,
      :meth:`Patch.declared_length`) or ``Upload-Length`` (:meth:`Patch.check_fits`,
      :func:`past_length`)
415   data that is not ``application/offset+octet-stream``
423   :func:`locked` (another request writes the upload)
460   :meth:`Checksum.verify` (checksum mismatch)
====  =================================================================================

``concatenation-unfinished`` is not offered: a final upload names finished partial uploads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from werkzeug.datastructures import Headers
from werkzeug.http import http_date, parse_options_header
from werkzeug.sansio.utils import get_content_length

from uploadmeter.exceptions import TusError

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "EXTENSIONS",
    "MAX_PARTIALS",
    "OFFSET_TYPE",
    "TUS_VERSION",
    "Checksum",
    "Concat",
    "Creation",
    "HeaderMap",
    "Metadata",
    "Patch",
    "body_ended_early",
    "cancelled",
    "check_final_length",
    "check_max_size",
    "check_offset",
    "check_version",
    "gone",
    "has_body",
    "head_headers",
    "locked",
    "modify_final",
    "not_found",
    "not_partial",
    "offset_headers",
    "options_headers",
    "parse_checksum",
    "parse_concat",
    "parse_creation",
    "parse_metadata",
    "parse_patch",
    "partial_unfinished",
    "past_length",
    "request_method",
    "require_offset_type",
    "upload_expires",
]

HeaderMap: TypeAlias = Headers | Mapping[str, str]

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration,"
    "concatenation"
)
# The most partial uploads one final upload may name (tus-js-client sends parallelUploads).
MAX_PARTIALS = 1000
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


def modify_final() -> TusError:
    """``403``: a final upload is made of its partial uploads, never PATCHed."""
    return TusError("A final upload cannot be modified.", status=403)


def not_partial(url: str) -> TusError:
    return TusError(f"Upload-Concat names an upload that is not partial: {url}")


def partial_unfinished(url: str) -> TusError:
    """``400``: ``concatenation-unfinished`` is not offered."""
    return TusError(f"Upload-Concat names an unfinished partial upload: {url}")


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
    offset: int | None,
    length: int | None,
    expires_at: float,
    metadata: str | None,
    concat: str | None = None,
) -> dict[str, str]:
    """The HEAD answer's tus headers: ``Upload-Metadata`` and ``Upload-Concat`` as they
    were accepted, if any; ``Upload-Defer-Length: 1`` while the length is unknown
    (``length=None``); no ``Upload-Offset`` for a final upload not yet concatenated
    (``offset=None``)."""
    headers = {"Upload-Expires": upload_expires(expires_at)}
    if offset is not None:
        headers["Upload-Offset"] = str(offset)
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    if metadata:
        headers["Upload-Metadata"] = metadata
    if concat:
        headers["Upload-Concat"] = concat
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
class Concat:
    """``Upload-Concat``: a ``partial`` upload, or a ``final`` one made of the partial
    uploads at ``urls`` (absolute or relative, in order; repeats allowed).  ``raw`` is
    the header as received, which HEAD answers echo."""

    final: bool
    urls: tuple[str, ...] = ()
    raw: str = "partial"

    @property
    def upload_names(self) -> list[str]:
        """The last path segment of each URL: where a server finds the upload."""
        return [urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] for url in self.urls]


@dataclass(frozen=True)
class Creation:
    """A creation request (``POST``): the upload's ``length`` (``None``: deferred, or a
    final upload's, which is its partial uploads' sum), ``metadata`` and ``concat``."""

    length: int | None
    metadata: Metadata
    concat: Concat | None = None


def parse_concat(header: str | None) -> Concat | None:
    """``Upload-Concat: partial`` or ``final;<url> <url> ...``, else ``400``."""
    if header is None:
        return None
    value = header.strip()
    if value == "partial":
        return Concat(final=False)
    kind, sep, rest = value.partition(";")
    urls = tuple(rest.split())
    if kind.strip() != "final" or not sep or not urls:
        raise TusError("Upload-Concat must be 'partial' or 'final;<url> <url> ...'.")
    if len(urls) > MAX_PARTIALS:
        raise TusError(f"A final upload may name at most {MAX_PARTIALS} partial uploads.")
    return Concat(final=True, urls=urls, raw=value)


def parse_creation(headers: HeaderMap, *, max_size: int, max_metadata_length: int) -> Creation:
    """Validate a creation request's ``Upload-Length`` (``413`` past ``max_size``),
    ``Upload-Defer-Length`` (``1`` or absent), ``Upload-Concat`` and ``Upload-Metadata``.

    A final upload takes neither a length (its partial uploads have one) nor data: ``400``.
    Other data, if any (creation-with-upload, :func:`has_body`), is checked with
    :func:`require_offset_type` and :func:`parse_checksum`.
    """
    h = _headers(headers)
    concat = parse_concat(h.get("Upload-Concat"))
    metadata = parse_metadata(h.get("Upload-Metadata"), max_metadata_length)
    deferred = h.get("Upload-Defer-Length")
    if concat is not None and concat.final:
        if "Upload-Length" in h or deferred is not None:
            raise TusError("A final upload takes no Upload-Length: its parts have one.")
        if has_body(h):
            raise TusError("A final upload takes no data: its parts have it.")
        return Creation(None, metadata, concat)
    if deferred is not None:
        if deferred.strip() != "1":
            raise TusError("Upload-Defer-Length must be 1.")
        if "Upload-Length" in h:
            raise TusError("Send Upload-Length or Upload-Defer-Length, not both.")
        return Creation(None, metadata, concat)
    length = _int_header(h, "Upload-Length")
    if length is None:
        raise TusError("Upload-Length must be a non-negative integer.")
    check_max_size(length, max_size)
    return Creation(length, metadata, concat)


def check_max_size(length: int, max_size: int) -> None:
    """An upload of ``length`` bytes must fit ``Tus-Max-Size``, else ``413``."""
    if length > max_size:
        raise TusError(f"Uploads may have at most {max_size} bytes.", status=413)


def check_final_length(lengths: list[int | None], urls: tuple[str, ...], max_size: int) -> int:
    """A final upload's length: the sum of its partial uploads' ``lengths`` (``None``: a
    partial upload whose length is still deferred, hence unfinished: ``400``), which
    must fit ``Tus-Max-Size`` (``413``)."""
    total = 0
    for length, url in zip(lengths, urls, strict=True):
        if length is None:
            raise partial_unfinished(url)
        total += length
    check_max_size(total, max_size)
    return total


# -- PATCH -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """A PATCH request: data at ``offset``, ``content_length`` bytes (``None``: chunked),
    and the ``upload_length`` a deferred-length upload declares (``None``: not sent)."""

    offset: int
    content_length: int | None
    checksum: Checksum | None
    upload_length: int | None = None

    def check_fits(self, upload_length: int | None, max_size: int) -> None:
        """Data announced past the upload's length (or, while it is deferred, past
        ``max_size``) gets ``413`` before it is read."""
        limit = max_size if upload_length is None else upload_length
        if self.content_length is not None and self.offset + self.content_length > limit:
            raise past_length()

    def declared_length(self, upload_length: int | None, max_size: int) -> int | None:
        """The upload's length after this PATCH: the one it has, or the one this PATCH
        declares for a deferred upload (``413`` past ``max_size`` or short of the data
        this PATCH brings, ``400`` short of its offset).  Once set, a length never
        changes (``400``)."""
        if self.upload_length is None:
            return upload_length
        if upload_length is not None:
            if self.upload_length != upload_length:
                raise TusError("Upload-Length is set already and cannot change.")
            return upload_length
        check_max_size(self.upload_length, max_size)
        if self.upload_length < self.offset:
            raise TusError("Upload-Length is less than Upload-Offset.")
        if self.offset + (self.content_length or 0) > self.upload_length:
            raise past_length()
        return self.upload_length


def parse_patch(headers: HeaderMap) -> Patch:
    """Validate a PATCH's ``Content-Type`` (``415``), ``Upload-Offset``,
    ``Upload-Checksum`` and ``Upload-Length`` (creation-defer-length) (``400``)."""
    h = _headers(headers)
    require_offset_type(h, "PATCH requests")
    offset = _int_header(h, "Upload-Offset")
    if offset is None:
        raise TusError("Upload-Offset must be a non-negative integer.")
    checksum = parse_checksum(h)
    upload_length = None
    if "Upload-Length" in h:
        upload_length = _int_header(h, "Upload-Length")
        if upload_length is None:
            raise TusError("Upload-Length must be a non-negative integer.")
    content_length = get_content_length(h.get("Content-Length"), h.get("Transfer-Encoding"))
    return Patch(offset, content_length, checksum, upload_length)


def check_offset(requested: int, current: int) -> None:
    """A PATCH must continue where the upload ends, else ``409`` (with the offset)."""
    if requested != current:
        raise TusError(
            f"Upload-Offset is {current}.", status=409, headers={"Upload-Offset": str(current)}
        )

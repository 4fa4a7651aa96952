"""Every exception uploadmeter defines, in one module.

Every error uploadmeter raises on purpose derives from :class:`UploadMeterError`, so
applications can catch the library's failures in one place.  Each class carries the HTTP
status a response about it answers as its ``status`` class attribute; a raise site that
needs another one passes ``status=`` (``ShareError("...", status=429)``).  Responses read
``exc.status`` and ``exc.message``, nothing else.

The two that travel through the application's own reads of the request body
(:class:`UploadCancelled` and :class:`UploadTooLarge`) also derive from the matching
werkzeug HTTP exceptions, so a Flask or werkzeug app turns them into the right response
without knowing uploadmeter; their werkzeug ``code`` is their ``status``.

The hierarchy (HTTP status in brackets; ``*``: set per raise)::

    UploadMeterError [500]
    ├── MissingDependency (ImportError) ........ an optional extra is not installed
    ├── ConfigurationError (RuntimeError) ...... the Flask app's configuration
    ├── InvalidUploadId (ValueError) [400]
    ├── StoreError [503] ....................... the progress store failed
    │   └── ObjectStoreError [503] ............. the object store (S3) failed: temporary
    │                                            (also a SourceError; Retry-After;
    │                                            ObjectStoreUnavailable is another name)
    ├── UnsafeStorePath (PermissionError) ...... an SQLite store others could write
    ├── LockTimeout [503]
    ├── LockLost [503]
    ├── UploadCancelled (werkzeug ClientDisconnected) [400]
    ├── UploadTooLarge (werkzeug RequestEntityTooLarge) [413]
    ├── resumable uploads
    │   ├── InvalidName (ValueError) [400]
    │   ├── QuotaExceeded [413]
    │   ├── DiskFull [507]
    │   ├── UploadRejected [415*] ............... raised by on_complete
    │   ├── CompletionFailed [500]
    │   ├── ChunkRefused [415*] ................. a chunk-protocol answer (reason, message)
    │   └── TusError [400*] ..................... a tus answer (message, headers)
    ├── processing
    │   ├── ProcessingCancelled [499]
    │   └── ProcessingFailed [422*]
    ├── downloads
    │   ├── DownloadCancelled (ConnectionResetError) [499]
    │   └── SourceError [500*]
    │       ├── SourceNotFound [404]
    │       ├── ObjectStoreError [503] ....... the same class as under StoreError
    │       └── RemoteError [502]
    │           ├── HostNotAllowed
    │           ├── AddressNotAllowed
    │           └── RemoteTooLarge
    └── LinkError [410] ......................... signed links and shares
        ├── LinkInvalid [403]
        ├── LinkExpired
        ├── LinkUsed
        ├── LinkRevoked
        └── ShareError [410*]

(The groups without a class name are only headings.)
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

__all__ = [
    "AddressNotAllowed",
    "ChunkRefused",
    "CompletionFailed",
    "ConfigurationError",
    "DiskFull",
    "DownloadCancelled",
    "HostNotAllowed",
    "InvalidName",
    "InvalidUploadId",
    "LinkError",
    "LinkExpired",
    "LinkInvalid",
    "LinkRevoked",
    "LinkUsed",
    "LockLost",
    "LockTimeout",
    "MissingDependency",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
    "ProcessingCancelled",
    "ProcessingFailed",
    "QuotaExceeded",
    "RemoteError",
    "RemoteTooLarge",
    "ShareError",
    "SourceError",
    "SourceNotFound",
    "StoreError",
    "TusError",
    "UnsafeStorePath",
    "UploadCancelled",
    "UploadMeterError",
    "UploadRejected",
    "UploadTooLarge",
]


class UploadMeterError(Exception):
    """Base class of every uploadmeter error.

    ``status`` is the HTTP status a response about the error answers (a class attribute,
    overridden per instance with ``status=``); ``message`` is the text a client may see.
    """

    status: int = 500

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class MissingDependency(UploadMeterError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, feature: str, package: str, extra: str) -> None:
        super().__init__(f"{feature} needs {package}: pip install 'uploadmeter[{extra}]'")
        self.package, self.extra = package, extra


class ConfigurationError(UploadMeterError, RuntimeError):
    """The app's configuration does not let uploadmeter start."""


class InvalidUploadId(UploadMeterError, ValueError):
    """A tracking id is not 8-128 characters of ``[A-Za-z0-9_-]``."""

    status = 400


class StoreError(UploadMeterError):
    """The progress store could not be reached or answered with an error (temporary)."""

    status = 503


class UnsafeStorePath(UploadMeterError, PermissionError):
    """An SQLite store's file or directory is owned by another account or writable by
    group or others: anyone who could write it could plant records (shares, links), so
    the store refuses it at start-up instead of trusting it."""


class LockTimeout(UploadMeterError):
    """The lock stayed taken for longer than the caller was willing to wait."""

    status = 503


class LockLost(UploadMeterError):
    """The lock expired while held (the holder stalled for longer than its ttl)."""

    status = 503


class _WerkzeugError(UploadMeterError, HTTPException):
    """An error that is also a werkzeug HTTP exception: its ``code`` is its ``status``."""

    def __init__(self, message: str | None = None, *, status: int | None = None) -> None:
        HTTPException.__init__(self, message)  # None keeps the class's description
        self.message = self.description or ""
        if status is not None:
            self.status = status
        self.code = self.status


class UploadCancelled(_WerkzeugError, ClientDisconnected):
    """Raised from ``wsgi.input.read()`` once the upload was cancelled.

    The application sees what it would see if the client had gone away.
    """

    status = code = 400
    description = "The upload was cancelled."


class UploadTooLarge(_WerkzeugError, RequestEntityTooLarge):
    """Raised from ``wsgi.input.read()`` when a body of unknown length passes the limit."""

    status = code = 413
    description = "The upload is larger than this server accepts."


# -- resumable uploads ---------------------------------------------------------------------


class InvalidName(UploadMeterError, ValueError):
    """A client-supplied name that uploadmeter refuses to keep."""

    status = 400


class QuotaExceeded(UploadMeterError):
    """A new upload would take the session past its quota of unfinished bytes."""

    status = 413

    def __init__(self, reserved: int, quota: int) -> None:
        super().__init__(
            f"This session already has {reserved} bytes of unfinished uploads; "
            f"the limit is {quota}."
        )
        self.reserved, self.quota = reserved, quota


class DiskFull(UploadMeterError):
    """The disk has no room for a new upload now."""

    status = 507


class UploadRejected(UploadMeterError):
    """Raise from ``on_complete`` to refuse a file; ``message`` is shown to the user."""

    status = 415


class CompletionFailed(UploadMeterError):
    """``on_complete`` raised something else; the record says ``error`` (500)."""


class ChunkRefused(UploadMeterError):
    """A chunk-protocol answer other than success: a short JSON error with a ``reason``.

    415 by default: the chunk clients treat it as permanent.  ``headers`` go with the
    answer; ``extra`` is merged into its JSON body.
    """

    status = 415

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message, status=status)
        self.reason = reason
        self.headers = dict(headers or {})
        self.extra = extra


class TusError(UploadMeterError):
    """A tus answer other than success: ``status``, a short message and ``headers``."""

    status = 400

    def __init__(
        self, message: str, *, status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.headers = dict(headers or {})


# -- processing ----------------------------------------------------------------------------


class ProcessingCancelled(UploadMeterError):
    """The user cancelled the upload while it was being processed.

    Raised by :meth:`~uploadmeter.processing.ProcessingTask.advance` (and
    :meth:`~uploadmeter.processing.ProcessingTask.start`); the record already says
    ``cancelled``.  Let it end the work.
    """

    status = 499


class ProcessingFailed(UploadMeterError):
    """Raise inside a task to end it in ``error`` with this message shown to the user.

    Other exceptions end it in ``error`` too, with a generic message (their text may hold
    paths or secrets, so it only goes to the log).
    """

    status = 422


# -- downloads -----------------------------------------------------------------------------

_DOWNLOAD_CANCELLED = "The download was cancelled."


class DownloadCancelled(UploadMeterError, ConnectionResetError):
    """Raised from the response body once the download was cancelled.

    To the server it is what it is to the client, a dropped connection: werkzeug and
    gunicorn close the socket and log a reset quietly (no traceback), and the client sees
    an incomplete body (short of its ``Content-Length``, or a chunked one without its last
    chunk).  Just ending the body would make a chunked download look complete.
    """

    status = 499

    def __init__(self) -> None:
        ConnectionResetError.__init__(self, errno.ECONNRESET, _DOWNLOAD_CANCELLED)
        self.message = _DOWNLOAD_CANCELLED


class SourceError(UploadMeterError):
    """A source could not be read.  ``status`` is the HTTP status a failed download answers."""


class SourceNotFound(SourceError):
    """A path does not exist, or lies outside the download root."""

    status = 404


class ObjectStoreError(StoreError, SourceError):
    """The object store (S3) could not be reached, throttled us, or failed (``5xx``):
    temporary, answered ``503`` with ``Retry-After``.

    One class for both sides: resumable uploads into an :class:`~uploadmeter.S3Storage`
    raise it where a :class:`StoreError` is handled (the chunk and tus endpoints answer
    ``503`` + ``Retry-After``), downloads of an :class:`~uploadmeter.downloads.S3Object`
    where a :class:`SourceError` is (``Retry-After: retry_after`` seconds)."""

    status = 503
    retry_after = 5


ObjectStoreUnavailable = ObjectStoreError  # its name on the resumable side, kept


class _ObjectMissing(UploadMeterError, LookupError):
    """An object or multipart upload the object store does not have (``NoSuchKey``,
    ``NoSuchUpload``, 404).  Private: :class:`~uploadmeter.S3Storage` raises and handles
    it inside its own calls; it never reaches an application."""

    status = 404


class RemoteError(SourceError):
    """A remote source could not be fetched (502 when it fails the download)."""

    status = 502


class HostNotAllowed(RemoteError):
    """The URL's scheme or host is not one the application allows."""


class AddressNotAllowed(RemoteError):
    """The host resolves to an address that is not public (SSRF protection)."""


class RemoteTooLarge(RemoteError):
    """The remote file is larger than the fetcher's ``max_size``."""


# -- signed links and shares ---------------------------------------------------------------


class LinkError(UploadMeterError):
    """A link or share cannot be used; ``status`` and ``message`` are what the client sees."""

    status = 410


class LinkInvalid(LinkError):
    """Not a link we signed (tampered, truncated, or signed with an unknown key)."""

    status = 403


class LinkExpired(LinkError):
    """The link's time is up."""


class LinkUsed(LinkError):
    """A single-use link was already used."""


class LinkRevoked(LinkError):
    """The link was revoked (or the store no longer knows it)."""


class ShareError(LinkError):
    """A share cannot be used (not found 404, expired/revoked 410, code 403, too many 429).

    ``retry_after`` (seconds) goes with a 429.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after

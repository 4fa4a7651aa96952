"""Named exceptions raised by uploadmeter.

Every error uploadmeter raises on purpose derives from :class:`UploadMeterError`, so
applications can catch the library's failures in one place.  The two that travel through
the application's own reads of the request body (:class:`UploadCancelled` and
:class:`UploadTooLarge`) also derive from the matching werkzeug HTTP exceptions, so a
Flask or werkzeug app turns them into the right response without knowing uploadmeter.
"""

from __future__ import annotations

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge


class UploadMeterError(Exception):
    """Base class of every uploadmeter error."""


class InvalidUploadId(UploadMeterError, ValueError):
    """A tracking id is not 8-128 characters of ``[A-Za-z0-9_-]``."""


class StoreError(UploadMeterError):
    """The progress store could not be reached or answered with an error."""


class UnsafeStorePath(UploadMeterError, PermissionError):
    """An SQLite store's file or directory is owned by another account or writable by
    group or others: anyone who could write it could plant records (shares, links), so
    the store refuses it at start-up instead of trusting it."""


class UploadCancelled(UploadMeterError, ClientDisconnected):
    """Raised from ``wsgi.input.read()`` once the upload was cancelled.

    The application sees what it would see if the client had gone away.
    """

    description = "The upload was cancelled."


class UploadTooLarge(UploadMeterError, RequestEntityTooLarge):
    """Raised from ``wsgi.input.read()`` when a body of unknown length passes the limit."""

    description = "The upload is larger than this server accepts."

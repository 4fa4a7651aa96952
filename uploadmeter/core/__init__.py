"""The core: what an upload is, independent of any server interface.

The core knows ids, the progress record and its states, the multipart observer that
learns field boundaries as bytes pass, the record writer (keys, lifetimes, cancelling:
the only code that writes records), the tracker that turns bytes into throttled record
writes, the session policy, the limits policy (body sizes and framing), the context
features are given (:class:`MeterContext`) and the store-backed locks.  It does no socket
I/O and imports no server interface (WSGI, ASGI) and no feature package; the WSGI shell
(:mod:`uploadmeter.wsgi`) and the feature packages are built on it.

The states of :class:`State` are module constants too (``UNKNOWN``, ``STARTING``,
``UPLOADING``, ``PROCESSING``, ``DONE``, ``ERROR``, ``CANCELLED``), with two sets of
them: ``IN_FLIGHT`` (starting, uploading, processing) and ``FINISHED`` (done, error,
cancelled).  ``INVALID_ID_MESSAGE`` is the message a malformed upload id is refused with
(an id is 8 to 128 characters of ``A-Z``, ``a-z``, ``0-9``, ``_`` and ``-``:
:func:`valid_upload_id`).
"""

from uploadmeter.core._context import MeterContext, context_of
from uploadmeter.core._ids import INVALID_ID_MESSAGE, valid_upload_id
from uploadmeter.core._limits import Framing, check_framing
from uploadmeter.core._locks import StoreLock
from uploadmeter.core._observer import MultipartObserver
from uploadmeter.core._record import (
    CANCELLED,
    DONE,
    ERROR,
    FINISHED,
    IN_FLIGHT,
    PROCESSING,
    STARTING,
    UNKNOWN,
    UPLOADING,
    FieldProgress,
    State,
    UploadRecord,
)
from uploadmeter.core._records import Records
from uploadmeter.core._sessions import CookieSettings, Sessions
from uploadmeter.core._settings import TrackerSettings
from uploadmeter.core._tracker import UploadTracker
from uploadmeter.exceptions import LockLost, LockTimeout

__all__ = [
    "CANCELLED",
    "DONE",
    "ERROR",
    "FINISHED",
    "INVALID_ID_MESSAGE",
    "IN_FLIGHT",
    "PROCESSING",
    "STARTING",
    "UNKNOWN",
    "UPLOADING",
    "CookieSettings",
    "FieldProgress",
    "Framing",
    "LockLost",
    "LockTimeout",
    "MeterContext",
    "MultipartObserver",
    "Records",
    "Sessions",
    "State",
    "StoreLock",
    "TrackerSettings",
    "UploadRecord",
    "UploadTracker",
    "check_framing",
    "context_of",
    "valid_upload_id",
]

"""The core: what an upload is, independent of any server interface.

The core knows ids, the progress record and its states, the multipart observer that
learns field boundaries as bytes pass, the tracker that turns bytes into throttled
record writes, the session cookie and the store-backed locks.  It does no socket I/O and
imports no server interface (WSGI, ASGI) and no feature package; the WSGI shell
(:mod:`uploadmeter.wsgi`) and the feature packages are built on it.
"""

from uploadmeter.core._ids import INVALID_ID_MESSAGE, valid_upload_id
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
from uploadmeter.core._sessions import CookieSettings, SessionCookie
from uploadmeter.core._tracker import TrackerSettings, UploadTracker
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
    "LockLost",
    "LockTimeout",
    "MultipartObserver",
    "SessionCookie",
    "State",
    "StoreLock",
    "TrackerSettings",
    "UploadRecord",
    "UploadTracker",
    "valid_upload_id",
]

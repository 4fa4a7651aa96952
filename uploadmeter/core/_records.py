"""The one writer of progress records and cancel flags: keys, lifetimes, cancelling.

Every record write goes through :class:`Records` -- the tracker (form uploads, downloads),
processing tasks, the chunk and tus endpoints and the cancel endpoint -- so each policy is
written once:

* **Keys**: ``upload:{session}:{id}`` holds the record, ``cancel:{session}:{id}`` the
  cancel flag (or the marker saying the body was received, see below).
* **Lifetimes**: a finished record lives ``ttl``; one in flight lives ``stale_after`` longer
  (readable while its writer is alive, then as ``error`` for ``ttl`` once it went stale).
* **A cancel flag lives exactly as long as the record it guards**: it is written by the
  same call, with the same lifetime (:meth:`Records.cancel` while the upload may still be
  in flight, :meth:`Records.finish` of a cancelled record once it ended).  A flag
  outliving its record would cancel a later upload that reuses the id: :meth:`claim`
  clears flags only beside an existing record.
* **Too late to cancel**: once the application has read the whole body the uploading
  worker puts a *received* marker in the cancel key (:meth:`Records.body_received`).  Flag
  and marker are both written with ``add``, so whichever comes first wins, and
  :meth:`Records.request_cancel` refuses a cancel that comes second.

Methods raise :class:`~uploadmeter.exceptions.StoreError` when the store is away; callers
on the upload path catch it and degrade.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from uploadmeter.core._record import CANCELLED, IN_FLIGHT, PROCESSING, UploadRecord

if TYPE_CHECKING:
    from uploadmeter.core._settings import TrackerSettings
    from uploadmeter.stores._base import ProgressStore

CANCELLED_ERROR = {"status": 499, "message": "The upload was cancelled."}
TOO_LATE_TO_CANCEL = "Too late to cancel: the server has received the whole upload."

# The cancel key holds either the cancel flag, or -- written by the uploading worker when the
# application has read the whole body -- a marker saying it is too late to cancel.  The
# marker names the upload's start, so a marker left by an earlier upload with the same id
# is told apart.
CANCEL_FLAG = "1"
_RECEIVED = "received:"


def record_key(session: str, upload_id: str) -> str:
    return f"upload:{session}:{upload_id}"


def cancel_key(session: str, upload_id: str) -> str:
    return f"cancel:{session}:{upload_id}"


def body_received_marker(record: UploadRecord) -> str:
    return f"{_RECEIVED}{record.started_at!r}"


def cancel_flagged(value: str | None) -> bool:
    """Whether a cancel key's value asks to cancel (not absent, not the received marker)."""
    return value is not None and not value.startswith(_RECEIVED)


class Records:
    """Reads and writes the records and cancel flags of one store, under one policy.

    :param store: the progress store.
    :param settings: ``ttl`` and ``stale_after`` give the lifetimes.
    """

    __slots__ = ("finished_ttl", "in_flight_ttl", "settings", "store")

    def __init__(self, store: ProgressStore, settings: TrackerSettings) -> None:
        self.store = store
        self.settings = settings
        # The TTL rule, the one place it is written: a record in flight stays readable
        # until it is stale, then for as long as a finished one.
        self.in_flight_ttl = settings.stale_after + settings.ttl
        self.finished_ttl = settings.ttl

    # -- reading -------------------------------------------------------------------------

    def load(self, session: str, upload_id: str, *, stale: bool = True) -> UploadRecord | None:
        """The record, or ``None``.  ``stale=True``: as a poller should see it (an in-flight
        record its writer stopped updating reads as ``error``); ``False``: as stored."""
        return self.parse(self.store.get(record_key(session, upload_id)), stale=stale)

    def parse(self, text: str | None, *, stale: bool = True) -> UploadRecord | None:
        """The record stored as ``text`` (what the store answered for its key), as
        :meth:`load` returns it: for shells that read the key their own way."""
        if text is None:
            return None
        record = UploadRecord.loads(text)
        return record.with_staleness(self.settings.stale_after) if stale else record

    def cancel_requested(self, session: str, upload_id: str) -> bool:
        """Whether the user asked to cancel this upload (one store read)."""
        return cancel_flagged(self.store.get(cancel_key(session, upload_id)))

    # -- writing -------------------------------------------------------------------------

    def claim(self, session: str, record: UploadRecord) -> bool:
        """Take ``record.id`` for a new upload and write its first record.

        ``False`` when an upload with this id is still in flight.  A fresh id costs one
        ``add`` (which also detects a double submit); reusing the id of an upload that
        ended costs more, and clears that upload's cancel flag.
        """
        key = record_key(session, record.id)
        text = record.dumps()
        if self.store.add(key, text, self.in_flight_ttl):
            return True
        existing = self.store.get(key)
        if existing is not None:
            previous = UploadRecord.loads(existing).with_staleness(self.settings.stale_after)
            if previous.state in IN_FLIGHT:
                return False
        self.clear_cancel(session, record.id)
        self.store.set(key, text, self.in_flight_ttl)
        return True

    def save(self, session: str, record: UploadRecord, *, check_cancel: bool = False) -> bool:
        """Write an in-flight record.  With ``check_cancel``, look for the cancel flag first
        and write nothing when it is up (a cancelled record must not be overwritten with
        an earlier state); returns whether it was."""
        if check_cancel and self.cancel_requested(session, record.id):
            return True
        self.store.set(record_key(session, record.id), record.dumps(), self.in_flight_ttl)
        return False

    def finish(self, session: str, record: UploadRecord) -> None:
        """Write a finished record (``done``, ``error``, ``cancelled``).  A cancelled one takes
        its flag along: both expire together."""
        if record.state == CANCELLED:
            self.store.set(cancel_key(session, record.id), CANCEL_FLAG, self.finished_ttl)
        self.store.set(record_key(session, record.id), record.dumps(), self.finished_ttl)

    def forget(self, session: str, upload_id: str) -> None:
        """Delete the record and its cancel key (an upload given up, or started afresh)."""
        self.clear_cancel(session, upload_id)
        self.store.delete(record_key(session, upload_id))

    def clear_cancel(self, session: str, upload_id: str) -> None:
        """Drop a cancel flag left by an earlier upload with this id."""
        self.store.delete(cancel_key(session, upload_id))

    # -- cancelling ----------------------------------------------------------------------

    def cancel(
        self,
        session: str,
        upload_id: str,
        record: UploadRecord | None = None,
        *,
        message: str | None = None,
    ) -> UploadRecord:
        """Cancel the upload now: raise its flag, then mark its record ``cancelled``.

        The flag is what stops the worker still receiving it (at its next write); the
        record shows the cancel at once.  Both keep the in-flight lifetime -- the worker
        may not notice before it would have gone stale -- and its final write
        (:meth:`finish`) shortens both.  Returns the cancelled record.
        """
        record = record or UploadRecord(id=upload_id)
        if record.state != CANCELLED:
            record.state = CANCELLED
            record.finished_at = record.updated_at = time.time()
            record.error = dict(CANCELLED_ERROR)
            if message is not None:
                record.error["message"] = message
        self.store.set(cancel_key(session, upload_id), CANCEL_FLAG, self.in_flight_ttl)
        self.store.set(record_key(session, upload_id), record.dumps(), self.in_flight_ttl)
        return record

    def request_cancel(self, session: str, upload_id: str) -> UploadRecord | None:
        """A user's cancel (``{prefix}/cancel``).  ``None`` if there is no such upload.

        Only an upload in flight is cancelled.  Once the application has read the whole
        body it is too late: the record is returned unchanged (still in flight, not
        ``cancelled``), and the upload ends as the app decides.  A processing task still
        honours a cancel.
        """
        record = self.load(session, upload_id)
        if record is None or record.state not in IN_FLIGHT:
            return record
        key = cancel_key(session, upload_id)
        if not self.store.add(key, CANCEL_FLAG, self.in_flight_ttl):
            value = self.store.get(key)
            if value == body_received_marker(record) and record.state != PROCESSING:
                return record  # too late
        return self.cancel(session, upload_id, record)

    def body_received(self, session: str, record: UploadRecord) -> bool:
        """The application has read the whole body: from now on a cancel is refused.

        Returns ``True`` when a cancel came first (the app must not get the end of the
        body then).  One ``add`` when no cancel is pending.
        """
        key = cancel_key(session, record.id)
        return not self.store.add(
            key, body_received_marker(record), self.in_flight_ttl
        ) and cancel_flagged(self.store.get(key))

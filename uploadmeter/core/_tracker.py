"""The life of one tracked upload in the store: start, throttled progress, one final write.

The tracker owns the :class:`~uploadmeter.core.UploadRecord` of an upload while its
worker receives it.  It decides when a write is worth making (a 2 GB upload costs tens of
writes, not tens of thousands), learns about cancellation from the store, and survives a
store that goes away: the upload carries on, a warning is logged, progress resumes when
the store answers again.
"""

from __future__ import annotations

import logging
import threading
import time

from uploadmeter.core._observer import MultipartObserver
from uploadmeter.core._record import (
    CANCELLED,
    ERROR,
    FINISHED,
    PROCESSING,
    STARTING,
    UPLOADING,
    UploadRecord,
)
from uploadmeter.core._records import CANCELLED_ERROR, Records
from uploadmeter.core._settings import TrackerSettings
from uploadmeter.exceptions import StoreError
from uploadmeter.stores._base import ProgressStore

log = logging.getLogger("uploadmeter")

# What UploadTracker.progress_work answers: the store work progress() would do.
LOOK = 1
WRITE = 2


class UploadTracker:
    """Writes one upload's record; used by the middleware and the metered stream."""

    def __init__(
        self,
        store: ProgressStore,
        session: str,
        record: UploadRecord,
        settings: TrackerSettings,
        observer: MultipartObserver | None = None,
    ) -> None:
        self.store = store
        self.record = record
        self.settings = settings
        self.observer = observer
        self.writes = 0  # store writes made, for benchmarks and tests
        self._session = session
        self._records = Records(store, settings)
        self._last_bytes = record.bytes_received  # a resumed record counts on from here
        self._last_time = self._started = time.monotonic()
        self._last_write = self._last_look = 0.0
        self._store_down_until = 0.0
        self._step = int(record.content_length * settings.min_step) if record.content_length else 0

    # -- start ---------------------------------------------------------------------------

    def claim(self) -> bool:
        """Take the id for this upload and write its first record (``starting``).

        ``False`` when an upload with this id is still in flight.  A fresh id costs one
        store operation: ``add`` both detects a double submit (two near-simultaneous
        requests with one id: the second finds the first's record) and writes the record.
        Only reusing an id whose upload ended costs more.
        """
        record = self.record
        record.updated_at = time.time()
        try:
            if self._records.claim(self._session, record):
                self.writes += 1
                # The claim is the first write: the first progress write is due like any
                # other (1 % more, or the heartbeat), so an upload that ends within one
                # update interval costs the claim, its last byte and its final state.
                self._last_write = time.monotonic()
                return True
            return False
        except StoreError as exc:
            # No store, no conflict detection: the upload itself must still go through.
            self._store_failed(exc)
        return True

    # -- progress ------------------------------------------------------------------------

    def progress_work(self, received: int, now: float) -> int:
        """What :meth:`progress` would do now, without doing it (no I/O): ``0`` nothing,
        ``LOOK`` a look for a cancel, ``WRITE`` a write.  A shell that runs store
        calls elsewhere (ASGI: on a thread) asks first and skips the trip for ``0``."""
        if now < self._store_down_until:
            return 0
        record = self.record
        if (
            record.state not in (UPLOADING, STARTING)
            or not self._step
            or received - self._last_bytes >= self._step
            or now - self._last_write >= self._heartbeat(now)
        ):
            return WRITE
        # No write yet, but a cancel must not wait for one: look every heartbeat.
        if now - max(self._last_write, self._last_look) >= self.settings.heartbeat:
            return LOOK
        return 0

    def progress(self, received: int, now: float) -> bool:
        """Record ``received`` bytes if a write is due.  Returns ``True`` if cancelled."""
        self.record.bytes_received = received
        work = self.progress_work(received, now)
        if work == LOOK:
            self._last_look = now
            return self._cancel_requested()
        if work == WRITE:
            self._moved_to(received, now)
            return self._write(now, check_cancel=True)
        return False

    def body_received(self, received: int, now: float) -> bool:
        """The application has read the whole body: from now on a cancel is refused.

        Takes the place of the last byte's progress write (``add`` of the too-late marker
        instead of the cancel flag's ``get``, then the record).  Returns ``True`` when a
        cancel came first: the app must not get the end of the body then.
        """
        record = self.record
        record.bytes_received = received
        if record.state in FINISHED:
            return record.state == CANCELLED
        if now < self._store_down_until:
            return False
        try:
            if self._records.body_received(self._session, record):
                return True
        except StoreError as exc:
            self._store_failed(exc)
            return False
        self._moved_to(received, now)
        self._write(now, check_cancel=False)
        return False

    def _moved_to(self, received: int, now: float) -> None:
        record = self.record
        elapsed = now - self._last_time
        moved = received - self._last_bytes
        if elapsed > 0 and moved:
            speed = moved / elapsed
            # Exponential smoothing keeps the ETA from jumping with every burst.
            record.speed = speed if record.speed is None else 0.7 * record.speed + 0.3 * speed
        self._last_bytes = received
        self._last_time = now
        record.state = UPLOADING

    def _heartbeat(self, now: float) -> float:
        settings = self.settings
        return min(max(settings.heartbeat, (now - self._started) / 25), settings.stale_after / 3)

    def finish(self, state: str, error: dict[str, object] | None = None) -> None:
        """The final write: ``done``, ``error`` or ``cancelled``.  Idempotent."""
        record = self.record
        if record.state in FINISHED:
            return
        if self.observer is not None:
            self.observer.close()
        if state == ERROR and self._cancel_requested():
            # Cancelled elsewhere, then the client went away: that is a cancel, and the
            # record the cancel endpoint wrote must not be overwritten with an error.
            state, error = CANCELLED, dict(CANCELLED_ERROR)
        record.state = state
        record.error = error
        record.finished_at = record.updated_at = time.time()
        if state == ERROR and record.fields:
            for f in record.fields:
                if f.state == UPLOADING:
                    f.state = ERROR
        self._store_down_until = 0.0  # the last word is always worth one more try
        try:
            self._write_final()
        except StoreError as exc:
            self._store_failed(exc)
            # The outcome is known and must reach the store: retried in the background.
            _final_writes.retry(self, time.monotonic() + self._records.in_flight_ttl)

    def _write_final(self, *, retried: bool = False) -> None:
        """Write the final record (raises :class:`StoreError`)."""
        record = self.record
        if self.observer is not None:
            record.fields = self.observer.fields
            record.field_count = self.observer.field_count
        if retried and record.state != CANCELLED and self._cancel_requested(raising=True):
            # A cancel landed while the store was away (finish() could not see it).
            if record.state != ERROR:
                # Never "cancelled", then "done": the cancel endpoint's record stays.
                log.warning(
                    "uploadmeter: upload %s was cancelled while the store was unavailable; "
                    "the application had already answered %s",
                    record.id,
                    record.state,
                )
                return
            record.state, record.error = CANCELLED, dict(CANCELLED_ERROR)
        record.updated_at = time.time()
        self._records.finish(self._session, record)
        self.writes += 1

    def start_processing(self, phase: str, total: int | None) -> bool:
        """Hand the record to a processing task: ``processing``, not ``done``.

        Returns ``True`` (and writes nothing) when the upload was cancelled.
        """
        record = self.record
        if record.state in FINISHED:
            return record.state == CANCELLED
        record.state = PROCESSING
        record.processing = {"phase": phase, "done": 0, "total": total, "started_at": time.time()}
        self._store_down_until = 0.0
        return self._write(time.monotonic(), check_cancel=True)

    def _cancel_requested(self, *, raising: bool = False) -> bool:
        try:
            return self._records.cancel_requested(self._session, self.record.id)
        except StoreError:
            if raising:
                raise
            return False

    def write_now(self) -> None:
        """Write the record as it is (first event, state changes, app results)."""
        self._write(time.monotonic(), check_cancel=False)

    # -- store ---------------------------------------------------------------------------

    def _write(self, now: float, *, check_cancel: bool) -> bool:
        record = self.record
        if self.observer is not None:
            record.fields = self.observer.fields
            record.field_count = self.observer.field_count
        record.updated_at = time.time()
        try:
            # Cancel first: a cancelled record must not be overwritten with "uploading".
            if self._records.save(self._session, record, check_cancel=check_cancel):
                return True
            self.writes += 1
            self._last_write = now
        except StoreError as exc:
            self._store_failed(exc)
        return False

    def _store_failed(self, exc: StoreError) -> None:
        if not self._store_down_until:
            log.warning("uploadmeter: progress store unavailable, upload continues: %s", exc)
        self._store_down_until = time.monotonic() + self.settings.store_retry


class _FinalWriteRetries:
    """Final writes that failed, retried by one daemon thread per process.

    A finished upload's outcome must reach the store once it answers again, but the
    request that knows it has already been answered.  The thread outlives that request
    (fine in gunicorn's sync and threaded workers alike: it sleeps between tries), backs
    off from 0.1 s to 2 s, drops a write once the record it replaces would have expired,
    and exits when nothing is left.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[UploadTracker, float]] = {}
        self._thread: threading.Thread | None = None

    def retry(self, tracker: UploadTracker, deadline: float) -> None:
        with self._lock:
            self._pending[id(tracker)] = (tracker, deadline)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="uploadmeter-final-writes", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        delay = 0.1
        while True:
            time.sleep(delay)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
                due = list(self._pending.items())
            landed = False
            for key, (tracker, deadline) in due:
                try:
                    tracker._write_final(retried=True)
                except StoreError:
                    if time.monotonic() < deadline:
                        continue
                    log.error(
                        "uploadmeter: gave up writing the outcome of upload %s",
                        tracker.record.id,
                    )
                else:
                    landed = True
                    log.info("uploadmeter: store back, outcome of %s written", tracker.record.id)
                with self._lock:
                    del self._pending[key]
            delay = 0.1 if landed else min(delay * 2, 2.0)


_final_writes = _FinalWriteRetries()

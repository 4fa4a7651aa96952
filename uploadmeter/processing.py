"""Progress of the work an application does after an upload (compress, scan, transcode).

The work reports into the upload's own progress record, so the same poll and the same
100-segment bar show it: state ``processing``, a phase label and real numbers
(``{"phase": "compressing", "done": 5242880, "total": 20971520}``), then ``done`` with a
result, or ``error``.  Only the store is needed, so the work may run in a thread, in a
process pool or on another machine::

    from uploadmeter.processing import task

    t = task(meter, session, upload_id, "compressing", total=size)
    pool.submit(compress, path, t)          # returns at once

    def compress(path, t):
        with t:                             # state: processing
            for block in blocks(path):
                t.advance(len(block))       # throttled writes, checks for cancel
            t.set_result(url=...)           # shown with state done
        # an exception inside the block ends in state "error"

From a coroutine (an ASGI view), the same task with ``async with`` and the ``a``-methods,
whose store writes run on a worker thread, never on the event loop::

    handle = uploadmeter.asgi.current_upload(request)
    await handle.start_processing("scanning")
    async with task(meter, handle.session, handle.id, "scanning", total=size) as t:
        async for block in blocks(path):
            await t.aadvance(len(block))

An upload measured by the middleware is marked ``done`` when the application answers.
A view that will process the file afterwards calls
``current_upload(environ).start_processing("compressing")`` first, so the record goes
straight from ``uploading`` to ``processing`` (polls never see a premature ``done``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from uploadmeter.core._context import HasContext, MeterContext, context_of
from uploadmeter.core._ids import valid_upload_id
from uploadmeter.core._record import CANCELLED, DONE, ERROR, IN_FLIGHT, PROCESSING, UploadRecord
from uploadmeter.core._records import CANCELLED_ERROR, Records
from uploadmeter.core._settings import TrackerSettings
from uploadmeter.exceptions import (
    InvalidUploadId,
    ProcessingCancelled,
    ProcessingFailed,
    StoreError,
)
from uploadmeter.stores._base import ProgressStore
from uploadmeter.wsgi._requests import session_of

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

log = logging.getLogger("uploadmeter")

__all__ = [
    "ProcessingCancelled",
    "ProcessingFailed",
    "ProcessingTask",
    "request_task",
    "task",
]


class ProcessingTask:
    """Reports one phase (or several) of processing into an upload's record.

    Create it with :func:`task`.  Thread-safe: a pool of threads may share one task.
    Writes are throttled to one per ``settings.update_interval`` (plus one when ``done``
    reaches ``total``); each also checks whether the user cancelled.  An advance made
    just before an idle stretch may wait for the next write, so :meth:`finish` and
    :meth:`fail` always write the final numbers, and ``touch(force=True)`` writes at
    once.  Call :meth:`advance` (or :meth:`touch`) at least every
    ``settings.stale_after`` seconds, or polls will report the task as stopped.

    Within a phase the percentage never goes backwards: ``done`` only grows, and
    ``total`` may be given late but not changed (:meth:`set_phase` starts a new count).
    """

    def __init__(
        self,
        store: ProgressStore,
        session: str,
        upload_id: str,
        phase: str,
        *,
        total: int | None = None,
        settings: TrackerSettings | None = None,
    ) -> None:
        if not valid_upload_id(upload_id):
            raise InvalidUploadId(upload_id)
        self.store = store
        self.session = session
        self.upload_id = upload_id
        self.settings = settings or TrackerSettings()
        self.phase = phase
        self.done = 0
        self.total = total
        self.result: dict[str, Any] = {}
        self.started = False
        self.started_at = time.time()  # replaced by the record's own when handed over
        self.finished = False
        self._record: UploadRecord | None = None
        self._records = Records(store, self.settings)
        self._lock = threading.Lock()
        self._last_write = 0.0

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> ProcessingTask:
        """Mark the record ``processing`` now (idempotent).

        Works on a record in any state but ``cancelled`` (which raises
        :class:`ProcessingCancelled`): ``done`` goes back to ``processing``, and with no
        record at all a new one is made.
        """
        with self._lock:
            if self.started:
                return self
            record = self._records.load(self.session, self.upload_id, stale=False)
            if record is not None and record.state == CANCELLED:
                raise ProcessingCancelled(f"upload {self.upload_id} was cancelled")
            if record is None or record.state not in IN_FLIGHT:
                # The cancel endpoint flags in-flight records only: a flag beside no
                # record or a finished one is left from an earlier upload with this id.
                # (Beside an in-flight record it is a cancel made just now: the write
                # below sees it.)
                self._records.clear_cancel(self.session, self.upload_id)
            if record is None:
                record = UploadRecord(
                    id=self.upload_id, state=PROCESSING, started_at=self.started_at
                )
            previous = record.processing
            if record.state == PROCESSING and previous is not None:
                # When processing began (the upload's own time ends there), whatever phase.
                self.started_at = float(previous.get("started_at") or self.started_at)
            if (
                record.state == PROCESSING
                and previous is not None
                and previous.get("phase") == self.phase
            ):
                # Handed over (start_processing, or another process): continue its count.
                self.done = max(self.done, int(previous.get("done") or 0))
                if self.total is None and previous.get("total") is not None:
                    self.total = int(previous["total"])
            record.state = PROCESSING
            record.finished_at = None
            record.error = None
            if self.result:
                record.result = dict(record.result or {}, **self.result)
            self._record = record
            self.started = True
            self._write(force=True)
        return self

    def advance(self, n: int, total: int | None = None) -> None:
        """``n`` more units (bytes, files, ...) are done; ``total`` may be learnt late."""
        self._ensure_started()
        with self._lock:
            self._count(self.done + n, total)

    def update(self, done: int, total: int | None = None) -> None:
        """Set the absolute amount done (a smaller value than before is ignored)."""
        self._ensure_started()
        with self._lock:
            self._count(max(self.done, done), total)

    def set_phase(self, phase: str, total: int | None = None) -> None:
        """Move to the next phase (``"compressing"`` → ``"thumbnails"``); resets ``done``."""
        self._ensure_started()
        with self._lock:
            self.phase, self.done, self.total = phase, 0, total
            self._write(force=True)

    def touch(self, *, force: bool = False) -> None:
        """Prove the work is alive during a long step without measurable progress."""
        self._ensure_started()
        with self._lock:
            self._write(force=force)

    def set_result(self, **result: Any) -> None:
        """JSON-serialisable data shown to the client (from the next write on)."""
        with self._lock:
            self.result.update(result)
            if self._record is not None:
                self._record.result = dict(self._record.result or {}, **result)

    def abandon(self) -> None:
        """Stop reporting without a final state (another task takes the record over)."""
        with self._lock:
            self.finished = True

    def finish(self, **result: Any) -> None:
        """End in ``done`` (``with`` does this when the block ends without an exception)."""
        self._ensure_started()
        with self._lock:
            self.result.update(result)
            self._end(DONE, None)

    def fail(self, message: str, status: int = 422) -> None:
        """End in ``error`` with ``message`` shown to the user."""
        self._ensure_started()
        with self._lock:
            self._end(ERROR, {"status": status, "message": message})

    @property
    def cancelled(self) -> bool:
        """Whether the user asked to cancel (one store read)."""
        try:
            return self._records.cancel_requested(self.session, self.upload_id)
        except StoreError:
            return False

    # -- context manager -----------------------------------------------------------------

    def __enter__(self) -> ProcessingTask:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.finished or not self.started:
            return
        if exc is None:
            self.finish()
        elif isinstance(exc, ProcessingCancelled):
            self.finished = True  # the cancel endpoint already wrote the record
        elif isinstance(exc, ProcessingFailed):
            self.fail(exc.message, exc.status)
        else:
            log.error(
                "uploadmeter: processing %s of upload %s failed",
                self.phase,
                self.upload_id,
                exc_info=(exc_type, exc, tb) if exc_type else None,
            )
            self.fail("Processing failed.", 500)

    # -- from coroutines ------------------------------------------------------------------
    # The same methods for async code: each runs its synchronous twin on a worker thread
    # (asyncio.to_thread), so a store write never blocks the event loop.  The task is
    # thread-safe, so coroutines and threads may share one.

    async def __aenter__(self) -> ProcessingTask:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)

    async def astart(self) -> ProcessingTask:
        """:meth:`start`, off the event loop."""
        return await asyncio.to_thread(self.start)

    async def aadvance(self, n: int, total: int | None = None) -> None:
        """:meth:`advance`, off the event loop."""
        await asyncio.to_thread(self.advance, n, total)

    async def aupdate(self, done: int, total: int | None = None) -> None:
        """:meth:`update`, off the event loop."""
        await asyncio.to_thread(self.update, done, total)

    async def aset_phase(self, phase: str, total: int | None = None) -> None:
        """:meth:`set_phase`, off the event loop."""
        await asyncio.to_thread(self.set_phase, phase, total)

    async def afinish(self, **result: Any) -> None:
        """:meth:`finish`, off the event loop."""
        await asyncio.to_thread(lambda: self.finish(**result))

    async def afail(self, message: str, status: int = 422) -> None:
        """:meth:`fail`, off the event loop."""
        await asyncio.to_thread(self.fail, message, status)

    # -- store ---------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if not self.started:
            self.start()

    def _count(self, done: int, total: int | None) -> None:
        """Record new numbers (lock held); write when due or when the work completes."""
        if total is not None and total != self.total:
            if self.total is not None:
                raise ValueError(
                    f"the total of phase {self.phase!r} is {self.total}; "
                    "use set_phase() to count something else"
                )
            self.total = total
        was_complete = self._complete()
        self.done = done
        self._write(force=self._complete() and not was_complete)

    def _complete(self) -> bool:
        return self.total is not None and self.done >= self.total

    def _end(self, state: str, error: dict[str, Any] | None) -> None:
        """The final write, with the final numbers (lock held).  Idempotent."""
        if self.finished:
            return
        self.finished = True
        record = self._record
        assert record is not None
        if self.cancelled:
            self._write_cancelled(record)
            return
        record.state = state
        record.error = error
        record.finished_at = time.time()
        if self.result:
            record.result = dict(record.result or {}, **self.result)
        self._put(record, final=True)

    def _write(self, *, force: bool = False) -> None:
        """Write the record if due (lock held); raise :class:`ProcessingCancelled` when
        the user cancelled."""
        now = time.monotonic()
        if self.finished or not (force or now - self._last_write >= self.settings.update_interval):
            return
        record = self._record
        assert record is not None
        if self.cancelled:
            self.finished = True
            self._write_cancelled(record)
            raise ProcessingCancelled(f"upload {self.upload_id} was cancelled")
        self._put(record)
        self._last_write = now

    def _put(self, record: UploadRecord, *, final: bool = False) -> None:
        record.processing = {
            "phase": self.phase,
            "done": self.done,
            "total": self.total,
            "started_at": self.started_at,
        }
        record.updated_at = time.time()
        try:
            if final:
                self._records.finish(self.session, record)
            else:
                self._records.save(self.session, record)
        except StoreError as exc:
            # Like uploads: the work goes on without a store, progress resumes later.
            log.warning("uploadmeter: progress store unavailable during processing: %s", exc)

    def _write_cancelled(self, record: UploadRecord) -> None:
        # The cancel endpoint wrote this already; writing it again repairs the record if
        # one of our writes crossed the endpoint's.
        record.state = CANCELLED
        record.finished_at = record.finished_at or time.time()
        record.error = dict(CANCELLED_ERROR)
        record.updated_at = time.time()
        with contextlib.suppress(StoreError):
            self._records.finish(self.session, record)


def task(
    target: MeterContext | HasContext | ProgressStore,
    session: str,
    upload_id: str,
    phase: str,
    *,
    total: int | None = None,
    settings: TrackerSettings | None = None,
) -> ProcessingTask:
    """A :class:`ProcessingTask` for ``upload_id`` of ``session``, not started yet.

    ``target`` is the meter or its context (its store and settings are used) or a store,
    e.g. in a worker process: ``task(open_store(url), session, upload_id, "scanning")``.
    """
    if isinstance(target, ProgressStore):
        store = target
    else:
        context = context_of(target)
        store = context.store
        settings = settings or context.settings
    return ProcessingTask(store, session, upload_id, phase, total=total, settings=settings)


def request_task(
    meter: MeterContext | HasContext,
    environ: WSGIEnvironment,
    upload_id: str,
    phase: str,
    *,
    total: int | None = None,
) -> ProcessingTask:
    """A task for an upload of the session making this request (call it in the view).

    The task carries the session, so it can be handed to a thread or a pool.  Raises
    ``LookupError`` when the request has no uploadmeter session.
    """
    context = context_of(meter)
    session = session_of(context, environ)
    if session is None:
        raise LookupError("This request has no uploadmeter session.")
    return task(context, session, upload_id, phase, total=total)

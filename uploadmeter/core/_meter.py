"""One tracked form upload, without I/O of its own: whether to track it, the byte count
per chunk, and the outcome.

Every shell meters the same way:

1. :func:`plan_upload` judges the request head: pass it through, refuse it (``400``,
   ``413``), cap a body of unknown length, or track it.
2. :func:`start_upload` claims the id in the store (the record says ``starting``) -- a
   store call, which the ASGI shell makes off its event loop.
3. :class:`BodyMeter` is fed each piece of the body the application reads.
   :meth:`BodyMeter.feed` only counts (and shows bytes to the multipart observer); it
   answers whether a store write is due, which the shell then makes with
   :meth:`BodyMeter.report` (WSGI: at once; ASGI: on a worker thread).  A report is also
   how a cancel is learnt.
4. :func:`settle` decides the final state from what the application did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from werkzeug.http import HTTP_STATUS_CODES, parse_options_header

from uploadmeter.core._context import MeterContext
from uploadmeter.core._endpoints import session_for
from uploadmeter.core._http import Reply, RequestHead, error_reply
from uploadmeter.core._ids import INVALID_ID_MESSAGE, upload_id_from, valid_upload_id
from uploadmeter.core._limits import TOO_LARGE, check_framing
from uploadmeter.core._observer import MultipartObserver
from uploadmeter.core._record import CANCELLED, DONE, ERROR, FINISHED, PROCESSING, UploadRecord
from uploadmeter.core._records import CANCELLED_ERROR
from uploadmeter.core._tracker import UploadTracker

_monotonic = time.monotonic

# What BodyMeter.feed and BodyMeter.ended answer: the store work now due.
NOTHING = 0
PROGRESS = 1  # a throttled progress write (and a look for a cancel)
LAST_BYTE = 2  # the whole body arrived: from now on too late to cancel
OVER_LIMIT = 3  # the body passed the limit: the upload ends with 413

# What BodyMeter.failure starts with when a read failed.
DISCONNECTED = "disconnected"
UNREADABLE = "unreadable"
CANCELLED_FAILURE = "cancelled"
TOO_LARGE_FAILURE = "too large"

ALREADY_IN_PROGRESS = "An upload with this id is already in progress."


def is_form_upload(content_type: str | None) -> bool:
    return bool(content_type) and content_type[:19].lower() == "multipart/form-data"  # type: ignore[index]


@dataclass(frozen=True, slots=True)
class UploadPlan:
    """What to do with a ``multipart/form-data`` request, judged from its head.

    Exactly one of: ``reply`` (refuse it now, body unread), ``upload_id`` (track it), or
    neither (pass it through, read at most ``cap`` bytes when ``cap`` is set).
    """

    reply: Reply | None = None
    upload_id: str | None = None
    length: int | None = None
    cap: int | None = None
    too_large: bool = False  # tracked, but over the limit: record the 413, then refuse


def plan_upload(head: RequestHead, max_content_length: int | None) -> UploadPlan:
    accept = head.header("accept")
    framing = check_framing(
        head.header("content-length"), head.header("transfer-encoding"), max_content_length
    )
    if framing.status == 400:
        return UploadPlan(reply=closing(error_reply(accept, 400, framing.message)))
    too_large = framing.status == 413
    upload_id = upload_id_from(head.query, head.header("x-upload-id"), head.header("x-progress-id"))
    if upload_id is None:
        if too_large:
            return UploadPlan(reply=too_large_reply(accept))
        return UploadPlan(length=framing.length, cap=framing.cap)
    if not valid_upload_id(upload_id):
        return UploadPlan(reply=error_reply(accept, 400, INVALID_ID_MESSAGE))
    return UploadPlan(
        upload_id=upload_id, length=framing.length, cap=framing.cap, too_large=too_large
    )


def closing(reply: Reply) -> Reply:
    """``reply`` with ``Connection: close``: the body is not read, the connection not reused."""
    reply.headers.append(("Connection", "close"))
    return reply


def too_large_reply(accept: str | None, headers: list[tuple[str, str]] | None = None) -> Reply:
    return closing(error_reply(accept, 413, TOO_LARGE, headers or []))


@dataclass(slots=True)
class UploadStart:
    """A tracked upload, claimed: its tracker, session and the Set-Cookie to add."""

    tracker: UploadTracker
    session: str
    headers: list[tuple[str, str]]


def start_upload(
    context: MeterContext,
    head: RequestHead,
    request: Any,
    plan: UploadPlan,
    max_tracked_fields: int,
) -> UploadStart | Reply:
    """Claim ``plan.upload_id`` for this session (store I/O): an :class:`UploadStart`, or the
    reply refusing the request (``409`` double submit, ``413`` too large)."""
    assert plan.upload_id is not None
    session, cookie = session_for(context, head, request)
    extra = [("Set-Cookie", cookie)] if cookie else []
    tracker = UploadTracker(
        context.store,
        session,
        UploadRecord(id=plan.upload_id, content_length=plan.length),
        context.settings,
        observer_for(head.header("content-type") or "", max_tracked_fields),
    )
    accept = head.header("accept")
    if not tracker.claim():
        return error_reply(accept, 409, ALREADY_IN_PROGRESS, extra)
    if plan.too_large:
        tracker.finish(ERROR, {"status": 413, "message": TOO_LARGE})
        return too_large_reply(accept, extra)
    return UploadStart(tracker, session, extra)


def observer_for(content_type: str, max_fields: int) -> MultipartObserver | None:
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        return None
    try:
        return MultipartObserver(boundary.encode("latin-1"), max_fields=max_fields)
    except (ValueError, UnicodeEncodeError):
        return None  # odd boundary: whole-request progress only


class BodyMeter:
    """Counts one tracked upload's body as the application reads it.

    :meth:`feed` runs for every piece of every tracked upload, so it is kept short and
    does no I/O: it answers :data:`NOTHING`, or the store work now due
    (:data:`PROGRESS`, :data:`LAST_BYTE`, :data:`OVER_LIMIT`) for :meth:`report`.
    """

    __slots__ = (
        "_interval", "_next_report", "_observer", "_record", "content_length", "eof",
        "failure", "limit", "received", "tracker",
    )  # fmt: skip

    def __init__(
        self,
        tracker: UploadTracker,
        *,
        content_length: int | None,
        limit: int | None = None,
        update_interval: float = 0.2,
    ) -> None:
        self.tracker = tracker
        self._observer = tracker.observer
        self._record = tracker.record
        self._interval = update_interval
        self._next_report = 0.0
        self.content_length = content_length
        self.limit = limit
        self.received = 0
        self.eof = False  # the body ended (at the declared length, or early)
        self.failure: str | None = None  # why reading stopped short, when it did

    def feed(self, data: bytes) -> int:
        """Count ``data`` (not empty), which the application is about to get."""
        self.received += len(data)
        # Kept current on every read, not only on throttled writes: the final write after
        # a disconnect, cancel or error must count every byte that arrived.
        self._record.bytes_received = self.received
        if self._observer is not None:
            self._observer.feed(data)
        if self.limit is not None and self.received > self.limit:
            return OVER_LIMIT
        if self.received == self.content_length:
            return LAST_BYTE  # always written, and from now on too late to cancel
        now = _monotonic()
        if now >= self._next_report:
            self._next_report = now + self._interval
            if self.tracker.progress_work(self.received, now):
                return PROGRESS
        return NOTHING

    def ended(self) -> int:
        """The body ended (an empty read): :data:`LAST_BYTE` when that makes it whole."""
        if self.eof:
            return NOTHING
        self.eof = True
        if self.content_length is None:
            return LAST_BYTE  # a body of unknown length is whole at its end
        if self.received < self.content_length:
            self.failure = DISCONNECTED
        return NOTHING

    def failed(self, kind: str, detail: str = "") -> None:
        """Reading failed: ``kind`` is :data:`DISCONNECTED` or :data:`UNREADABLE`."""
        if self.failure is None:
            self.failure = f"{kind} ({detail})" if detail else kind

    def report(self, due: int) -> bool:
        """Do the store work ``feed`` or ``ended`` said was due (may block).  ``True`` when
        the upload must stop now: it was cancelled, or it passed the limit; the record
        says so already."""
        tracker = self.tracker
        if due == OVER_LIMIT:
            self.failure = TOO_LARGE_FAILURE
            tracker.finish(ERROR, {"status": 413, "message": TOO_LARGE})
            return True
        now = _monotonic()
        if due == LAST_BYTE:
            cancelled = tracker.body_received(self.received, now)
        else:
            cancelled = tracker.progress(self.received, now)
        if cancelled:
            self.failure = CANCELLED_FAILURE
            tracker.finish(CANCELLED, dict(CANCELLED_ERROR))
        return cancelled

    @property
    def complete(self) -> bool:
        if self.content_length is not None:
            return self.received >= self.content_length
        return self.eof


class HandleBase:
    """What the application can do with the upload it is receiving (both shells)."""

    def __init__(self, tracker: UploadTracker, session: str | None = None) -> None:
        self._tracker = tracker
        self.session = session  # for processing tasks: uploadmeter.processing.task()
        self.failure: tuple[int, str] | None = None

    @property
    def id(self) -> str:
        return self._tracker.record.id

    @property
    def record(self) -> UploadRecord:
        """The live record (read-only use)."""
        return self._tracker.record

    def set_result(self, **result: Any) -> None:
        """JSON-serialisable data shown to the client once the upload is ``done``."""
        self._tracker.record.result = dict(self._tracker.record.result or {}, **result)

    def fail(self, message: str, status: int = 400) -> None:
        """Report the upload as failed with ``message``, whatever the response status."""
        self.failure = (status, message)


def settle(
    meter: BodyMeter,
    handle: HandleBase,
    status: int | None,
    *,
    crashed: BaseException | None = None,
) -> None:
    """Decide the upload's final state from what the application did (store I/O).
    Idempotent.

    ``status``: the response status (``None``: none was sent).  ``crashed``: what the
    application raised.  A failed read comes first: an app that lets the server's
    disconnect error escape has not failed, the client has gone.
    """
    tracker = meter.tracker
    record = tracker.record
    if record.state in FINISHED or record.state == PROCESSING:
        return  # decided already; processing: a task owns the record now
    length = meter.content_length
    complete = meter.complete
    where = f"{meter.received} of {length}" if length is not None else f"{meter.received}"
    if meter.failure is not None and not complete:
        if meter.failure.startswith(UNREADABLE):
            message = f"The request body could not be read after {where} bytes."
        else:
            message = f"The connection closed after {where} bytes."
        tracker.finish(ERROR, {"status": 400, "message": message})
    elif crashed is not None and not isinstance(crashed, Exception):
        # SystemExit (gunicorn's worker timeout, a shutdown), KeyboardInterrupt, an ASGI
        # task cancelled by its server.
        message = (
            f"The server stopped the request (worker timeout or shutdown) after {where} bytes."
        )
        tracker.finish(ERROR, {"status": 500, "message": message})
    elif crashed is not None:
        tracker.finish(ERROR, {"status": 500, "message": "The application failed."})
    elif handle.failure is not None:
        code, message = handle.failure
        tracker.finish(ERROR, {"status": code, "message": message})
    elif status is None:
        tracker.finish(ERROR, {"status": 500, "message": "The application sent no response."})
    elif status >= 400:
        reason = HTTP_STATUS_CODES.get(status, "Error")
        message = f"The application rejected the upload ({status} {reason})."
        tracker.finish(ERROR, {"status": status, "message": message})
    elif complete:
        tracker.finish(DONE)
    else:
        message = "The application answered before reading the whole upload."
        tracker.finish(ERROR, {"status": status, "message": message})
